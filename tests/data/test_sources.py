"""Store inputs: the authors' CT and MRI training layouts, DICOM, NIfTI, fastMRI; bad input."""

import csv

import numpy as np
import pytest

from btd_jax.data import DataError, preprocess as P
from btd_jax.data.crops import authors_ct as A
from btd_jax.data.store import slice_store as S, sources
from _dicom_files import write_ct_series
from _layouts import write_authors_ct, write_pngs


def test_authors_ct_layout_like_their_loader(tmp_path):
    hu = write_authors_ct(tmp_path / "ct", patients=2, slices=3,
                          extra_rows=[["new_dataset/P1/s2.npy", "n/a", 9, 1]])
    lay = A.read_ct_layout(tmp_path / "ct")
    assert lay.paths == list(hu)                       # prefix removed, last row dropped
    assert lay.weights == [1, 1, 1, 1, 1, 2]           # P1/s2 is listed twice
    assert lay.no_location == 1                         # 'n/a' gives no centre (their try/except)
    expect = sorted({(5 + 11 * p, 10 + 7 * k) for p in range(2) for k in range(3)})
    assert lay.locations.tolist() == [list(t) for t in expect]   # (y, x), one list for all slices
    s = sources.prepare(tmp_path / "ct", tmp_path / "st", dtype="float32", progress=False)
    assert s["options"]["format"] == "authors_ct" and s["candidates"] == "locations"
    assert s["size"] == 96 and s["modality"] == "CT"
    st = S.SliceStore(tmp_path / "st")
    assert st.column("patient").tolist() == ["P0"] * 3 + ["P1"] * 3
    assert st.column("weight").tolist() == [1, 1, 1, 1, 1, 2]
    for r, rel in enumerate(hu):
        np.testing.assert_array_equal(st.slice(r), P.window_ct(hu[rel]))
        np.testing.assert_array_equal(st.centres(r), lay.locations)
    # read directly (no store): the same windowed values
    folder = A.CTFolder(tmp_path / "ct")
    np.testing.assert_array_equal(folder.window(4, 3, 2, 10, 11), P.window_ct(hu["P1/s1.npy"])[3:13, 2:13])


def test_authors_ct_bad_rows_name_the_file(tmp_path):
    write_authors_ct(tmp_path / "ct", extra_rows=[["new_dataset/P9/nowhere.npy", 3, 3, 0]])
    with pytest.raises(DataError, match=r"train_csv\.csv row 14: slice file .*P9/nowhere\.npy does not exist"):
        sources.prepare(tmp_path / "ct", tmp_path / "a", progress=False)
    s = sources.prepare(tmp_path / "ct", tmp_path / "b", strict=False, progress=False)
    assert s["n_slices"] == 12
    assert [k["item"] for k in s["skipped"]] == [f"{tmp_path / 'ct' / 'train_csv.csv'} row 14"]
    assert "nowhere.npy does not exist" in s["skipped"][0]["reason"]
    # NaN in a slice, and a file that is not an .npy
    nan = np.load(tmp_path / "ct" / "P1" / "s2.npy").astype(np.float32)
    nan[4, 4] = np.nan
    np.save(tmp_path / "ct" / "P1" / "s2.npy", nan)
    with pytest.raises(DataError, match=r"P1/s2\.npy: .*non-finite"):
        sources.prepare(tmp_path / "ct", tmp_path / "c", progress=False)
    (tmp_path / "ct" / "P0" / "s1.npy").write_bytes(b"garbage")
    s = sources.prepare(tmp_path / "ct", tmp_path / "d", strict=False, progress=False)
    reasons = " | ".join(k["reason"] for k in s["skipped"])
    assert "P0/s1.npy: cannot read the slice" in reasons and "P1/s2.npy" in reasons
    assert s["n_slices"] == 10
    # a slice file deleted after the layout was read: the direct reader names it
    folder = A.CTFolder(tmp_path / "ct")
    (tmp_path / "ct" / "P2" / "s0.npy").unlink()
    with pytest.raises(DataError, match=r"row 10: slice file .*P2/s0\.npy does not exist"):
        folder.shape(8)


def test_authors_ct_csv_problems(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "train_csv.csv").write_text("path,x,y\nP0/s0.npy,1,2\nlast,1,1\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['unix_path'\]"):
        A.read_ct_layout(tmp_path / "a")
    (tmp_path / "a" / "train_csv.csv").write_text("unix_path,x,y\nonly_row.npy,1,2\n")
    with pytest.raises(DataError, match="no rows"):
        A.read_ct_layout(tmp_path / "a")
    (tmp_path / "a" / "train_csv.csv").write_text("unix_path,x,y\nP0/s0.npy,,\nlast,1,1\n")
    with pytest.raises(DataError, match="no crop centres"):
        A.read_ct_layout(tmp_path / "a")


def _torchvision_like(arr_u8, size):
    """Their MRI transform, written out independently: Resize(size) (PIL bilinear) + CenterCrop + /255."""
    from PIL import Image

    im = Image.fromarray(arr_u8)
    w, h = im.size
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    r = np.asarray(im.resize(new, Image.BILINEAR), np.float32)
    top, left = int(round((r.shape[0] - size) / 2)), int(round((r.shape[1] - size) / 2))
    return r[top:top + size, left:left + size] / 255.0


def test_mri_image_folder_authors_transform_and_full_images(tmp_path):
    imgs = write_pngs(tmp_path / "mri", h=40, w=52)
    s = sources.prepare(tmp_path / "mri", tmp_path / "st", size=32, dtype="float32", progress=False)
    assert s["options"]["format"] == "images" and s["modality"] == "MR"
    st = S.SliceStore(tmp_path / "st")
    assert st.column("patient").tolist() == ["P0"] * 3 + ["P1"] * 3
    for r, rel in enumerate(imgs):
        assert st.shape(r) == (32, 32)
        np.testing.assert_allclose(st.slice(r), _torchvision_like(imgs[rel], 32), atol=1e-7)
    s = sources.prepare(tmp_path / "mri", tmp_path / "full", size=32, resize="none", dtype="float32",
                        progress=False)
    full = S.SliceStore(tmp_path / "full")
    np.testing.assert_allclose(full.slice(0), imgs["P0/img0.png"] / 255.0, atol=1e-7)
    (tmp_path / "mri" / "P1" / "img1.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"P1/img1\.png: cannot read the image"):
        sources.prepare(tmp_path / "mri", tmp_path / "bad", size=32, progress=False)


def test_dicom_patients_and_series_with_manifest(tmp_path):
    write_ct_series(tmp_path / "dcm" / "A", [0, 2, 1], patient="PA", series_uid="1.2.3.1")
    write_ct_series(tmp_path / "dcm" / "B", [0, 1], patient="PB", series_uid="1.2.3.2")
    s = sources.prepare(tmp_path / "dcm", tmp_path / "st", size=32, dtype="float32", progress=False)
    assert s["options"]["format"] == "dicom" and s["n_slices"] == 5 and s["modality"] == "CT"
    st = S.SliceStore(tmp_path / "st")
    recs = list(st.records())
    assert [(r["patient"], r["series"], r["slice"]) for r in recs] == [
        ("PA", "1.2.3.1", 0), ("PA", "1.2.3.1", 1), ("PA", "1.2.3.1", 2),
        ("PB", "1.2.3.2", 0), ("PB", "1.2.3.2", 1)]
    from btd_jax.data import dicom

    ser = dicom.load_series(tmp_path / "dcm" / "A")
    np.testing.assert_array_equal(st.slice(2), P.window_ct(ser.pixels[2]))
    a = np.array(recs[2]["affine"])
    assert a.shape == (4, 4)
    np.testing.assert_allclose(a[:3, 3], ser.positions[2])           # slice origin, mm
    np.testing.assert_allclose(a @ [1, 0, 0, 1] - a[:, 3], [recs[2]["pixel_spacing"][1], 0, 0, 0],
                               atol=1e-6)                             # one column step
    assert recs[0]["scanner"] and recs[0]["path"].endswith(".dcm")


def test_nifti_and_fastmri_volumes(tmp_path):
    nib = pytest.importorskip("nibabel")
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    vol = rng.normal(0, 400, (40, 36, 3)).astype(np.float32)   # (I=col, J=row, K=slice)
    aff = np.diag([0.7, 0.8, 2.5, 1.0])
    nib.save(nib.Nifti1Image(vol, aff), tmp_path / "scan.nii.gz")
    with pytest.raises(DataError, match="pass --modality"):
        sources.prepare(tmp_path / "scan.nii.gz", tmp_path / "x", progress=False)
    s = sources.prepare(tmp_path / "scan.nii.gz", tmp_path / "nst", modality="CT", size=16,
                        dtype="float32", progress=False)
    assert s["options"]["format"] == "nifti" and s["n_slices"] == 3
    st = S.SliceStore(tmp_path / "nst")
    np.testing.assert_allclose(st.slice(1), P.window_ct(vol[:, :, 1].T), atol=1e-6)
    rec = list(st.records())[1]
    assert rec["pixel_spacing"] == pytest.approx([0.8, 0.7])
    np.testing.assert_allclose(np.array(rec["affine"])[:3, 3], [0, 0, 2.5])   # LPS of voxel (0, 0, 1)

    mri = np.abs(rng.normal(5, 2, (2, 30, 26))).astype(np.float32)
    (tmp_path / "fm").mkdir()
    with h5py.File(tmp_path / "fm" / "file1.h5", "w") as f:
        f["reconstruction_rss"] = mri
        f.attrs["acquisition"] = "CORPD_FBK"
    s = sources.prepare(tmp_path / "fm", tmp_path / "hst", size=16, dtype="float32", progress=False)
    assert s["options"]["format"] == "fastmri" and s["modality"] == "MR"
    st = S.SliceStore(tmp_path / "hst")
    np.testing.assert_allclose(st.slice(1), P.normalize_mri(mri)[1], atol=1e-6)
    assert list(st.records())[0]["scanner"] == "CORPD_FBK"
    with h5py.File(tmp_path / "fm" / "file2.h5", "w") as f:
        f["kspace"] = np.zeros((1, 4, 4), np.complex64)
    with pytest.raises(DataError, match=r"file2\.h5: no 'reconstruction_rss' dataset"):
        sources.prepare(tmp_path / "fm", tmp_path / "h2", size=16, progress=False)


def test_prepare_command_line(tmp_path, capsys):
    from btd_jax import cli

    write_authors_ct(tmp_path / "ct", extra_rows=[["new_dataset/nowhere.npy", 3, 3, 0]])
    with pytest.raises(SystemExit) as e:
        cli.main(["btd-jax", "prepare", "--input", str(tmp_path / "ct"), "--out", str(tmp_path / "st"),
                  "--no_progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nowhere.npy does not exist" in err
    with pytest.raises(SystemExit) as e:
        cli.main(["btd-jax", "prepare", "--input", str(tmp_path / "ct"), "--out", str(tmp_path / "st2"),
                  "--lenient", "--no_progress"])
    assert e.value.code == 0
    out = capsys.readouterr()
    assert "12 CT slices" in out.out and "1 skipped" in out.out and "nowhere.npy" in out.err
    with open(tmp_path / "ct" / "train_csv.csv") as f:
        assert len(list(csv.reader(f))) == 15

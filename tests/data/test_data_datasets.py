"""btd_jax.data.datasets: patch arrays, DICOM folders -> patches + manifest, splits, load_data."""

import csv
import shutil

import numpy as np
import pytest

from btd_jax.data import DataError, datasets as D, preprocess as P
from _dicom_files import shipped, stored_hu, write_ct_series


def test_load_patches_npy_and_npz(tmp_path):
    x = np.random.default_rng(0).uniform(size=(5, 8, 8)).astype(np.float64)
    np.save(tmp_path / "a.npy", x)
    np.save(tmp_path / "b.npy", x[..., None])
    np.savez(tmp_path / "c.npz", patches=x, labels=np.arange(5))
    np.savez(tmp_path / "d.npz", whatever=x)
    for name in ("a.npy", "b.npy", "c.npz", "d.npz"):
        out = D.load_patches(tmp_path / name)
        assert out.shape == (5, 8, 8) and out.dtype == np.float32
        np.testing.assert_allclose(out, x, rtol=1e-6)
    np.savez(tmp_path / "e.npz", a=x, b=x)
    with pytest.raises(DataError, match=r"e.npz: cannot tell which array.*\['a', 'b'\]"):
        D.load_patches(tmp_path / "e.npz")
    np.testing.assert_allclose(D.load_patches(tmp_path / "e.npz", key="b"), x, rtol=1e-6)


@pytest.mark.parametrize("arr,match", [
    (np.full((2, 4, 4), np.nan, np.float32), "NaN or inf"),
    (np.array([[[0.0, np.inf], [0.0, 0.0]]]), "NaN or inf.*first at index 0"),
    (np.zeros((2, 4, 4), np.uint8), "dtype uint8"),
    (np.zeros((4, 4), np.float32), r"shape \(N, H, W\)"),
    (np.zeros((2, 4, 4, 3), np.float32), r"got \(2, 4, 4, 3\)"),
    (np.zeros((0, 4, 4), np.float32), "empty"),
    (np.full((1, 2, 2), 1.5), r"\[0, 1\]"),
    (np.full((1, 2, 2), -700.0), r"\[0, 1\]"),
])
def test_load_patches_rejects_bad_arrays(tmp_path, arr, match):
    np.save(tmp_path / "bad.npy", arr)
    with pytest.raises(DataError, match=match) as e:
        D.load_patches(tmp_path / "bad.npy")
    assert "bad.npy" in str(e.value)


def test_load_patches_bad_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        D.load_patches(tmp_path / "missing.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="junk.npy: cannot read array"):
        D.load_patches(tmp_path / "junk.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="obj.npy: cannot read array"):
        D.load_patches(tmp_path / "obj.npy")
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(DataError, match="unsupported patch file type '.csv'"):
        D.load_patches(tmp_path / "x.csv")


def test_patches_from_dicom_ct_values_and_manifest(tmp_path):
    paths = write_ct_series(tmp_path / "scan", [1, 0, 2], patient="P7")
    man = tmp_path / "manifest.csv"
    ps = D.patches_from_dicom(tmp_path / "scan", size=32, n_per_slice=3, rng=0, manifest=man)
    assert ps.patches.shape == (9, 32, 32) and ps.patches.dtype == np.float32
    assert ps.patches.min() >= 0 and ps.patches.max() <= 1
    c = ps.columns
    assert list(c["slice"]) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert set(c["patient"]) == {"P7"} and set(c["modality"]) == {"CT"}
    assert c["scanner"][0] == "GE MEDICAL SYSTEMS RHAPSODE"
    # each patch is window_ct of the slice's HU around (x, y); slice 0 is the z=0 file paths[1]
    for i in (0, 4, 8):
        hu = stored_hu(c["path"][i])
        expect = P.extract_patch(P.window_ct(hu), c["x"][i], c["y"][i], 32)
        np.testing.assert_allclose(ps.patches[i], expect, atol=1e-6)
    assert c["path"][0] == str(paths[1])
    rows = list(csv.DictReader(open(man)))
    assert len(rows) == 9 and rows[0]["status"] == "ok"
    assert {"patient", "series", "scanner", "slice", "x", "y", "path"} <= set(rows[0])
    assert int(rows[4]["x"]) == c["x"][4]
    again = D.patches_from_dicom(tmp_path / "scan", size=32, n_per_slice=3, rng=0)
    np.testing.assert_array_equal(again.patches, ps.patches)


def test_patches_from_dicom_mri_per_patient_normalisation(tmp_path):
    shutil.copy(shipped("emri_small.dcm"), tmp_path / "emri.dcm")
    ps = D.patches_from_dicom(tmp_path, size=16, n_per_slice=2, rng=1)
    assert ps.patches.shape == (20, 16, 16) and set(ps.columns["modality"]) == {"MR"}
    import pydicom
    vol = P.normalize_mri(pydicom.dcmread(shipped("emri_small.dcm")).pixel_array)
    k, x, y = ps.columns["slice"][5], ps.columns["x"][5], ps.columns["y"][5]
    np.testing.assert_allclose(ps.patches[5], P.extract_patch(vol[k], x, y, 16), atol=1e-6)
    assert list(ps.columns["frame"][:4]) == [0, 0, 1, 1]


def test_patches_from_dicom_lenient_lists_skipped_in_manifest(tmp_path):
    write_ct_series(tmp_path, [0, 1])
    shutil.copy(shipped("rtstruct.dcm"), tmp_path / "rt.dcm")
    shutil.copy(shipped("MR_truncated.dcm"), tmp_path / "mrtrunc.dcm")
    shutil.copy(shipped("MR_small.dcm"), tmp_path / "mr.dcm")
    with pytest.raises(DataError, match=r"several modalities \(CT, MR\); pass --modality"):
        D.patches_from_dicom(tmp_path, size=32, n_per_slice=1)  # rt.dcm is no image: left out, even strictly
    man = tmp_path / "out" / "m.csv"
    ps = D.patches_from_dicom(tmp_path, size=32, n_per_slice=2, modality="CT", strict=False,
                              manifest=man)
    assert len(ps) == 4
    reasons = {s.item.split("/")[-1]: s.reason for s in ps.skipped}
    assert set(reasons) == {"rt.dcm", "mrtrunc.dcm", "mr.dcm"}
    rows = list(csv.DictReader(open(man)))
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert len(rows) == 7 and len(skipped) == 3
    assert all(r["reason"] for r in skipped) and any("rt.dcm" in r["path"] for r in skipped)


def test_patches_from_dicom_image_too_small(tmp_path):
    shutil.copy(shipped("MR_small.dcm"), tmp_path / "mr.dcm")  # 64 x 64 < 128 default
    with pytest.raises(DataError, match="too small for patch size 128"):
        D.patches_from_dicom(tmp_path)
    with pytest.raises(DataError, match="no patches could be cut"):
        D.patches_from_dicom(tmp_path, strict=False)


def test_split_patients_properties():
    rng = np.random.default_rng(0)
    pats = [f"p{i}" for i in range(60)]
    scan_of = {p: ["A", "B", "C"][i % 3] for i, p in enumerate(pats)}
    items = [p for p in pats for _ in range(rng.integers(1, 5))]
    scanners = [scan_of[p] for p in items]
    part = D.split_patients(items, scanners, seed=3)
    assert part.shape == (len(items),) and set(part) == {0, 1, 2}
    owner = {}
    for p, k in zip(items, part):
        assert owner.setdefault(p, k) == k           # no patient in two parts
    for sc in "ABC":                                  # 20 patients per scanner: 14 / 3 / 3
        ks = [owner[p] for p in pats if scan_of[p] == sc]
        assert np.bincount(ks, minlength=3).tolist() == [14, 3, 3]
    # deterministic and independent of the item order
    perm = rng.permutation(len(items))
    part2 = D.split_patients(np.array(items)[perm], np.array(scanners)[perm], seed=3)
    np.testing.assert_array_equal(part2, part[perm])
    assert not np.array_equal(D.split_patients(items, scanners, seed=4), part)


def test_split_patients_small_groups_and_errors():
    part = D.split_patients(["a", "b"], None, fractions=(0.5, 0.5))
    assert sorted(part) == [0, 1]
    assert D.split_patients(["a"], ["s"]).tolist() == [0]
    with pytest.raises(DataError, match="sum to 1"):
        D.split_patients(["a"], ["s"], fractions=(0.5, 0.2))
    with pytest.raises(DataError, match="1 patient ids but 2 scanners"):
        D.split_patients(["a"], ["s", "t"])
    with pytest.raises(DataError, match="no patients"):
        D.split_patients([], [])


def test_holdout_parts_by_patient_else_by_rows():
    patients = np.repeat([f"p{i}" for i in range(10)], 3)
    part = D.holdout_parts(30, patients, None, 0.2, seed=1)
    assert part.sum() == 6 and all(len(set(part[patients == p])) == 1 for p in set(patients))
    assert np.array_equal(D.holdout_parts(30, patients, None, 0.2, seed=1), part)
    # one patient, or none given: a fifth of the rows, at least one
    for ids in (["a"] * 30, None):
        rows = D.holdout_parts(30, ids, None, 0.2, seed=1)
        assert rows.sum() == 6 and set(rows.tolist()) == {0, 1}
    assert D.holdout_parts(3, None, None, 0.01).sum() == 1
    # two patients cannot give a tenth: falls back to rows
    assert D.holdout_parts(20, ["a"] * 10 + ["b"] * 10, None, 0.1).sum() == 2


def test_load_data_dispatch(tmp_path):
    np.save(tmp_path / "p.npy", np.zeros((3, 4, 4), np.float32))
    ps = D.load_data(tmp_path / "p.npy")
    assert ps.patches.shape == (3, 4, 4) and list(ps.columns["index"]) == [0, 1, 2]
    write_ct_series(tmp_path / "dcm", [0, 1])
    ps = D.load_data(tmp_path / "dcm", size=32, n_per_slice=2)
    assert ps.patches.shape == (4, 32, 32)
    img = np.zeros((40, 40))
    D.write_testset(tmp_path / "ts", "CT", "Inject", [dict(image=img, x=20, y=20, type="TM")])
    ts = D.load_data(tmp_path / "ts", size=16)
    assert isinstance(ts, D.TestSet) and ts.labels.tolist() == [0]
    D.write_testset(tmp_path / "ts", "CT", "Remove", [dict(image=img, x=20, y=20, type="FB")])
    with pytest.raises(DataError, match="several test sets"):
        D.load_data(tmp_path / "ts")
    assert D.load_data(tmp_path / "ts", attack="removal", size=16).labels.tolist() == [1]
    with pytest.raises(DataError, match="no such file or folder"):
        D.load_data(tmp_path / "nothing")


def test_patches_from_dicom_resampled_to_target_spacing(tmp_path):
    write_ct_series(tmp_path, [0, 1])  # 128 x 128 at 0.661468 mm
    ps = D.patches_from_dicom(tmp_path, size=16, n_per_slice=50, rng=0, target_spacing=1.3229)
    assert ps.columns["x"].max() <= 64 - 8 and ps.columns["y"].max() <= 64 - 8
    vol = P.resample(P.window_ct(stored_hu(ps.columns["path"][0])), (0.661468,) * 2, 1.3229)
    assert vol.shape == (64, 64)
    x, y = ps.columns["x"][0], ps.columns["y"][0]
    np.testing.assert_allclose(ps.patches[0], np.clip(P.extract_patch(vol, x, y, 16), 0, 1),
                               atol=1e-6)
    shutil.copy(shipped("emri_small.dcm"), tmp_path / "e.dcm")  # no PixelSpacing
    with pytest.raises(DataError, match="no PixelSpacing"):
        D.patches_from_dicom(tmp_path, modality="MR", size=16, target_spacing=1.0)


def test_public_names_resolve():
    import btd_jax.data as data
    for name in data.__all__:
        assert getattr(data, name) is not None, name
    from btd_jax.data import load_series  # lazy, PEP 562
    assert load_series.__module__ == "btd_jax.data.dicom"


def test_csv_with_byte_order_mark(tmp_path):
    d = tmp_path / "CT" / "Inject"
    d.mkdir(parents=True)
    np.save(d / "a.npy", np.zeros((20, 20)))
    (d / "CT_Inject.csv").write_text("\ufeffpath,x,y,type\na.npy,10,10,TM\n", encoding="utf-8")
    assert D.load_testset(tmp_path, "CT", "Inject", size=4).labels.tolist() == [0]

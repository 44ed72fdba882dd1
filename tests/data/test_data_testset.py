"""The authors' test-set layout: written by write_testset in tmp_path, read by load_testset."""

import csv
import shutil

import numpy as np
import pytest

from btd_jax.data import DataError, datasets as D, preprocess as P
from _dicom_files import shipped


def _ct_items(n=6, h=120, w=100, seed=0):
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        fake = i % 2 == 1
        items.append(dict(
            image=rng.normal(0.0, 600.0, size=(h, w)).astype(np.float32), x=10 + 13 * i,
            y=5 + 19 * i, type="FM" if fake else "TM",
            methods=(["CTGAN"] if i % 4 == 1 else ["SD"]) if fake else ["CTGAN", "SD"],
            scanner=f"S{i % 3}", patient=f"P{i // 2}"))
    return items


def test_ct_roundtrip_values_labels_and_columns(tmp_path):
    items = _ct_items()
    csv_path = D.write_testset(tmp_path, "CT", "Inject", items)
    assert csv_path == tmp_path / "CT" / "Inject" / "CT_Inject.csv"
    header = next(csv.reader(open(csv_path)))
    assert header[:4] == ["path", "x", "y", "type"]
    assert "CTGAN-CT-Inject" in header and "SD-CT-Inject" in header
    ts = D.load_testset(tmp_path, "CT", "Inject")
    assert ts.patches.shape == (6, 96, 96) and ts.patches.dtype == np.float32  # paper: CT 96
    assert ts.labels.tolist() == [0, 1, 0, 1, 0, 1]
    for i, it in enumerate(items):  # windowed HU, authors' crop-then-zero-pad rule
        expect = P.extract_patch(P.window_ct(it["image"]), it["x"], it["y"], 96)
        np.testing.assert_allclose(ts.patches[i], expect, atol=1e-7)
    assert ts.columns["x"].tolist() == [it["x"] for it in items]
    assert ts.columns["scanner"].tolist() == [it["scanner"] for it in items]
    assert ts.columns["method"].tolist() == ["real", "CTGAN", "real", "SD", "real", "CTGAN"]
    assert ts.columns["path"][0].endswith("img_00000.npy")
    assert ts.modality == "CT" and ts.attack == "Inject"


def test_tamper_filter_and_attack_spellings(tmp_path):
    D.write_testset(tmp_path, "CT", "Inject", _ct_items())
    ts = D.load_testset(tmp_path, "ct", "injection", tamper="CTGAN", size=32)
    assert ts.labels.tolist() == [0, 1, 0, 0, 1]
    assert set(ts.columns["method"]) == {"real", "CTGAN"}
    ts = D.load_testset(tmp_path, "CT", "inject", tamper="sd", size=32)
    assert ts.columns["method"].tolist() == ["real", "real", "SD", "real"]
    with pytest.raises(DataError, match=r"no indicator column for tamper method 'GAN2'.*CTGAN"):
        D.load_testset(tmp_path, "CT", "Inject", tamper="GAN2")


def test_authors_csv_written_by_hand(tmp_path):
    # Hand-made CSV: lower-case folder names, 0/1 labels, float coordinates, absolute path.
    d = tmp_path / "ct" / "remove"
    d.mkdir(parents=True)
    img = np.linspace(-1000, 1000, 64 * 64).reshape(64, 64)
    np.save(d / "s.npy", img)
    (d / "ct_remove.csv").write_text(
        "path,x,y,type,CTGAN-CT-Remove,SD-CT-Remove\n"
        f"s.npy,10.0,20,0,1,1\n{d / 's.npy'},63,63,1,0,1\ns.npy,0,0,FB,1,0\n")
    ts = D.load_testset(tmp_path, "CT", "Remove", size=8)
    assert ts.labels.tolist() == [0, 1, 1]
    np.testing.assert_allclose(ts.patches[0], P.window_ct(img)[16:24, 6:14])
    assert ts.columns["method"].tolist() == ["real", "SD", "CTGAN"]


def test_mri_png_and_npy(tmp_path):
    rng = np.random.default_rng(1)
    items = [dict(image=rng.uniform(size=(140, 150)), x=70, y=60, type=t, methods=["SD"])
             for t in ("TB", "FB", "TB")]
    csv_path = D.write_testset(tmp_path, "MRI", "Remove", items, image_format="png")
    assert csv_path == tmp_path / "MRI" / "MRI_Remove.csv"
    ts = D.load_testset(tmp_path, "MRI", "removal")
    assert ts.patches.shape == (3, 128, 128)  # paper: MRI 128
    assert ts.labels.tolist() == [0, 1, 0]
    expect = P.extract_patch(items[1]["image"], 70, 60, 128)
    np.testing.assert_allclose(ts.patches[1], expect, atol=1 / 65535 + 1e-6)  # 16-bit png
    from PIL import Image  # an 8-bit RGB png (as many viewers export) reads as its grey value
    Image.fromarray(np.full((140, 150, 3), 51, np.uint8)).save(ts.columns["path"][0])
    assert D.load_testset(tmp_path, "MRI", "Remove").patches[0, 64, 64] == pytest.approx(0.2)
    D.write_testset(tmp_path / "npy", "MRI", "Remove", items)
    ts = D.load_testset(tmp_path / "npy", "MRI", "Remove")
    np.testing.assert_allclose(ts.patches[1], expect, atol=1e-6)


def test_mri_raw_intensities_are_standardised(tmp_path):
    raw = np.random.default_rng(2).gamma(2.0, 200.0, size=(64, 64))
    D.write_testset(tmp_path, "MRI", "Inject", [dict(image=raw, x=32, y=32, type="TM")])
    ts = D.load_testset(tmp_path, "MRI", "Inject", size=64)
    np.testing.assert_allclose(ts.patches[0], P.normalize_mri(raw), atol=1e-6)


def test_dicom_slices_in_the_csv(tmp_path):
    d = tmp_path / "CT" / "Inject"
    d.mkdir(parents=True)
    shutil.copy(shipped("CT_small.dcm"), d / "ct.dcm")
    (d / "CT_Inject.csv").write_text("path,x,y,type\nct.dcm,64,64,TM\n")
    ts = D.load_testset(tmp_path, "CT", "Inject", size=16)
    import pydicom
    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(ts.patches[0], P.window_ct(hu)[56:72, 56:72], atol=1e-6)
    assert ts.columns["method"].tolist() == ["real"]


def _bad_csv(tmp_path):
    D.write_testset(tmp_path, "CT", "Inject", _ct_items(n=4, h=50, w=60))
    p = tmp_path / "CT" / "Inject" / "CT_Inject.csv"
    rows = list(csv.DictReader(open(p)))
    rows[1]["path"] = "images/missing.npy"
    rows[2]["x"] = "600"
    rows[3]["type"] = "XX"
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    np.save(tmp_path / "CT" / "Inject" / "images" / "img_00000.npy", np.full((50, 60), np.nan))
    return p


def test_bad_rows_strict_and_lenient(tmp_path):
    p = _bad_csv(tmp_path)
    with pytest.raises(DataError, match=r"CT_Inject.csv row 2 .*img_00000.npy.*non-finite"):
        D.load_testset(tmp_path, "CT", "Inject")
    with pytest.raises(DataError, match="every row was skipped"):
        D.load_testset(tmp_path, "CT", "Inject", strict=False)
    np.save(tmp_path / "CT" / "Inject" / "images" / "img_00000.npy", np.zeros((50, 60)))
    with pytest.raises(DataError, match=r"row 3 .*missing.npy does not exist"):
        D.load_testset(tmp_path, "CT", "Inject")
    ts = D.load_testset(tmp_path, "CT", "Inject", strict=False, size=16)
    assert len(ts) == 1 and ts.labels.tolist() == [0]
    reasons = [s.reason for s in ts.skipped]
    assert len(reasons) == 3 and str(p) in ts.skipped[0].item
    assert "does not exist" in reasons[0]
    assert "outside the image" in reasons[1] and "x=600" in reasons[1]
    assert "unknown type 'XX'" in reasons[2]


def test_wrong_shape_and_missing_things(tmp_path):
    with pytest.raises(DataError, match="test-set CSV not found"):
        D.load_testset(tmp_path, "CT", "Inject")
    with pytest.raises(DataError, match="unknown attack"):
        D.load_testset(tmp_path, "CT", "swap")
    D.write_testset(tmp_path, "CT", "Inject", [dict(image=np.zeros((2, 8, 8)), x=1, y=1, type=0)])
    with pytest.raises(DataError, match=r"expected a 2-D slice, got shape \(2, 8, 8\)"):
        D.load_testset(tmp_path, "CT", "Inject")
    p = tmp_path / "CT" / "Inject" / "CT_Inject.csv"
    p.write_text("path,x,type\na.npy,1,TM\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['y'\]"):
        D.load_testset(tmp_path, "CT", "Inject")
    p.write_text("path,x,y,type\n")
    with pytest.raises(DataError, match="no rows"):
        D.load_testset(tmp_path, "CT", "Inject")
    with pytest.raises(DataError, match="not allowed for CT"):
        D.write_testset(tmp_path, "CT", "Inject", [], image_format="png")

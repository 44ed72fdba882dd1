"""A new input format is one reader plus one registry entry: a toy format registered here (a raw
little-endian float32 volume with a JSON header) is, without touching any other module, detected and
accepted by prepare, train, screen, localize and score (random and located patches per slice)."""

import csv
import json

import numpy as np
import pytest

from btd_jax import cli, configs
from btd_jax.data import preprocess, readers
from btd_jax.data.store.slice_store import SliceStore
from btd_jax.train import training_data

SHAPE = (3, 40, 36)  # slices, rows, columns
AFFINE = np.diag([0.5, 0.6, 2.0, 1.0])  # (col, row, slice) -> LPS mm


def _toy_scans(path, opts):
    header = json.loads(path.with_suffix(".json").read_text())

    def load():
        data = np.fromfile(path, "<f4").reshape(header["shape"])
        records = [dict(patient="toy", series=path.stem, scanner="", slice=k, frame=0, path=str(path),
                        pixel_spacing=None, affine=None) for k in range(len(data))]
        return readers.Scan(data, records, modality=header["modality"],
                            geometry=lambda: readers.Geometry(affine=np.asarray(header["affine"])))

    return [readers.ScanRef(f"toy:{path}", path.stem, str(path), header["shape"][0], load,
                            modality=header["modality"])], []


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """The format registered for this test only, and one CT volume (HU) written in it."""
    fmt = readers.Format("toyraw", "raw little-endian float32 volume + JSON header (shape, modality, affine)",
                         lambda probe: probe.is_file and probe.path.suffix == ".bin", scans=_toy_scans)
    monkeypatch.setitem(readers.FORMATS, fmt.name, fmt)
    hu = np.random.default_rng(0).normal(0.0, 500.0, SHAPE).astype("<f4")
    hu[1, 10:20, 12:22] += 1500.0  # something bright to find
    hu.tofile(tmp_path / "scan.bin")
    (tmp_path / "scan.json").write_text(json.dumps({"shape": SHAPE, "modality": "CT", "affine": AFFINE.tolist()}))
    return tmp_path / "scan.bin", hu


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["btd-jax", *map(str, argv)])
    out = capsys.readouterr()
    assert e.value.code == 0, out.err
    return out


def test_detected_listed_and_prepared(toy, tmp_path, capsys):
    path, hu = toy
    assert readers.detect(path).name == "toyraw" and "toyraw" in readers.names("prepare")
    assert "`toyraw`" in readers.markdown_table() and "toyraw: raw little-endian" in readers.help_text("screen")
    _cli(["prepare", "--input", path, "--out", tmp_path / "store", "--size", 16, "--dtype", "float32",
          "--no_progress"], capsys)
    st = SliceStore(tmp_path / "store")
    assert len(st) == SHAPE[0] and st.info["options"]["format"] == "toyraw" and st.modality == "CT"
    np.testing.assert_allclose(st.slice(2), preprocess.window_ct(hu[2]), atol=1e-6)
    td = training_data(path, configs.get("tiny"), n_per_slice=2, val_fraction=0)
    assert td.train.shape == (2 * SHAPE[0], 16, 16) and td.val is None


def test_screened_localized_and_scored(toy, tmp_path, capsys, tiny_workdir, load_tiny_once, loaded_tiny_scorer):
    path, hu = toy
    _cli(["screen", "--workdir", tiny_workdir, "--input", path, "--out", tmp_path / "scr", "--no_dicom",
          "--center", 8, "--stride", 8], capsys)
    found = json.loads((tmp_path / "scr" / "findings.json").read_text())
    assert found["findings"] and found["coordinates"] == "DICOM patient (LPS), mm"
    f = found["findings"][0]
    assert (f["x_mm"], f["y_mm"], f["z_mm"]) == pytest.approx((0.5 * f["col"], 0.6 * f["row"], 2.0 * f["slice"]))

    _cli(["localize", "--workdir", tiny_workdir, "--input", path, "--out", tmp_path / "loc", "--center", 8,
          "--stride", 8, "--slices", "1:3"], capsys)
    assert np.load(tmp_path / "loc" / "suspicion.npy").shape == (2, SHAPE[1], SHAPE[2])

    _cli(["score", "--workdir", tiny_workdir, "--input", path, "--out", tmp_path / "s.csv", "--n_per_slice", 2],
         capsys)
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    assert len(rows) == 2 * SHAPE[0] and {r["slice"] for r in rows} == {"0", "1", "2"}

    points = tmp_path / "points.csv"
    points.write_text(f"path,x,y,slice\n{path},17,15,1\n{path},30,30,2\n")
    (tmp_path / "in").mkdir()  # outputs never go inside an input folder
    _cli(["score", "--workdir", tiny_workdir, "--input", tmp_path / "in", "--locations", points,
          "--out", tmp_path / "l.csv"], capsys)
    got = [float(r["score"]) for r in csv.DictReader(open(tmp_path / "l.csv"))]
    want = loaded_tiny_scorer.score(np.stack([preprocess.extract_patch(preprocess.window_ct(hu[1]), 17, 15, 16),
                                              preprocess.extract_patch(preprocess.window_ct(hu[2]), 30, 30, 16)]))
    np.testing.assert_allclose(got, want, rtol=1e-5)

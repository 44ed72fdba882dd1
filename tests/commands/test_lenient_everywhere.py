"""``--lenient`` skips the same per-item failures in every command and lists each with its reason
(prepare included); a prepare that failed leaves nothing that blocks a corrected rerun."""

import csv
import json
import os
import sys

import numpy as np
import pytest

from btd_jax import cli, evaluate
from btd_jax.attacks import inputs
from btd_jax.data import datasets, dicom, readers
from btd_jax.data.testsets import layout

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "data"))
from _dicom_files import write_ct_series  # noqa: E402

sys.path.pop(0)


def _cli(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["btd-jax", *map(str, argv)])
    return e.value.code, capsys.readouterr().err


def _listed(path):
    """{item: reason} of a skipped list."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["item", "reason"]
    return dict(rows[1:])


@pytest.fixture
def bad_testset(tmp_path):
    """A CT test set with three bad rows: a garbage .npy image, a missing image, an unknown type."""
    rng = np.random.default_rng(0)
    items = [dict(image=rng.normal(40.0, 20.0, (24, 24)).astype(np.float32), x=12, y=12, type=t,
                  methods=["CTGAN"] if t == "FM" else [], scanner="S0") for t in ("FM", "TM") * 3]
    root = tmp_path / "ts"
    path = layout.write_testset(root, "CT", "injection", items)
    (path.parent / "images" / "img_00001.npy").write_bytes(b"not a NumPy file")
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace("images/img_00002.npy", "images/missing.npy", 1)
    lines[4] = lines[4].replace(",TM,", ",XX,", 1)
    path.write_text("\n".join(lines) + "\n")
    return root


def test_bad_rows_of_a_test_set_are_skipped_alike_by_every_command(bad_testset, tmp_path, capsys, tiny_workdir,
                                                                  load_tiny_once):
    code, err = _cli(["score", "--workdir", tiny_workdir, "--input", bad_testset, "--modality", "CT", "--attack",
                      "injection", "--out", tmp_path / "s.csv"], capsys)
    assert code == 2 and "img_00001.npy: cannot read array: not a NumPy file" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s.csv").exists()
    code, err = _cli(["score", "--workdir", tiny_workdir, "--input", bad_testset, "--modality", "CT", "--attack",
                      "injection", "--out", tmp_path / "s.csv", "--lenient"], capsys)
    assert code == 0, err
    by_score = _listed(tmp_path / "s.skipped.csv")
    assert len(by_score) == 3 and len(open(tmp_path / "s.csv").read().splitlines()) == 1 + 3
    reasons = " | ".join(by_score.values())
    assert "not a NumPy file" in reasons and "missing.npy does not exist" in reasons and "unknown type 'XX'" in reasons
    code, err = _cli(["evaluate", "--workdir", tiny_workdir, "--dataset", bad_testset, "--attack", "injection",
                      "--centers", "8", "--n_boot", "2", "--out", tmp_path / "ev", "--lenient"], capsys)
    assert code == 0, err
    assert _listed(tmp_path / "ev" / "skipped.csv") == by_score
    # train (--data) and compare (--dataset) read test sets through these two loaders:
    assert {s.item: s.reason for s in datasets.load_data(str(bad_testset), modality="CT", size=16,
                                                          strict=False).skipped} == by_score
    skipped = []
    evaluate.load_eval_set(str(bad_testset), "CT", "injection", size=16, skipped=skipped)
    assert {s.item: s.reason for s in skipped} == by_score


@pytest.fixture
def dicom_with_junk(tmp_path):
    folder = tmp_path / "dicom"
    write_ct_series(folder, [0, 1, 2])
    (folder / "junk.dcm").write_bytes(b"not a DICOM file at all")
    return folder


def test_an_unreadable_dicom_file_is_skipped_alike_by_every_command(dicom_with_junk, tmp_path, capsys, tiny_workdir,
                                                                    load_tiny_once):
    junk = str(dicom_with_junk / "junk.dcm")
    store = tmp_path / "store"
    code, err = _cli(["prepare", "--input", dicom_with_junk, "--out", store, "--no_progress"], capsys)
    assert code == 2 and "junk.dcm" in err and not store.exists()  # a failed prepare leaves nothing behind
    code, err = _cli(["prepare", "--input", dicom_with_junk, "--out", store, "--no_progress", "--lenient"], capsys)
    assert code == 0, err
    by_prepare = _listed(store / "skipped.csv")
    assert list(by_prepare) == [junk]
    assert [k["item"] for k in json.loads((store / "store.json").read_text())["skipped"]] == [junk]
    code, err = _cli(["score", "--workdir", tiny_workdir, "--input", dicom_with_junk, "--out", tmp_path / "s.csv",
                      "--n_per_slice", "1", "--lenient"], capsys)
    assert code == 0, err
    assert _listed(tmp_path / "s.skipped.csv") == by_prepare
    # localize and screen read through load_series / read_volume, attack through load_sources:
    assert {s.item: s.reason for s in dicom.load_series(str(dicom_with_junk), strict=False).skipped} == by_prepare
    assert {s.item: s.reason for s in readers.read_volume(str(dicom_with_junk), strict=False).skipped} == by_prepare
    skipped = []
    inputs.load_sources(str(dicom_with_junk), "CT", skipped=skipped)
    assert {s.item: s.reason for s in skipped} == by_prepare


def test_prepare_resumes_and_starts_again_only_with_overwrite(dicom_with_junk, tmp_path, capsys):
    store = tmp_path / "store"
    base = ["prepare", "--input", dicom_with_junk, "--out", store, "--no_progress", "--lenient", "--size", "16"]
    assert _cli(base, capsys)[0] == 0
    summary = (store / "store.json").read_text()
    code, err = _cli(base, capsys)  # the same input and options: resumed, no flag needed
    assert code == 0 and (store / "store.json").read_text() == summary
    other = [a if a != "16" else "24" for a in base]
    code, err = _cli(other, capsys)
    assert code == 2 and "holds a store being written from other input or options (differs in: size)" in err
    assert "pass --overwrite to start it again" in err and (store / "store.json").read_text() == summary
    code, err = _cli(other + ["--overwrite"], capsys)
    assert code == 0, err
    assert json.loads((store / "store.json").read_text())["size"] == 24

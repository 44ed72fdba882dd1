"""Output guards and lenient input of the commands not covered elsewhere: bench, demo, evaluate,
localize, export, compare."""

import json
import os

import numpy as np
import pytest

from btd_jax import cli, demo
from btd_jax.data.errors import DataError
from btd_jax.data.testsets import layout


def _cli(argv, capsys):
    """Runs ``btd-jax ARGV`` in this process -> (exit status, stderr)."""
    with pytest.raises(SystemExit) as e:
        cli.main(["btd-jax", *map(str, argv)])
    return e.value.code, capsys.readouterr().err


def test_bench_refuses_an_existing_report_before_timing(tmp_path, capsys):
    out = tmp_path / "bench.json"
    out.write_text("keep me")
    code, err = _cli(["bench", "--config", "tiny", "--batches", "1", "--dtypes", "float32", "--min_time", "0",
                      "--out", out], capsys)
    assert code == 2 and err.strip() == f"btd-jax bench: error: {out}: already exists; pass --overwrite to replace it"
    assert out.read_text() == "keep me"


def test_demo_replaces_only_its_own_folders(tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "data").mkdir(parents=True)
    (mine / "data" / "scan.dcm").write_text("a user's file")
    code, err = _cli(["demo", "--quick", "--out", mine], capsys)
    assert code == 2 and err.strip() == (f"btd-jax demo: error: {mine}: holds data/ not written by btd-jax demo; "
                                         "the demo replaces these, so give a new --out (or pass --overwrite to "
                                         "replace them)")
    assert (mine / "data" / "scan.dcm").read_text() == "a user's file"
    assert demo.check_demo_folder(mine, overwrite=True) == mine
    assert demo.check_demo_folder(tmp_path / "new") == tmp_path / "new"  # new or empty: fine
    other = tmp_path / "other"
    (other / "notes").mkdir(parents=True)  # other files are never touched, so they are no reason to refuse
    demo.check_demo_folder(other)
    marked = tmp_path / "marked"
    (marked / "workdir").mkdir(parents=True)
    (marked / demo.DEMO_MARKER).write_text("")
    demo.check_demo_folder(marked)
    old = tmp_path / "old"  # a demo folder from before the marker: its report says so
    (old / "report").mkdir(parents=True)
    (old / "report" / "results.json").write_text(json.dumps({"demo": {"command": "btd-jax demo"}, "rows": []}))
    demo.check_demo_folder(old)
    (old / "report" / "results.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(DataError, match="holds report/ not written by btd-jax demo"):
        demo.check_demo_folder(old)
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(DataError, match="exists and is not a directory"):
        demo.check_demo_folder(f)


@pytest.fixture
def testset_with_a_missing_image(tmp_path):
    rng = np.random.default_rng(0)
    items = [dict(image=rng.normal(40.0, 20.0, (24, 24)).astype(np.float32), x=12, y=12, type=t,
                  methods=["CTGAN"] if t == "FM" else []) for t in ("FM", "FM", "TM", "TM")]
    root = tmp_path / "testset"
    path = layout.write_testset(root, "CT", "injection", items)
    lines = path.read_text().splitlines()
    lines.append(lines[-1].replace(lines[-1].split(",")[0], "images/missing.npy", 1))
    path.write_text("\n".join(lines) + "\n")
    return root


def test_evaluate_lenient_skips_bad_rows_and_lists_them_in_the_output_folder(testset_with_a_missing_image,
                                                                             tiny_workdir, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["evaluate", "--workdir", tiny_workdir, "--dataset", testset_with_a_missing_image, "--attack",
            "injection", "--centers", "8", "--n_boot", "2", "--out", out]
    code, err = _cli(argv, capsys)
    assert code == 2 and "missing.npy does not exist" in err and not (out / "results.json").exists()
    code, err = _cli(argv + ["--lenient"], capsys)
    assert code == 0, err
    rows = (out / "skipped.csv").read_text().splitlines()
    assert rows[0] == "item,reason" and len(rows) == 2 and "missing.npy does not exist" in rows[1]
    assert "btd-jax evaluate: skipped 1 item(s)" in err
    assert os.path.isfile(out / "results.json")
    code, err = _cli(argv + ["--lenient"], capsys)  # a rerun into the same folder needs --overwrite
    assert code == 2 and "results.md: already exists; pass --overwrite" in err


def test_prepare_never_writes_into_its_input_or_a_foreign_folder(tmp_path, capsys):
    src = tmp_path / "dicom"
    src.mkdir()
    (src / "a.dcm").write_bytes(b"x")
    code, err = _cli(["prepare", "--input", src, "--out", src / "store", "--no_progress"], capsys)
    assert code == 2 and "refusing to write outputs there: it is inside the input folder" in err
    assert sorted(os.listdir(src)) == ["a.dcm"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifest.jsonl").write_text("a user's file")
    code, err = _cli(["prepare", "--input", src, "--out", other, "--no_progress"], capsys)
    assert code == 2 and err.strip() == (f"btd-jax prepare: error: {other}: folder exists and holds files that "
                                         "btd-jax prepare did not write (manifest.jsonl); give a new or empty "
                                         "folder, or pass --overwrite to write into it")
    assert sorted(os.listdir(other)) == ["manifest.jsonl"]
    from argparse import Namespace

    from btd_jax.commands import prepare as prepare_cmd
    from btd_jax.data.store import slice_store

    (other / slice_store.PLAN_FILE).write_text("{}")  # an interrupted store: a rerun resumes it, no flag needed
    prepare_cmd.plan_outputs(Namespace(command="prepare", input=str(src), out=str(other), overwrite=False))
    assert prepare_cmd.plan_outputs(Namespace(command="prepare", input=str(src), out="gs://bucket/store",
                                              overwrite=False)) is None


@pytest.mark.parametrize("command, flags, existing", [
    ("localize", ["--input", "slice.npy"], "localize.json"),
    ("export", [], "scorer.jaxexport"),
    ("compare", ["--dataset", "set.npz", "--train", "train.npy", "--attack", "injection", "--methods", "ae"],
     "results.md"),
])
def test_rerun_into_an_existing_output_needs_overwrite(command, flags, existing, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / existing).write_text("keep me")
    wd = tmp_path / "wd"  # refused before the model is loaded: the workdir need not hold one
    wd.mkdir()
    for f in flags:
        if "." in f:
            (tmp_path / f).write_bytes(b"")
    code, err = _cli([command, "--workdir", wd, *[tmp_path / f if "." in f else f for f in flags], "--out", out], capsys)
    assert code == 2 and err.strip() == (f"btd-jax {command}: error: {out / existing}: already exists; "
                                         "pass --overwrite to replace it")
    assert (out / existing).read_text() == "keep me"


def test_an_output_never_replaces_the_input(tmp_path, capsys):
    x = tmp_path / "slice.npy"
    np.save(x, np.zeros((64, 64), np.float32))
    (tmp_path / "wd").mkdir()
    (tmp_path / "results.md").write_text("a user's file")
    code, err = _cli(["compare", "--workdir", tmp_path / "wd", "--dataset", tmp_path / "results.md", "--train", x,
                      "--attack", "injection", "--methods", "ae", "--out", tmp_path, "--overwrite"], capsys)
    assert code == 2 and "refusing to write the output there: it is the input" in err
    assert (tmp_path / "results.md").read_text() == "a user's file"

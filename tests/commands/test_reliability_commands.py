"""The command line never loses a good model: real signals, divergence, a busy workdir, output guards,
config checks and lenient input."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from btd_jax import checkpoints, cli, configs, localize
from btd_jax.data.errors import DataError
from btd_jax.score import Scorer
from btd_jax.scoring import score_input

CLI = [sys.executable, "-c", "from btd_jax.cli import main; main()"]
TINY = configs.get("tiny")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Subprocess environment: the test devices, plus one compilation cache shared by the trainings."""
    return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
                JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def _patches(path, n):
    base = np.random.default_rng(0).random((n, 4, 4), dtype=np.float32)
    np.save(path, np.kron(base, np.ones((4, 4), np.float32)))  # smooth 16 px patches in [0, 1]
    return str(path)


def _train(data, wd, *extra):
    return ["train", "--config", "tiny", "--data", str(data), "--workdir", str(wd), "--val_fraction", "0",
            "--no_progress", *map(str, extra)]


def _cli(argv, capsys):
    """Runs ``btd-jax ARGV`` in this process -> (exit status, stderr)."""
    with pytest.raises(SystemExit) as e:
        cli.main(["btd-jax", *map(str, argv)])
    return e.value.code, capsys.readouterr().err


def _wait_for_step(metrics, step, proc, timeout=900):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"training ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        if os.path.exists(metrics):
            done = [json.loads(line)["step"] for line in open(metrics).read().splitlines() if line.strip()]
            if done and max(done) >= step:
                return
        time.sleep(0.2)
    pytest.fail(f"no step {step} within {timeout} s")


# ---------------------------------------------------------------------------------- real signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_finishes_the_step_saves_it_and_exits_with_one_line(tmp_path, env, sig):
    data = _patches(tmp_path / "x.npy", 4)  # fewer than one batch of 8: warned
    wd = tmp_path / "w"
    proc = subprocess.Popen(CLI + _train(data, wd, "--num_steps", 100_000, "--set", "train.log_every=1",
                                         "--set", "train.checkpoint_every=100000"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _wait_for_step(wd / "metrics.jsonl", 2, proc)
        if sig == signal.SIGTERM:  # meanwhile a second run on the same workdir stops at once
            second = subprocess.run(CLI + _train(data, wd, "--num_steps", "10"), capture_output=True, text=True,
                                    env=env, timeout=900)
            assert second.returncode == 1, second.stderr[-2000:]
            assert re.search(rf"error: workdir .* is in use by pid {proc.pid} on host", second.stderr)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + sig, err[-2000:]
    last = err.strip().splitlines()[-1]
    m = re.fullmatch(rf"btd-jax train: stopped by {sig.name} after step (\d+); saved it in \S+ "
                     r"\(run the same command to continue\)", last)
    assert m, last
    assert "Traceback" not in err and "fewer than one step's 8" in err
    assert checkpoints.latest_step(str(wd)) == int(m.group(1)) >= 2
    assert not (wd / ".lock").exists()


# ---------------------------------------------------------------------------------- divergence


def test_divergence_stops_with_one_line_and_keeps_the_good_checkpoints(tmp_path, env):
    data = _patches(tmp_path / "x.npy", 16)
    wd = tmp_path / "w"
    base = _train(data, wd, "--set", "train.log_every=2", "--set", "train.keep_checkpoints=2")
    good = subprocess.run(CLI + base + ["--num_steps", "4", "--set", "train.checkpoint_every=2"], capture_output=True,
                          text=True, env=env, timeout=900)
    assert good.returncode == 0, good.stderr[-2000:]
    bad = subprocess.run(CLI + base + ["--num_steps", "40", "--lr", "1e30", "--set", "train.checkpoint_every=1"],
                         capture_output=True, text=True, env=env, timeout=900)
    assert bad.returncode == 1, bad.stderr[-2000:]
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("btd-jax train: error: training diverged") and "Traceback" not in bad.stderr
    assert f"the newest good checkpoint is step 4 in {wd}" in last
    assert sorted(os.listdir(wd / "checkpoints")) == ["2", "4"]  # nothing saved, nothing rotated away
    params, _ = checkpoints.load_params(str(wd))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


# ---------------------------------------------------------------------------------- configs


def test_invalid_set_values_fail_before_anything_is_saved(tmp_path, capsys):
    data = _patches(tmp_path / "x.npy", 8)
    wd = tmp_path / "w"
    code, err = _cli(_train(data, wd, "--set", "train.checkpoint_every=0"), capsys)
    assert code == 2 and err.strip() == "btd-jax train: error: train.checkpoint_every must be >= 1, got 0"
    code, err = _cli(_train(data, wd, "--set", "train.learning_rate=-1"), capsys)
    assert code == 2 and "train.learning_rate must be > 0, got -1.0" in err
    code, err = _cli(_train(data, wd, "--set", "train.log_every=often"), capsys)
    assert code == 2 and "--set train.log_every=often: expected int" in err
    assert not (wd / "config.json").exists()


def test_a_foreign_config_json_is_not_a_btd_jax_config(tmp_path, capsys):
    wd = tmp_path / "w"
    os.makedirs(wd / "checkpoints")
    (wd / "config.json").write_text('{"foo": 1}')
    code, err = _cli(["score", "--workdir", wd, "--input", _patches(tmp_path / "x.npy", 2), "--out",
                      tmp_path / "s.csv"], capsys)
    assert code == 2 and "config.json: not a valid btd-jax config (not a btd_jax config" in err


# ---------------------------------------------------------------------------------- outputs


def test_outputs_need_overwrite_and_never_replace_inputs_or_workdir_files(tmp_path, capsys, tiny_workdir):
    x = _patches(tmp_path / "x.npy", 2)
    existing = tmp_path / "s.csv"
    existing.write_text("keep me")
    config = os.path.join(tiny_workdir, "config.json")
    before = open(config).read()
    cases = [
        (["--out", existing], f"{existing}: already exists; pass --overwrite to replace it"),
        (["--out", x, "--overwrite"], f"{x}: refusing to write the output there: it is the input"),
        (["--out", config, "--overwrite"], "refusing to write the output there: it is config.json of the workdir"),
        (["--out", tmp_path / "new.csv", "--maps", tmp_path / "m"], "m.npz: already exists"),  # as NumPy names it
    ]
    (tmp_path / "m.npz").write_text("keep me")
    for flags, message in cases:
        code, err = _cli(["score", "--workdir", tiny_workdir, "--input", x, *flags], capsys)
        assert code == 2 and message in err, err
    assert existing.read_text() == "keep me" and open(config).read() == before
    assert (tmp_path / "m.npz").read_text() == "keep me" and not (tmp_path / "new.csv").exists()
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text("{}")
    code, err = _cli(["evaluate", "--scores", existing, "--attack", "injection", "--out", out], capsys)
    assert code == 2 and "results.json: already exists; pass --overwrite" in err


def test_non_finite_scores_are_never_written(tmp_path, capsys, monkeypatch):
    class NaNScorer:
        cfg = TINY

        def settings(self, **kw):
            return dataclasses.replace(TINY.score, **kw)

        def run(self, patches, maps=False, progress=None, **kw):
            return np.where(np.arange(len(patches)) == 1, np.nan, 0.5), None

    monkeypatch.setattr(Scorer, "load", staticmethod(lambda workdir: NaNScorer()))
    out = tmp_path / "s.csv"
    code, err = _cli(["score", "--workdir", tmp_path, "--input", _patches(tmp_path / "x.npy", 3), "--out", out], capsys)
    assert code == 1 and "1 of 3 scores are NaN/inf (first: patch 1); nothing written" in err
    assert not out.exists()


# ---------------------------------------------------------------------------------- lenient input


@pytest.fixture
def dicom_folder(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "data"))
    try:
        from _dicom_files import write_ct_series
    finally:
        sys.path.pop(0)
    folder = tmp_path / "dicom"
    write_ct_series(folder, [0, 1, 2])
    (folder / "junk.dcm").write_bytes(b"not a DICOM file at all")
    return folder


def test_lenient_skips_bad_dicom_files_and_lists_them_next_to_the_output(dicom_folder, tmp_path, tiny_scorer):
    out = str(tmp_path / "scores.csv")
    with pytest.raises(DataError, match=r"junk\.dcm.*--lenient"):
        score_input(tiny_scorer, str(dicom_folder), out, n_per_slice=2, progress=False)
    assert not os.path.exists(out)
    done = score_input(tiny_scorer, str(dicom_folder), out, n_per_slice=2, strict=False, progress=False)
    assert len(done.scores) == 6 and done.labels is None
    assert [os.path.basename(s.item) for s in done.skipped] == ["junk.dcm"]
    rows = open(tmp_path / "scores.skipped.csv").read().splitlines()
    assert rows[0] == "item,reason" and "junk.dcm" in rows[1] and len(rows) == 2
    loc = localize.localize(tiny_scorer, str(dicom_folder), str(tmp_path / "loc"), stride=32, center=8, strict=False)
    assert loc.volume.pixels.shape[0] == 3 and not loc.volume.single
    assert "junk.dcm" in open(tmp_path / "loc" / "skipped.csv").read()

"""`btd-jax train`: bad data and overrides fail with one line; a run trains, resumes and saves its config."""

import os

import numpy as np
import pytest

from btd_jax import cli, configs


def _data(n=24, seed=0):
    """Smooth random patches in [0, 1]."""
    base = np.random.default_rng(seed).random((n, 4, 4), dtype=np.float32)
    return np.kron(base, np.ones((4, 4), np.float32))


@pytest.fixture(autouse=True)
def _restore_xla_flags(monkeypatch):
    # `btd-jax train` adds a CPU flag to XLA_FLAGS for the processes it starts; keep it out of others.
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))


def _cli(argv, capsys):
    try:
        args = cli.build_parser().parse_args(["train"] + argv)
    except SystemExit as e:  # refused at the flag
        return e.code, capsys.readouterr()
    rc = cli._main(args)
    return rc, capsys.readouterr()


@pytest.mark.parametrize("make,match", [
    (lambda d: str(d / "missing.npy"), "no such file"),
    (lambda d: (np.save(d / "small.npy", np.zeros((4, 8, 8), np.float32)), str(d / "small.npy"))[1],
     "patches are 8x8 but config 'tiny' expects 16x16"),
    (lambda d: (np.save(d / "empty.npy", np.zeros((0, 16, 16), np.float32)), str(d / "empty.npy"))[1], "empty"),
])
def test_cli_bad_data(make, match, tmp_path, capsys):
    rc, out = _cli(["--config", "tiny", "--data", make(tmp_path), "--workdir", str(tmp_path / "w")], capsys)
    assert rc == 2 and match in out.err and out.err.count("\n") == 1


def test_cli_bad_config_and_overrides(tmp_path, capsys):
    np.save(tmp_path / "p.npy", _data(16))
    data = ["--data", str(tmp_path / "p.npy"), "--workdir", str(tmp_path / "w")]
    rc, out = _cli(["--config", "nope"] + data, capsys)
    assert rc == 2 and "unknown config 'nope'" in out.err
    rc, out = _cli(data, capsys)
    assert rc == 2 and "--config is required" in out.err
    rc, out = _cli(["--config", "tiny", "--set", "train.nope=1"] + data, capsys)
    assert rc == 2 and "unknown config key 'train.nope'" in out.err
    rc, out = _cli(["--config", "tiny", "--set", "train.batch_size"] + data, capsys)
    assert rc == 2 and "KEY=VALUE" in out.err
    rc, out = _cli(["--config", "tiny", "--set", "train.batch_size=abc"] + data, capsys)
    assert rc == 2 and "--set train.batch_size=abc: expected int" in out.err
    rc, out = _cli(["--config", "tiny", "--num_steps", "3", "--steps", "3"] + data, capsys)
    assert rc == 2 and "give only --num_steps" in out.err


def test_cli_trains_and_resumes(tmp_path, capsys):
    np.save(tmp_path / "p.npy", _data(40))
    wd = str(tmp_path / "w")
    base = ["--data", str(tmp_path / "p.npy"), "--workdir", wd, "--no_progress", "--set", "train.log_every=2"]
    rc, out = _cli(["--config", "tiny", "--num_steps", "3"] + base, capsys)
    assert rc == 0 and "trained to step 3" in out.out and "deprecated" not in out.err
    assert "patches (+2 validation)" in out.err  # 5% of 40 rows held out
    rc, out = _cli(["--steps", "4"] + base, capsys)  # no --config: the workdir's; --steps: the old spelling
    assert rc == 0 and "resuming" in out.err and "trained to step 4" in out.out
    assert [line for line in out.err.splitlines() if "deprecated" in line] == [
        "btd-jax train: --steps is deprecated, use --num_steps (optimiser steps)"]
    cfg = configs.from_json(open(os.path.join(wd, "config.json")).read())
    assert cfg.name == "tiny" and cfg.train.num_steps == 4 and cfg.train.log_every == 2


def test_cli_config_from_a_json_file(tmp_path, capsys):
    np.save(tmp_path / "p.npy", _data(24))
    custom = configs.override(configs.get("tiny"), {"name": "mine", "train.log_every": 1})
    (tmp_path / "mine.json").write_text(configs.to_json(custom))
    wd = tmp_path / "w"
    rc, out = _cli(["--config", str(tmp_path / "mine.json"), "--data", str(tmp_path / "p.npy"), "--workdir", str(wd),
                    "--num_steps", "1", "--no_progress", "--val_fraction", "0"], capsys)
    assert rc == 0 and "training mine " in out.err
    assert configs.from_json((wd / "config.json").read_text()) == configs.override(custom, {"train.num_steps": 1})
    (tmp_path / "bad.json").write_text('{"model": {"dimm": 3}}')
    rc, out = _cli(["--config", str(tmp_path / "bad.json"), "--data", str(tmp_path / "p.npy"),
                    "--workdir", str(tmp_path / "w2")], capsys)
    assert rc == 2 and "bad.json: not a valid btd-jax config" in out.err and "dimm" in out.err


def test_cli_lenient_skips_unreadable_slices_of_the_authors_folder(tmp_path, capsys):
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "data"))
    try:
        from _layouts import write_authors_ct
    finally:
        sys.path.pop(0)
    root = tmp_path / "ct"
    write_authors_ct(root, patients=2, slices=2, h=40, w=40)
    (root / "P1" / "s1.npy").write_bytes(b"not an npy file")
    np.save(root / "P0" / "s0.npy", np.zeros((8, 8), np.int16))  # smaller than the 16 px crop
    wd = tmp_path / "w"
    base = ["--config", "tiny", "--data", str(root), "--workdir", str(wd), "--num_steps", "1", "--no_progress",
            "--val_fraction", "0"]
    # Without --lenient: refused before training starts, naming the first bad row.
    rc, out = _cli(base, capsys)
    assert rc == 2 and f"{root / 'train_csv.csv'} row " in out.err and "(and 1 more); --lenient skips" in out.err
    assert not (wd / "checkpoints").exists()
    rc, out = _cli(base + ["--lenient"], capsys)
    assert rc == 0, out.err
    rows = (wd / "skipped.csv").read_text().splitlines()
    assert rows[0] == "item,reason" and len(rows) == 3
    assert all(r.startswith(f"{root / 'train_csv.csv'} row ") for r in rows[1:])
    assert "a 8x8 slice, smaller than the 16 px crop" in rows[1] and "s1.npy: cannot read the slice" in rows[2]
    assert "(2 training rows" in out.err and "trained to step 1" in out.out

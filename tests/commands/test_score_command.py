"""Tests for ``btd-jax score`` on a tiny saved model: .npy, test-set layout, DICOM + locations, maps/PNGs."""

import csv

import jax
import numpy as np
import pytest

from btd_jax import cli, configs, score

CFG = configs.get("tiny")
SIZE = CFG.image_size


@pytest.fixture(scope="module")
def workdir(tiny_workdir):
    return tiny_workdir


@pytest.fixture(scope="module")
def scorer(workdir):
    return score.Scorer.load(workdir)


def _run(*argv):
    args = cli.build_parser().parse_args(["score", *map(str, argv)])
    return cli._main(args)


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_npy_to_csv_maps_and_pngs(tmp_path, workdir, scorer):
    x = np.random.default_rng(0).uniform(size=(11, SIZE, SIZE)).astype(np.float32)
    np.save(tmp_path / "p.npy", x)
    out, maps, png = tmp_path / "s.csv", tmp_path / "m.npz", tmp_path / "png"
    assert _run("--workdir", workdir, "--input", tmp_path / "p.npy", "--out", out, "--center", 8,
                "--maps", maps, "--png", png, "--png_max", 3, "--batch_size", 8) == 0
    rows = _read(out)
    assert [r["id"] for r in rows] == [str(i) for i in range(11)]
    expected = scorer.score(x, center=8)
    np.testing.assert_allclose([float(r["score"]) for r in rows], expected, rtol=1e-5)
    z = np.load(maps)
    assert z["maps"].shape == (11, SIZE, SIZE)
    np.testing.assert_allclose(z["maps"], scorer.residual_map(x), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(z["scores"], expected, rtol=1e-5)
    top3 = {f"{i}.png" for i in np.argsort(-expected)[:3]}
    assert {p.name for p in png.iterdir()} == top3


def test_testset_layout_carries_label_scanner_method(tmp_path, workdir, scorer):
    from btd_jax.data import datasets

    rng = np.random.default_rng(1)
    items = [dict(image=rng.uniform(-700, 2000, size=(40, 40)), x=20, y=20 + i, type="FM" if i % 2 else "TM",
                  methods=("CTGAN",) if i % 2 else (), scanner=f"S{i % 3}") for i in range(6)]
    datasets.write_testset(tmp_path / "root", "CT", "injection", items)
    out = tmp_path / "s.csv"
    assert _run("--workdir", workdir, "--input", tmp_path / "root", "--out", out) == 0
    rows = _read(out)
    assert [int(r["label"]) for r in rows] == [0, 1, 0, 1, 0, 1]
    assert [r["scanner"] for r in rows] == ["S0", "S1", "S2", "S0", "S1", "S2"]
    assert [r["method"] for r in rows] == ["real", "CTGAN"] * 3
    ts = datasets.load_testset(tmp_path / "root", "CT", "injection", size=SIZE)
    np.testing.assert_allclose([float(r["score"]) for r in rows], scorer.score(ts.patches), rtol=1e-5)


def test_dicom_with_locations(tmp_path, workdir, scorer):
    from pydicom.data import get_testdata_file

    from btd_jax.data import dicom, preprocess

    dcm = get_testdata_file("CT_small.dcm")
    pts = [(30, 40), (64, 64), (100, 90)]
    loc = tmp_path / "points.csv"
    with open(loc, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "x", "y", "patient"])
        w.writerows([[dcm, x, y, "P1"] for x, y in pts])
    out = tmp_path / "s.csv"
    (tmp_path / "in").mkdir()  # outputs never go inside an input folder
    assert _run("--workdir", workdir, "--input", tmp_path / "in", "--locations", loc, "--out", out) == 0
    rows = _read(out)
    assert [(int(r["x"]), int(r["y"]), r["patient"]) for r in rows] == [(x, y, "P1") for x, y in pts]
    img = preprocess.window_ct(dicom.read_slice(dcm).pixels[0])
    patches = np.stack([preprocess.extract_patch(img, x, y, SIZE) for x, y in pts])
    np.testing.assert_allclose([float(r["score"]) for r in rows], scorer.score(patches), rtol=1e-5)


def test_bad_inputs_exit_2_with_one_message(tmp_path, workdir, capsys):
    bad = np.full((2, SIZE, SIZE), 0.5, np.float32)
    bad[1, 3, 3] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    assert _run("--workdir", workdir, "--input", tmp_path / "nan.npy", "--out", tmp_path / "s.csv") == 2
    err = capsys.readouterr().err
    assert "nan.npy" in err and "NaN" in err
    np.save(tmp_path / "big.npy", np.zeros((2, 8, 8), np.float32))
    assert _run("--workdir", workdir, "--input", tmp_path / "big.npy", "--out", tmp_path / "s.csv") == 2
    assert "8x8 but the model (tiny) expects 16x16" in capsys.readouterr().err
    loc = tmp_path / "l.csv"
    loc.write_text("path,x\nfoo.dcm,3\n")
    (tmp_path / "in").mkdir()
    assert _run("--workdir", workdir, "--input", tmp_path / "in", "--locations", loc, "--out", tmp_path / "s.csv") == 2
    assert "missing column(s) ['y']" in capsys.readouterr().err


def test_reverse_steps_and_clip_inputs_with_deprecated_aliases(tmp_path, workdir, scorer, capsys):
    x = np.random.default_rng(2).uniform(size=(5, SIZE, SIZE)).astype(np.float32)
    np.save(tmp_path / "p.npy", x)
    expected = scorer.score(x, steps=2, key=jax.random.key(0), center=8)
    for flags in (["--reverse_steps", 2, "--clip_inputs"], ["--steps", 2, "--clip"]):
        out = tmp_path / "s.csv"
        assert _run("--workdir", workdir, "--input", tmp_path / "p.npy", "--out", out, "--center", 8, "--overwrite",
                    *flags) == 0
        np.testing.assert_allclose([float(r["score"]) for r in _read(out)], expected, rtol=1e-5)
    err = capsys.readouterr().err
    assert "btd-jax score: --steps is deprecated, use --reverse_steps" in err
    assert "btd-jax score: --clip is deprecated, use --clip_inputs" in err
    x = str(tmp_path / "p.npy")
    base = ["score", "--workdir", workdir, "--input", x, "--out", "s.csv"]
    for cmd in ("score", "evaluate", "localize"):
        argv = base if cmd == "score" else [cmd, "--workdir", workdir, "--out", "o", "--input", x, "--dataset", x]
        if cmd == "localize":
            argv = argv[:-2]
        if cmd == "evaluate":
            argv = [a for a in argv if a not in ("--input", x)][:-1] + ["--dataset", x, "--attack", "injection"]
        args = cli.build_parser().parse_args(argv + ["--steps", "3", "--clip"])
        assert (args.reverse_steps, args.clip_inputs) == (3, True)
        args = cli.build_parser().parse_args(argv)
        assert (args.reverse_steps, args.clip_inputs) == (None, False)  # None: the model config's

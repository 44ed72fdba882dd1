"""evaluate: dataset naming, tamper split, Table-1 rows, writers, figures, scored-CSV round trip, CLI."""

import csv
import json
import os

import numpy as np
import pytest

from btd_jax import evaluate, metrics
from btd_jax.data.errors import DataError
from btd_jax.runtime import MARKER


def _synthetic(seed=0, n=120):
    """Two tamper methods, shared reals, two scanners; CTGAN fakes separable, SD fakes less so."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(n), np.ones(n), np.ones(n)].astype(int)
    method = np.r_[np.full(n, ""), np.full(n, "CTGAN"), np.full(n, "SD")]
    scanner = np.tile(np.array(["GE", "Siemens"]), 3 * n // 2)
    s = np.r_[rng.normal(0, 1, n), rng.normal(3, 1, n), rng.normal(0.5, 1, n)]
    return labels, method, scanner, s


def test_names_and_labels():
    assert evaluate.dataset_name("CTGAN", "CT", "injection") == "CTGAN-CT-Inject"
    assert evaluate.dataset_name("SD", "MRI", "removal") == "SD-MRI-Remove"
    with pytest.raises(ValueError, match="unknown attack"):
        evaluate.dataset_name("SD", "CT", "swap")
    assert evaluate.reduction_name(None) == "full" and evaluate.reduction_name(32) == "center32"
    np.testing.assert_array_equal(evaluate.parse_labels(["TM", "FM", "tb", "FB", "real", "fake", "0", "1", 1, 0]),
                                  [0, 1, 0, 1, 0, 1, 0, 1, 1, 0])
    np.testing.assert_array_equal(evaluate.parse_labels(np.array([True, False])), [1, 0])
    with pytest.raises(DataError, match="item 1 has label 'maybe'"):
        evaluate.parse_labels(["real", "maybe"])


def test_split_by_tamper_shared_and_paired_reals():
    labels, method, _, _ = _synthetic(n=4)
    sets = evaluate.split_by_tamper(labels, method)
    assert list(sets) == ["CTGAN", "SD"]
    np.testing.assert_array_equal(sets["CTGAN"], np.r_[0:4, 4:8])  # shared reals + CTGAN fakes
    np.testing.assert_array_equal(sets["SD"], np.r_[0:4, 8:12])
    # reals paired with a method (method column set on reals too) stay with that method
    paired = np.array(["CTGAN", "CTGAN", "SD", "SD", "CTGAN", "SD"])
    lab = np.array([0, 0, 0, 0, 1, 1])
    s2 = evaluate.split_by_tamper(lab, paired)
    np.testing.assert_array_equal(s2["CTGAN"], [0, 1, 4])
    np.testing.assert_array_equal(s2["SD"], [2, 3, 5])
    assert list(evaluate.split_by_tamper(labels, method, tamper="ctgan")) == ["CTGAN"]
    with pytest.raises(DataError, match="'GAN2' not found.*CTGAN, SD"):
        evaluate.split_by_tamper(labels, method, tamper="GAN2")
    assert list(evaluate.split_by_tamper(labels, None)) == ["all"]


def test_evaluate_scores_row_matches_metrics():
    labels, method, scanner, s = _synthetic()
    idx = evaluate.split_by_tamper(labels, method)["CTGAN"]
    row = evaluate.evaluate_scores(s[idx], labels[idx], scanner[idx], dataset="CTGAN-CT-Inject", n_boot=30)
    assert row["auc"] == pytest.approx(metrics.auc(labels[idx], s[idx]))
    assert row["eer"] == pytest.approx(metrics.eer(labels[idx], s[idx])[0])
    b = metrics.bootstrap(s[idx], labels[idx], scanner[idx], n=30)
    assert row["auc_mean"] == b["auc_mean"] and row["eer_ci_high"] == b["eer_ci"][1]
    assert (row["n_real"], row["n_fake"]) == (120, 120)
    assert row["groups"] == "GE:60;Siemens:60" and row["skipped_groups"] == ""
    assert row["auc_mean"] > 0.95


def test_evaluate_scored_and_writers(tmp_path):
    labels, method, scanner, s = _synthetic()
    scores = {"full": s, "center32": s * 2 + 1}  # monotone transform: same AUC/EER
    rows = evaluate.evaluate_scored(scores, labels, {"scanner": scanner, "method": method}, "CT", "injection",
                                    n_boot=20)
    assert [(r["dataset"], r["reduction"]) for r in rows] == [
        ("CTGAN-CT-Inject", "full"), ("CTGAN-CT-Inject", "center32"),
        ("SD-CT-Inject", "full"), ("SD-CT-Inject", "center32")]
    assert rows[0]["auc_mean"] == pytest.approx(rows[1]["auc_mean"])
    assert rows[0]["auc"] > rows[2]["auc"]
    paths = evaluate.write_all(rows, str(tmp_path / "out"), modality="CT")
    md = open(paths["markdown"]).read()
    assert "| BTD | full | " in md and "AUC CTGAN-CT-Inject" in md and "EER SD-CT-Inject" in md
    with open(paths["csv"]) as f:
        back = list(csv.DictReader(f))
    assert len(back) == 4 and float(back[2]["auc"]) == pytest.approx(rows[2]["auc"])
    js = json.load(open(paths["json"]))
    assert js["modality"] == "CT" and js["rows"][3]["dataset"] == "SD-CT-Inject"
    assert "auc_values" not in js["rows"][0]


def test_table1_markdown_layout():
    rows = [dict(dataset=d, method="BTD", reduction=r, auc_mean=a, eer_mean=e)
            for d, r, a, e in [("A", "full", 0.91, 0.18), ("B", "full", 0.55, 0.46), ("A", "center32", 0.99, 0.08)]]
    lines = evaluate.table1_markdown(rows).splitlines()
    assert lines[0] == "| method | reduction | AUC A | AUC B | EER A | EER B |"
    assert lines[2] == "| BTD | full | 0.91 | 0.55 | 0.18 | 0.46 |"
    assert lines[3] == "| BTD | center32 | 0.99 | - | 0.08 | - |"


def test_figures_are_pngs(tmp_path):
    labels, _, _, s = _synthetic(n=40)
    roc = evaluate.plot_roc({"full": (labels, s), "center": (labels, s ** 2)}, str(tmp_path / "roc.png"), "x")
    hist = evaluate.plot_histogram(np.exp(s), labels, str(tmp_path / "h.png"), threshold=1.0)
    for p in (roc, hist):
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
        assert os.path.getsize(p) > 2000


def test_scores_csv_roundtrip_and_errors(tmp_path):
    labels, method, scanner, s = _synthetic(n=6)
    p = evaluate.write_scores_csv(str(tmp_path / "s.csv"), labels, {"full": s, "center8": -s},
                                  {"scanner": scanner, "method": method})
    y, scores, meta = evaluate.read_scores_csv(p)
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_array_equal(scores["full"], s)  # repr() keeps every bit
    np.testing.assert_array_equal(scores["center8"], -s)
    np.testing.assert_array_equal(meta["scanner"], scanner)
    (tmp_path / "bad.csv").write_text("score,kind\n0.1,x\n")
    with pytest.raises(DataError, match="no 'label' column"):
        evaluate.read_scores_csv(str(tmp_path / "bad.csv"))
    (tmp_path / "bad2.csv").write_text("label,score\n0,0.1\n1,oops\n")
    with pytest.raises(DataError, match="non-numeric"):
        evaluate.read_scores_csv(str(tmp_path / "bad2.csv"))
    with pytest.raises(FileNotFoundError):
        evaluate.read_scores_csv(str(tmp_path / "missing.csv"))


class _MapScorer:
    """residual_map = squared image: an anomaly of bright pixels in the centre scores high."""

    def residual_map(self, images, steps=1, batch_size=256, key=None):
        return np.asarray(images, dtype=np.float32) ** 2


def test_reduce_maps_and_score_reductions_blocks():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(10, 8, 8))
    red = evaluate.score_reductions(_MapScorer(), x, centers=(None, 4, 1), block=3)
    np.testing.assert_allclose(red["full"], (x ** 2).mean(axis=(1, 2)))
    np.testing.assert_allclose(red["center4"], (x[:, 2:6, 2:6] ** 2).mean(axis=(1, 2)))
    np.testing.assert_allclose(red["center1"], x[:, 3, 3] ** 2)  # (8 - 1) // 2 = 3, like score.center_window
    with pytest.raises(ValueError, match="center window 9"):
        evaluate.reduce_maps(x, [9])
    pooled = evaluate.score_reductions(_MapScorer(), x, centers=(None, 4), block=4, reduction="percentile:99")
    assert set(pooled) == {"full_p99", "center4_p99"}
    np.testing.assert_allclose(pooled["center4_p99"], np.percentile((x[:, 2:6, 2:6] ** 2).reshape(10, -1), 99, axis=1))
    np.testing.assert_allclose(evaluate.reduce_maps(x, [None], "max")["full_max"], x.reshape(10, -1).max(1))
    assert evaluate.reduction_name(32, "percentile:99.5") == "center32_p99.5"
    with pytest.raises(ValueError, match="reduction"):
        evaluate.reduce_maps(x, [None], "median")


def test_evaluate_testset_with_mock_scorer():
    rng = np.random.default_rng(0)
    n = 40
    x = rng.uniform(0, 0.3, size=(2 * n, 8, 8))
    x[n:, 3:5, 3:5] = 1.0  # fakes: a bright 2x2 "tumour" in the centre
    labels = np.r_[np.zeros(n), np.ones(n)]
    meta = {"scanner": np.tile(["a", "b"], n), "method": np.r_[np.full(n, ""), np.full(n, "CTGAN")]}
    rows, scores = evaluate.evaluate_testset(_MapScorer(), x, labels, meta, "CT", "injection",
                                             centers=(None, 2), n_boot=10)
    assert [r["reduction"] for r in rows] == ["full", "center2"]
    assert rows[1]["auc"] == 1.0 and rows[1]["eer_mean"] == 0.0
    assert scores["center2"].shape == (2 * n,)


# --- the command -----------------------------------------------------------------------------

def _parse(argv):
    import argparse

    from btd_jax.commands import evaluate as cmd

    sub = argparse.ArgumentParser().add_subparsers(dest="command")
    cmd.add_parser(sub)
    return cmd, sub.choices["evaluate"].parse_args(argv)


def test_command_on_scored_csv(tmp_path):
    labels, method, scanner, s = _synthetic(n=40)
    csv_path = evaluate.write_scores_csv(str(tmp_path / "scored.csv"), labels, {"full": s, "center32": s},
                                         {"scanner": scanner, "method": method})
    out = tmp_path / "out"
    cmd, args = _parse(["--scores", csv_path, "--modality", "CT", "--attack", "removal", "--out", str(out),
                        "--n_boot", "5"])
    assert cmd.run(args) == 0
    names = sorted(n for n in os.listdir(out) if n != MARKER)  # the marker: a folder evaluate wrote
    assert names == sorted(["results.md", "results.csv", "results.json", "roc_CTGAN-CT-Remove.png",
                            "roc_SD-CT-Remove.png", "hist_CTGAN-CT-Remove_full.png",
                            "hist_CTGAN-CT-Remove_center32.png", "hist_SD-CT-Remove_full.png",
                            "hist_SD-CT-Remove_center32.png"])
    js = json.load(open(out / "results.json"))
    assert js["attack"] == "removal" and len(js["rows"]) == 4 and js["rows"][0]["n_boot"] == 5
    cmd, args = _parse(["--scores", csv_path, "--attack", "injection", "--tamper", "SD", "--out", str(out / "sd")])
    assert cmd.run(args) == 0
    rows = json.load(open(out / "sd" / "results.json"))["rows"]
    assert {r["dataset"] for r in rows} == {"SD-CT-Inject"}


def test_command_bad_input_exits_2_with_one_line(tmp_path, capsys):
    from btd_jax import cli

    (tmp_path / "bad.csv").write_text("label,score\n0,0.1\n0,0.2\n")
    cmd, args = _parse(["--scores", str(tmp_path / "bad.csv"), "--attack", "injection", "--out", str(tmp_path / "o")])
    args._run, args.command = cmd.run, "evaluate"  # what cli.build_parser sets; other commands not needed
    assert cli._main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only one class" in err[0] and err[0].startswith("btd-jax evaluate: error:")


# --- ablation scripts (experiments/), with a stand-in scorer or a scored CSV -------------------

def _experiment(name):
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "experiments", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class _StepScorer:
    """d = 1: residual = squared intensity (detects the bright fakes); d > 1: pure noise."""

    def residual_map(self, images, steps=1, batch_size=256, key=None):
        x = np.asarray(images, np.float32)
        if steps == 1:
            return x ** 2
        return np.random.default_rng(steps).uniform(size=x.shape).astype(np.float32)


def test_ablation_steps_with_stand_in_scorer(tmp_path):
    mod = _experiment("ablation_steps")
    rng = np.random.default_rng(0)
    n = 30
    x = rng.uniform(0, 0.3, size=(2 * n, 8, 8)).astype(np.float32)
    x[n:, 3:5, 3:5] = 1.0
    labels = np.r_[np.zeros(n), np.ones(n)].astype(np.int8)
    meta = {"scanner": np.tile(["a", "b"], n), "method": np.r_[np.full(n, ""), np.full(n, "SD")]}
    res = mod.run_ablation(_StepScorer(), x, labels, meta, "MRI", "injection", [1, 2, 5], [None, 2],
                           n_boot=5, log=lambda *_: None)
    auc = {(r["steps"], r["reduction"]): r["auc"] for r in res["rows"]}
    assert auc[(1, "center2")] == 1.0 and abs(auc[(5, "center2")] - 0.5) < 0.3
    assert {r["dataset"] for r in res["rows"]} == {"SD-MRI-Inject"} and res["steps"] == [1, 2, 5]
    png = mod.plot(res, str(tmp_path / "steps.png"))
    assert open(png, "rb").read(4) == b"\x89PNG"


def test_ablation_common_npz_and_subsample(tmp_path):
    common = _experiment("ablation_common")
    np.savez(tmp_path / "d.npz", patches=np.zeros((6, 4, 4)), labels=np.array([0, 0, 0, 1, 1, 1]),
             method=np.array(["", "", "", "A", "B", "B"]), size=np.arange(6.0))
    patches, labels, meta = common.load_dataset(str(tmp_path / "d.npz"), "CT", "injection")
    assert patches.shape == (6, 4, 4) and sorted(meta) == ["method", "size"]
    keep = common.subsample(labels, 1, seed=0, strata=meta["method"])
    assert sorted(meta["method"][keep].tolist()) == ["", "A", "B"]  # one real, one per fake method
    np.savez(tmp_path / "bad.npz", patches=np.zeros((2, 4, 4)))
    with pytest.raises(DataError, match="needs 'patches' and 'labels'"):
        common.load_dataset(str(tmp_path / "bad.npz"), "CT", "injection")


def test_ablation_size_on_scored_csv(tmp_path):
    mod = _experiment("ablation_size")
    rng = np.random.default_rng(0)
    n = 200
    size = rng.uniform(5, 30, 2 * n)
    labels = np.r_[np.zeros(n), np.ones(n)].astype(int)
    score = np.exp(rng.normal(0, 0.3, 2 * n)) * np.where(labels == 1, 0.5 * size, 1.0)  # bigger fakes score higher
    path = tmp_path / "scored.csv"
    with open(path, "w") as f:
        f.write("label,score,size,method\n")
        for i in range(2 * n):
            f.write(f"{labels[i]},{float(score[i])!r},{float(size[i])!r},{'CTGAN' if labels[i] else ''}\n")
    res = mod.main(["--scores", str(path), "--attack", "injection", "--out", str(tmp_path / "o")])
    e = res["datasets"]["CTGAN-CT-Inject"]
    assert e["threshold_source"] == "test reals" and e["real"]["flag_rate"] <= 0.1
    assert e["fake"]["spearman_rho"] > 0.5 and abs(e["real"]["spearman_rho"]) < 0.2
    assert e["fake"]["bins"][-1]["flag_rate"] >= e["fake"]["bins"][0]["flag_rate"]
    assert os.path.exists(tmp_path / "o" / "ablation_size.png")
    with pytest.raises(DataError, match="no size column 'diameter'"):
        mod.main(["--scores", str(path), "--size_column", "diameter", "--out", str(tmp_path / "o2")])


# --- the full command on a tiny model -----------------------------------------------------------

def test_command_scores_a_testset_with_a_tiny_model(tmp_path, tiny_workdir):
    from btd_jax import score

    rng = np.random.default_rng(0)
    n = 12
    patches = rng.uniform(0, 1, (3 * n, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "test.npz", patches=patches, labels=np.r_[np.zeros(n), np.ones(2 * n)].astype(int),
             scanner=np.tile(["GE", "Siemens"], 3 * n // 2), method=np.r_[np.full(n, ""), np.full(n, "CTGAN"),
                                                                         np.full(n, "SD")])
    out = tmp_path / "out"
    cmd, args = _parse(["--workdir", tiny_workdir, "--dataset", str(tmp_path / "test.npz"), "--attack", "injection",
                        "--centers", "8", "--n_boot", "5", "--batch_size", "16", "--out", str(out)])
    assert cmd.run(args) == 0
    rows = json.load(open(out / "results.json"))["rows"]
    assert [(r["dataset"], r["reduction"]) for r in rows] == [
        ("CTGAN-CT-Inject", "full"), ("CTGAN-CT-Inject", "center8"), ("SD-CT-Inject", "full"), ("SD-CT-Inject", "center8")]
    # the per-sample scores equal the scorer's own full / centre scores
    y, scores, meta = evaluate.read_scores_csv(str(out / "scores.csv"))
    sc = score.Scorer.load(tiny_workdir)
    np.testing.assert_allclose(scores["full"], sc.score(patches, batch_size=16), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(scores["center8"], sc.score(patches, center=8, batch_size=16), rtol=1e-5, atol=1e-9)
    assert rows[0]["auc"] == pytest.approx(metrics.auc(y[:2 * n], scores["full"][:2 * n]))
    # and re-evaluating the written CSV gives the same table
    cmd2, args2 = _parse(["--scores", str(out / "scores.csv"), "--attack", "injection", "--n_boot", "5",
                          "--out", str(tmp_path / "again")])
    assert cmd2.run(args2) == 0
    again = json.load(open(tmp_path / "again" / "results.json"))["rows"]
    assert [r["auc_mean"] for r in again] == [r["auc_mean"] for r in rows]


def test_stochastic_scores_do_not_depend_on_the_block_size(tiny_workdir):
    """d > 1: image i draws its noise from item_key(key, i), its index in the whole set."""
    import jax

    from btd_jax import score

    sc = score.Scorer.load(tiny_workdir)
    x = np.random.default_rng(3).uniform(0, 1, (13, 16, 16)).astype(np.float32)
    key = jax.random.key(5)
    a = evaluate.score_reductions(sc, x, centers=(None, 8), steps=3, batch_size=8, key=key, block=4)
    b = evaluate.score_reductions(sc, x, centers=(None, 8), steps=3, batch_size=16, key=key, block=13)
    for name in ("full", "center8"):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-5)
    np.testing.assert_allclose(a["full"], sc.score(x, steps=3, key=key, center=None), rtol=1e-5)


def test_dataset_indices_indicator_columns_and_joined_methods():
    labels = np.array([0, 0, 1, 1, 1])
    meta = {"CTGAN-CT-Inject": np.array(["1", "0", "1", "0", "1"]),
            "SD-CT-Inject": np.array(["0", "0", "0", "1", "1"]),
            "method": np.array(["real", "real", "CTGAN", "SD", "CTGAN+SD"])}
    d = evaluate.dataset_indices(labels, meta, "CT", "injection")
    np.testing.assert_array_equal(d["CTGAN-CT-Inject"], [0, 2, 4])  # the column's own reals
    np.testing.assert_array_equal(d["SD-CT-Inject"], [0, 1, 3, 4])  # marks no real -> all reals
    assert list(evaluate.dataset_indices(labels, meta, "CT", "injection", tamper="sd")) == ["SD-CT-Inject"]
    with pytest.raises(DataError, match="'GAN2' has no dataset column"):
        evaluate.dataset_indices(labels, meta, "CT", "injection", tamper="GAN2")
    # without indicator columns the method column decides; joined methods count for both
    d2 = evaluate.dataset_indices(labels, {"method": meta["method"]}, "CT", "inject")
    np.testing.assert_array_equal(d2["CTGAN-CT-Inject"], [0, 1, 2, 4])
    np.testing.assert_array_equal(d2["SD-CT-Inject"], [0, 1, 3, 4])


def test_command_on_authors_layout(tmp_path, tiny_workdir):
    from btd_jax.data import datasets

    rng = np.random.default_rng(0)
    items = []
    for i in range(16):
        fake = i >= 8
        items.append({"image": rng.uniform(-700, 2000, (40, 40)).astype(np.float32), "x": 20, "y": 20,
                      "type": "FM" if fake else "TM", "methods": (["CTGAN"] if i % 2 else ["SD"]) if fake else [],
                      "scanner": "GE" if i % 4 < 2 else "Philips"})
    datasets.write_testset(tmp_path / "root", "CT", "injection", items)
    patches, labels, meta = evaluate.load_eval_set(str(tmp_path / "root"), "CT", "injection", size=16)
    assert patches.shape == (16, 16, 16) and labels.sum() == 8
    out = tmp_path / "out"
    cmd, args = _parse(["--workdir", tiny_workdir, "--dataset", str(tmp_path / "root"), "--attack", "injection",
                        "--centers", "8", "--n_boot", "3", "--batch_size", "16", "--out", str(out)])
    assert cmd.run(args) == 0
    rows = json.load(open(out / "results.json"))["rows"]
    assert {(r["dataset"], r["n_real"], r["n_fake"]) for r in rows} == {("CTGAN-CT-Inject", 8, 4),
                                                                        ("SD-CT-Inject", 8, 4)}
    assert all(set(r["groups"].split(";")) == {"GE:2", "Philips:2"} for r in rows)


def test_command_calibrate_saves_beside_the_model(tmp_path, tiny_workdir):
    import shutil

    from btd_jax import calibration, score

    wd = str(tmp_path / "wd")
    shutil.copytree(tiny_workdir, wd)
    rng = np.random.default_rng(3)
    val = rng.uniform(0, 1, (40, 16, 16)).astype(np.float32)
    np.save(tmp_path / "val.npy", val)
    np.savez(tmp_path / "test.npz", patches=rng.uniform(0, 1, (8, 16, 16)).astype(np.float32),
             labels=np.r_[np.zeros(4), np.ones(4)].astype(int))
    cmd, args = _parse(["--workdir", wd, "--dataset", str(tmp_path / "test.npz"), "--attack", "injection",
                        "--centers", "8", "--n_boot", "3", "--batch_size", "16", "--calibrate",
                        str(tmp_path / "val.npy"), "--target_fpr", "0.25", "--out", str(tmp_path / "out")])
    assert cmd.run(args) == 0
    cal = calibration.Calibration.load(wd)
    assert (cal.center, cal.steps, cal.n, cal.target_fpr) == (8, 1, 40, 0.25)
    assert cal.empirical_fpr == pytest.approx(0.25)
    s_val = score.Scorer.load(wd).score(val, center=8, batch_size=16)
    np.testing.assert_allclose(np.sort(s_val), cal.real_scores, rtol=1e-6)
    assert cal.decide(s_val).sum() == 10


def test_group_column_choice():
    labels, method, scanner, s = _synthetic(n=8)
    meta = {"site": np.tile(["x", "y", "z", "w"], 6), "method": method}
    rows = evaluate.evaluate_scored({"full": s}, labels, meta, "CT", "injection", tamper="SD", n_boot=3,
                                    group_column="site")
    assert rows[0]["groups"] == "w:2;x:2;y:2;z:2"
    rows = evaluate.evaluate_scored({"full": s}, labels, meta, "CT", "injection", tamper="SD", n_boot=3)
    assert rows[0]["groups"] == "0:8"  # no scanner column: one stratum, classes balanced only

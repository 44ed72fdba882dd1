"""`btd-jax demo --quick` end to end in a temporary folder: report files and sane numbers."""

import json

import numpy as np
import pytest

from btd_jax import cli, configs, demo, eval_io


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, demo.run_demo(out, quick=True, steps=3, n_train=64, n_test=6, n_boot=10, progress=False)


@pytest.mark.slow
def test_report_files_and_numbers(quick_report):
    out, rep = quick_report
    report = out / "report"
    for name in ("report.md", "results.json", "results.csv", "roc.png", "heatmaps.png", "scores_Inject.csv",
                 "scores_Remove.csv", "roc_generative.png", "heatmaps_generative.png", "scores_generative_Inject.csv"):
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    assert rep["report"] == str(report / "report.md")
    datasets = [r["dataset"] for r in rep["results"] if r["reduction"] == rep["reduction"]]
    want = [f"{m}-CT-{a}" for a in ("Inject", "Remove") for m in demo_data_methods(a)]
    want += ["SDEdit-CT-Inject", "cGAN-CT-Inject", "RePaint-CT-Remove", "cGAN-CT-Remove"]  # generative attacks
    assert sorted(datasets) == sorted(want)
    assert rep["reduction"] == "center8"  # the quick preset: 16 px patches, central 8 x 8
    assert sorted(r["dataset"] for r in rep["results"] if r["reduction"] == "full") == sorted(want)
    for r in rep["results"]:
        assert r["n_real"] == 6 and r["n_fake"] == 6
        for k in ("auc", "eer", "auc_mean", "eer_mean"):
            assert 0.0 <= r[k] <= 1.0, (k, r[k])
        assert r["auc_ci_low"] <= r["auc_mean"] <= r["auc_ci_high"]
    assert rep["train"]["steps"] == 3 and np.isfinite(rep["train"]["final_loss"])
    md = (report / "report.md").read_text()
    for d in datasets:
        assert d in md
    assert "roc.png" in md and "heatmaps.png" in md
    js = json.loads((report / "results.json").read_text())
    assert len(js["rows"]) == 2 * len(datasets) and js["demo"]["train"]["steps"] == 3
    # per-sample scores: one row per test patch, finite, non-negative
    labels, scores, _ = eval_io.read_scores_csv(str(report / "scores_Inject.csv"))
    assert len(labels) == 6 * (1 + len(demo_data_methods("Inject")))
    assert (labels == 0).sum() == 6
    for col in scores.values():
        assert len(col) == len(labels) and np.all(np.isfinite(col)) and np.all(col >= 0)


@pytest.mark.slow
def test_mri_demo_runs_and_reports_its_command(tmp_path):
    rep = demo.run_demo(tmp_path, quick=True, modality="MRI", steps=2, n_train=32, n_test=4, n_boot=5, progress=False)
    assert {r["dataset"] for r in rep["results"]} >= {"GAN-MRI-Inject", "CTGAN-MRI-Remove"}
    assert all(0.0 <= r["auc"] <= 1.0 for r in rep["results"])
    js = json.loads((tmp_path / "report" / "results.json").read_text())
    assert "--modality MRI" in js["demo"]["command"] and "--num_steps 2" in js["demo"]["command"]
    assert (tmp_path / demo.DEMO_MARKER).is_file() and demo.check_demo_folder(tmp_path) == tmp_path  # rerun: fine


def demo_data_methods(attack):
    from btd_jax.attacks import demo_data

    return list(demo_data.METHODS[attack])


def test_presets_registered():
    assert "demo" in configs.NAMES and "demo-quick" in configs.NAMES
    cfg = demo.demo_config("tiny", steps=7, seed=3)
    assert cfg.image_size == 16 and cfg.train.num_steps == 7 and cfg.train.seed == 3
    assert cfg.train.t_sampling == demo.DEMO_CONFIG.train.t_sampling and cfg.score.center == 8
    assert demo.demo_config("demo").score.center == 16


def test_json_config_is_used_as_it_is(tmp_path):
    mine = configs.override(configs.get("tiny"), {"name": "mine", "train.learning_rate": 5e-4, "score.center": 4})
    (tmp_path / "mine.json").write_text(configs.to_json(mine))
    cfg = demo.demo_config(str(tmp_path / "mine.json"), steps=5, seed=2)
    assert cfg == configs.override(mine, {"train.num_steps": 5, "train.seed": 2})


def test_cli_rejects_bad_arguments(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        cli.main(["btd-jax", "demo", "--minutes", "0"])
    assert e.value.code == 2
    assert "argument --minutes: expected a number > 0, got '0'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["btd-jax", "demo", "--config", "nope", "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    assert "unknown config 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

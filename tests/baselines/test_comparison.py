"""The Table-1 comparison (btd_jax.baselines.comparison) and the ``btd-jax compare`` command."""

import json
import os

import jax
import numpy as np
import pytest

from btd_jax import configs
from btd_jax.baselines import comparison


def _testset(task, tmp_path):
    _, test, labels = task
    scanner = np.array(["A", "B"] * (len(labels) // 2))
    method = np.where(labels == 1, "Blob", "real")
    path = tmp_path / "test.npz"
    np.savez(path, patches=test, labels=labels, scanner=scanner, method=method)
    return path, test, labels, {"scanner": scanner, "method": method}


def test_paper_center_and_configs():
    assert comparison.paper_center("injection", 96) == 32
    assert comparison.paper_center("removal", 96) is None
    assert comparison.paper_center("injection", 32) is None  # the window would be the whole patch
    cfg = comparison.baseline_config("inpaint_ae", 96, 32, "tiny", steps=7)
    assert cfg.steps == 7 and cfg.mask_fraction == pytest.approx(1 / 3)
    ood = comparison.baseline_config("ood_ddpm", 16, 8, "tiny")
    assert ood.center == 8 and ood.diffusion.image_size == 16


def test_compare_with_btd_and_the_same_ddpm(task, tmp_path):
    train, _, _ = task
    _, test, labels, meta = _testset(task, tmp_path)
    from btd_jax.models import unet
    from btd_jax.score import Scorer

    cfg = configs.get("tiny")
    scorer = Scorer.from_params(unet.init_params(cfg.model, 16, jax.random.PRNGKey(0)), cfg)
    res = comparison.compare(train[:64], test, labels, meta, modality="CT", attack="injection", scorer=scorer,
                             methods=("ae", "ood_ddpm"), preset="tiny", baseline_steps=5, center=8, n_boot=5,
                             checkpoint_dir=str(tmp_path / "ck"), progress=None)
    assert list(res.scores) == ["BTD", "AE", "OOD DDPM"]
    assert {r["method"] for r in res.rows} == {"BTD", "AE", "OOD DDPM"}
    assert all(r["reduction"] == "center8" and r["n_boot"] == 5 for r in res.rows)
    np.testing.assert_allclose(res.scores["BTD"], scorer.score(test, center=8), rtol=1e-6)
    assert os.path.exists(tmp_path / "ck" / "ood_ddpm.npz")
    from btd_jax import baselines

    ood = baselines.get("ood_ddpm").load(str(tmp_path / "ck" / "ood_ddpm.npz"))
    assert ood.config.model == cfg.model  # OOD-DDPM reused BTD's network ...
    np.testing.assert_array_equal(ood.arrays["params"]["final_conv"]["kernel"],
                                  np.asarray(scorer.params["final_conv"]["kernel"]))  # ... and its weights
    paths = comparison.write_outputs(res, str(tmp_path / "out"))
    assert os.path.getsize(paths["figure"]) > 1000
    rows = json.load(open(paths["json"]))["rows"]
    assert len(rows) == 3 and all(0 <= r["auc_ci_low"] <= r["auc_mean"] <= r["auc_ci_high"] <= 1 for r in rows)


def test_compare_command_end_to_end(task, tmp_path, capsys):
    from btd_jax import cli

    train, _, _ = task
    path, *_ = _testset(task, tmp_path)
    np.save(tmp_path / "train.npy", train[:64])
    out = tmp_path / "cmp"
    argv = ["btd-jax", "compare", "--dataset", str(path), "--train", str(tmp_path / "train.npy"), "--out", str(out),
            "--attack", "removal", "--methods", "ae", "splicebuster", "--preset", "tiny", "--baseline-steps", "5",
            "--n-boot", "5"]
    args = cli.build_parser().parse_args(argv[1:])
    assert cli._main(args) == 0
    printed = capsys.readouterr().out
    assert "| AE | full |" in printed and "| Splice Buster | full |" in printed
    for name in ("results.md", "results.csv", "results.json", "scores.csv", "comparison.png",
                 "baselines/ae.npz", "baselines/splicebuster.npz"):
        assert (out / name).exists(), name
    # --reuse loads the saved baselines: the same scores.
    first = (out / "scores.csv").read_text()
    args = cli.build_parser().parse_args(argv[1:] + ["--reuse", "--overwrite"])
    assert cli._main(args) == 0
    assert (out / "scores.csv").read_text() == first
    # Bad input: one clear line, exit status 2 (a missing file stops at the flag).
    with pytest.raises(SystemExit) as e:
        cli.build_parser().parse_args(argv[1:4] + ["--train", str(tmp_path / "nope.npy"), "--out", str(out) + "2",
                                                   "--attack", "removal", "--methods", "ae"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("btd-jax compare: error: argument --train:") and "nope.npy: no such file" in err[-1]

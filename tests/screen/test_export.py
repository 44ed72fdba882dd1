"""``jax.export`` artifact of the d = 1 scorer: deserialized, it gives the Scorer's scores at any batch size."""

import json
import os

import jax
import numpy as np
import pytest

from btd_jax import calibration, checkpoints, cli, configs, export
from btd_jax.score import Scorer

from _volumes import quick_params

CFG = configs.override(configs.get("tiny"), {"score.center": 8})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    wd = str(tmp_path_factory.mktemp("model"))
    checkpoints.save_params_checkpoint(wd, quick_params(CFG, seed=3), CFG)
    calibration.fit([0.1, 0.2, 0.3], target_fpr=0.4, score={"steps": 1, "center": 8}).save(wd)
    return wd


def test_export_round_trip_matches_scorer(tmp_path, workdir):
    scorer = Scorer.load(workdir)
    x = np.random.default_rng(0).uniform(size=(5, 16, 16)).astype(np.float32)
    args = cli.build_parser().parse_args(["export", "--workdir", workdir, "--out", str(tmp_path / "scorer"),
                                          "--platforms", "cpu"])
    assert cli._main(args) == 0
    with open(tmp_path / "scorer" / export.ARTIFACT, "rb") as f:
        exp = jax.export.deserialize(bytearray(f.read()))  # what a server does: no btd_jax needed
    assert exp.platforms == ("cpu",) and str(exp.in_avals[0].shape[0]) == "b"
    want = scorer.score(x)
    for n in (1, 5):  # the batch dimension is symbolic: one artifact, any batch
        scores, maps = exp.call(x[:n, ..., None])
        np.testing.assert_allclose(np.asarray(scores), want[:n], rtol=2e-5, atol=1e-8)
        assert maps.shape == (n, 16, 16)
    np.testing.assert_allclose(np.asarray(maps), scorer.residual_map(x), rtol=2e-5, atol=1e-8)
    loaded = export.load(str(tmp_path / "scorer"))
    np.testing.assert_allclose(loaded.score(x), want, rtol=2e-5, atol=1e-8)
    assert loaded.calibration.threshold == pytest.approx(0.3) and loaded.manifest["center"] == 8
    manifest = json.loads((tmp_path / "scorer" / export.MANIFEST).read_text())
    assert manifest["input"]["shape"] == ["b", 16, 16, 1] and manifest["config"]["name"] == "tiny"
    assert os.path.exists(tmp_path / "scorer" / "calibration.json")
    with pytest.raises(export.DataError, match="outside|\\[0, 1\\]"):
        loaded.score(x + 1.0)

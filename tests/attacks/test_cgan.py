import json

import jax
import numpy as np
import pytest

from btd_jax.attacks import cgan
from btd_jax.data.errors import DataError

CFG = cgan.GanConfig(image_size=16, hole=8, features=8, disc_features=8, batch_size=8, num_steps=3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(0.28, 0.02, (32, 16, 16)), 0, 1).astype(np.float32)
    params, info = cgan.train(x, CFG, jax.random.key(0))
    d = cgan.save(tmp_path_factory.mktemp("gan"), params, CFG, info)
    return x, params, info, d


def test_training_runs_and_reports(trained):
    _, _, info, _ = trained
    assert info["steps"] == 3 and not info["stopped_early"]
    assert all(np.isfinite(v) for row in info["losses"] for v in row)


def test_targets_add_a_nodule_inside_the_hole_only():
    x = np.full((4, 16, 16), 0.3, np.float32)
    t = cgan.make_targets(x, np.array([1.0, -1.0, 1.0, -1.0]), CFG, np.random.default_rng(0))
    np.testing.assert_array_equal(t[1::2], x[1::2])  # remove: the real patch itself
    hole = cgan.hole_mask(CFG) > 0
    np.testing.assert_array_equal(t[0::2][:, ~hole], x[0::2][:, ~hole])  # inject: nothing outside the hole
    assert (t[0::2][:, hole] - 0.3).max() > 40.0 / 2700.0 * 0.9  # at least the lowest contrast, 40 HU


def test_generate_changes_only_the_hole_and_is_deterministic(trained):
    x, params, _, _ = trained
    a, hole = cgan.generate(params, CFG, x[:5], "inject", jax.random.key(1))
    assert hole.shape == (5, 16, 16) and hole[0].sum() == 64
    np.testing.assert_array_equal(a[~hole], x[:5][~hole])
    assert np.abs(a - x[:5])[hole].mean() > 1e-3
    b, _ = cgan.generate(params, CFG, x[:5], "inject", jax.random.key(1), batch_size=2)
    np.testing.assert_allclose(a, b, atol=1e-6)
    r, _ = cgan.generate(params, CFG, x[:5], "remove", jax.random.key(1))
    assert np.abs(r - a).max() > 1e-4  # the condition matters


def test_save_load_round_trip_and_wrong_models(trained, tmp_path):
    x, params, _, d = trained
    p2, cfg2 = cgan.load(d)
    assert cfg2 == CFG
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(p2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(DataError, match="wrong size"):
        cgan.generate(params, CFG, np.zeros((2, 32, 32), np.float32), "inject", jax.random.key(0))
    with pytest.raises(DataError, match="unknown attack"):
        cgan.generate(params, CFG, x[:2], "swap", jax.random.key(0))
    bigger = dict(json.loads((d / cgan.CONFIG_FILE).read_text()), config={**json.loads(
        (d / cgan.CONFIG_FILE).read_text())["config"], "features": 16})
    (tmp_path / cgan.CONFIG_FILE).write_text(json.dumps(bigger))
    (tmp_path / cgan.PARAMS_FILE).write_bytes((d / cgan.PARAMS_FILE).read_bytes())
    with pytest.raises(DataError, match="not fit"):
        cgan.load(tmp_path)
    with pytest.raises(DataError, match="no cGAN attacker"):
        cgan.load(tmp_path / "missing")

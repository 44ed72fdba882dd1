"""btd_jax.scoring.pooling: the one grammar of pooling names (the registry in configs), the window, and the NumPy pooling
against the jitted one."""

import numpy as np
import pytest

from btd_jax import configs, score
from btd_jax.scoring import pooling


@pytest.mark.parametrize("name,want", [("mean", ("mean", 0.0)), ("max", ("max", 0.0)),
                                       ("percentile:99", ("percentile", 99.0)), ("percentile:0", ("percentile", 0.0))])
def test_parse(name, want):
    assert pooling.parse_reduction(name) == want


@pytest.mark.parametrize("bad", ["median", "max:3", "mean:", "percentile", "percentile:x", "percentile:100.5", ""])
def test_parse_refuses(bad):
    with pytest.raises(ValueError, match="unknown reduction"):
        pooling.parse_reduction(bad)


@pytest.mark.parametrize("name", ["mean", "max", "percentile:90"])
def test_numpy_pool_matches_the_device_reduction(name):
    maps = np.random.default_rng(0).uniform(size=(5, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(pooling.pool(maps.reshape(5, -1), name),
                               np.asarray(score.reduce_residual(maps, None, name)), rtol=1e-6)


def test_grammar_lives_in_the_registry_and_is_re_exported():
    assert pooling.parse_reduction is configs.parse_reduction is score.parse_reduction is configs.reductions.parse_reduction


def test_center_window_numpy_view_and_bounds():
    maps = np.arange(2 * 6 * 6, dtype=np.float64).reshape(2, 6, 6)
    np.testing.assert_array_equal(pooling.center_window(maps, 2), maps[:, 2:4, 2:4])
    np.testing.assert_array_equal(pooling.center_window(maps[:, :5, :5], 2), maps[:, 1:3, 1:3])  # (5 - 2) // 2
    assert pooling.center_window(maps, None) is maps
    mask = np.zeros((6, 6))
    pooling.center_window(mask, 4)[...] = 1  # a view: writable in place
    assert mask.sum() == 16 and mask[1:5, 1:5].all()
    with pytest.raises(ValueError, match="center window 7"):
        pooling.center_window(maps, 7)

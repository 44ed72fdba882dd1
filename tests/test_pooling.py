"""btd_jax.pooling: the one grammar of pooling names, and the NumPy pooling against the jitted one."""

import numpy as np
import pytest

from btd_jax import pooling, score


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

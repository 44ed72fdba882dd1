"""A Scorer never scores with NaN/inf weights (they would only ever give NaN scores)."""

import jax
import jax.numpy as jnp
import pytest

from btd_jax import configs
from btd_jax.data.errors import DataError
from btd_jax.score import Scorer


def test_scorer_refuses_non_finite_params(tiny_params):
    path = jax.tree_util.tree_leaves_with_path(tiny_params)[3][0]
    bad = jax.tree_util.tree_map_with_path(lambda p, x: x.at[(0,) * x.ndim].set(jnp.inf) if p == path else x,
                                           tiny_params)
    with pytest.raises(DataError, match=r"parameters hold NaN/inf values \(in .+\); refusing to score"):
        Scorer.from_params(bad, configs.get("tiny"))
    Scorer.from_params(tiny_params, configs.get("tiny"))  # finite weights are fine

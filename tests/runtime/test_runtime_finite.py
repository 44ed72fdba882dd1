"""Finite checks and checksums of pytrees."""

import jax
import jax.numpy as jnp
import numpy as np

from btd_jax.runtime import all_finite, nonfinite_leaves, tree_checksum


def _tree():
    return {"a": {"w": jnp.ones((3, 4)), "b": jnp.zeros(4)}, "step": jnp.asarray(3, jnp.int32),
            "c": np.arange(5, dtype=np.float32)}


def test_all_finite_one_flag_for_the_tree():
    t = _tree()
    assert bool(all_finite(t)) and bool(jax.jit(all_finite)(t))
    assert bool(all_finite({})) and bool(all_finite({"i": jnp.arange(3)}))
    for bad in (np.nan, np.inf, -np.inf):
        t2 = jax.tree.map(lambda x: x, t)
        t2["a"]["w"] = t2["a"]["w"].at[2, 1].set(bad)
        assert not bool(all_finite(t2)) and not bool(jax.jit(all_finite)(t2))
        assert nonfinite_leaves(t2) == ["a/w"]
    assert nonfinite_leaves(t) == []
    assert not bool(all_finite({"h": jnp.array([1.0, jnp.inf], jnp.bfloat16)}))


def test_checksum_sees_every_bit():
    t = _tree()
    ref = tree_checksum(t)
    assert len(ref) == 64 and ref == tree_checksum(jax.tree.map(np.asarray, t))
    flipped = np.asarray(t["c"]).copy()
    flipped.view(np.uint32)[2] ^= 1  # lowest mantissa bit of one value
    assert tree_checksum(dict(t, c=flipped)) != ref
    assert tree_checksum(dict(t, c=np.asarray(t["c"], np.float64))) != ref  # dtype counts
    renamed = {"A": t["a"], "step": t["step"], "c": t["c"]}
    assert tree_checksum(renamed) != ref  # structure counts

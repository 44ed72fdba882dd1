"""btd_jax.keys: the one per-item noise-key rule, fold_in(key, index)."""

import jax
import jax.numpy as jnp
import numpy as np

from btd_jax import keys


def _data(k):
    return np.asarray(jax.random.key_data(k))


def test_item_keys_fold_in_each_index():
    key = jax.random.key(3)
    idx = jnp.asarray([0, 5, 2, 5], jnp.int32)
    got = keys.item_keys(key, idx)
    assert got.shape == (4,)
    for j, i in enumerate([0, 5, 2, 5]):
        np.testing.assert_array_equal(_data(got[j]), _data(jax.random.fold_in(key, i)))
        np.testing.assert_array_equal(_data(got[j]), _data(keys.item_key(key, i)))
    np.testing.assert_array_equal(_data(got[1]), _data(got[3]))  # same index, same key
    assert not np.array_equal(_data(got[0]), _data(got[1]))


def test_item_key_works_under_jit():
    key = jax.random.key(0)
    np.testing.assert_array_equal(_data(jax.jit(keys.item_key)(key, 7)), _data(keys.item_key(key, 7)))

"""Per-item noise keys: item ``i`` of a data set draws from ``fold_in(key, i)``.

Keys derived from an item's *global* index make every stochastic result independent of batch size,
chunking, padding and device count::

    k = keys.item_key(key, 7)                   # the key of item 7
    ks = keys.item_keys(key, jnp.arange(8))     # (8,) keys, one per index
"""

from __future__ import annotations

import jax

__all__ = ["item_key", "item_keys"]


def item_key(key: jax.Array, i) -> jax.Array:
    """The key of item ``i`` (a Python or traced integer): ``fold_in(key, i)``."""
    return jax.random.fold_in(key, i)


def item_keys(key: jax.Array, idx: jax.Array) -> jax.Array:
    """(N,) keys for the (N,) integer indices ``idx``; entry ``j`` equals ``item_key(key, idx[j])``."""
    return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, idx)

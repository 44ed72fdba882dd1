"""Integrity checks of parameter trees: one finite flag for a whole tree, and a content checksum."""

from __future__ import annotations

import hashlib
from typing import Any, List

import jax
import jax.numpy as jnp
import numpy as np

from btd_jax.runtime.errors import NonFiniteError

__all__ = ["NonFiniteError", "all_finite", "nonfinite_leaves", "tree_checksum"]


def _is_float(x) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


@jax.jit
def all_finite(tree: Any) -> jax.Array:
    """Scalar bool: every float leaf of ``tree`` is free of NaN and inf (integer leaves count as finite).

    Jitted (one compiled reduction per tree structure, one flag to fetch); inside another ``jit``
    it is simply inlined.
    """
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if _is_float(x)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def nonfinite_leaves(tree: Any) -> List[str]:
    """Paths (``a/b/c``) of the float leaves holding NaN or inf; fetches one flag per leaf."""
    bad = []
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        if _is_float(x) and not bool(jnp.all(jnp.isfinite(x))):
            bad.append("/".join(_key_name(k) for k in path))
    return bad


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def tree_checksum(tree: Any) -> str:
    """SHA-256 (hex) of the leaves' paths, dtypes, shapes and bytes, in tree order (host-side).

    Equal trees give equal checksums on any machine; one flipped bit anywhere changes it.
    """
    h = hashlib.sha256()
    for path, x in jax.tree_util.tree_leaves_with_path(tree):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            x = x.addressable_data(0)  # replicated over processes: every process holds the whole array
        a = np.ascontiguousarray(jax.device_get(x))
        h.update("/".join(_key_name(k) for k in path).encode())
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()

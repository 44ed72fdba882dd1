"""The central window and residual-map poolings on the host (NumPy; no JAX import).

A pooling turns the squared residuals of a window into one score; the poolings and their grammar
live in one registry, :mod:`btd_jax.configs.reductions`. :func:`btd_jax.scoring.residual.reduce_residual`
applies the same registry entry on device over the same :func:`center_window`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from btd_jax.configs import reductions
from btd_jax.configs.reductions import parse_reduction

__all__ = ["parse_reduction", "center_window", "pool", "pool_window"]


def center_window(maps, k: Optional[int]):
    """Central k x k window of (..., H, W) maps (NumPy or JAX): rows/cols [(H-k)//2, (H-k)//2 + k).

    ``None`` returns ``maps`` itself; a NumPy input gives a view (writable in place).
    """
    if k is None:
        return maps
    h, w = maps.shape[-2:]
    if not 1 <= k <= min(h, w):
        raise ValueError(f"center window {k} must be between 1 and the patch size {min(h, w)}")
    r, c = (h - k) // 2, (w - k) // 2
    return maps[..., r:r + k, c:c + k]


def pool(flat: np.ndarray, reduction: str = "mean") -> np.ndarray:
    """(N, M) values -> (N,) pooled with ``reduction``."""
    return reductions.apply(flat, reduction, np)


def pool_window(maps: np.ndarray, center: Optional[int] = None, reduction: str = "mean") -> np.ndarray:
    """(N, H, W) residual maps -> (N,) pooled over the central ``center`` x ``center`` window (None: all)."""
    if maps.ndim != 3:
        raise ValueError(f"residual maps must be (N, H, W), got shape {maps.shape}")
    win = center_window(maps, center)
    return pool(win.reshape(win.shape[0], -1), reduction)

"""Names of the residual-map poolings, shared by configs, scoring and evaluation (no JAX import).

A pooling turns the squared residuals of a window into one score: ``'mean'`` (the paper), ``'max'``,
or ``'percentile:Q'`` with 0 <= Q <= 100. :func:`btd_jax.score.reduce_residual` applies it on the
device; :func:`pool` is the NumPy twin used on residual maps already on the host.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from btd_jax.configs import parse_reduction

__all__ = ["parse_reduction", "pool", "pool_window"]


def pool(flat: np.ndarray, reduction: str = "mean") -> np.ndarray:
    """(N, M) values -> (N,) pooled with ``reduction``."""
    kind, q = parse_reduction(reduction)
    if kind == "mean":
        return flat.mean(axis=1)
    return flat.max(axis=1) if kind == "max" else np.percentile(flat, q, axis=1)


def pool_window(maps: np.ndarray, center: Optional[int] = None, reduction: str = "mean") -> np.ndarray:
    """(N, H, W) residual maps -> (N,) pooled over the central ``center`` x ``center`` window.

    The window is rows/cols [(H-k)//2, (H-k)//2 + k), as ``btd_jax.score.center_window``; None = all.
    """
    if maps.ndim != 3:
        raise ValueError(f"residual maps must be (N, H, W), got shape {maps.shape}")
    h, w = maps.shape[1:]
    if center is not None:
        if not 1 <= center <= min(h, w):
            raise ValueError(f"center window {center} must be between 1 and the patch size {min(h, w)}")
        r, c = (h - center) // 2, (w - center) // 2
        maps = maps[:, r:r + center, c:c + center]
    return pool(maps.reshape(maps.shape[0], -1), reduction)

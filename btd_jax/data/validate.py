"""The one check of a stack of image patches in [0, 1], used by datasets, scoring, training and baselines.

:func:`check_shape` is cheap (shape and dtype only) so that memory-mapped inputs can be checked
without reading them; :func:`check_values` checks values (NaN/inf, the [0, 1] range) on any part,
e.g. one chunk at a time; :func:`check_patches` does both. Every problem raises one
:class:`~btd_jax.data.errors.DataError` that starts with ``name`` (the file or argument)::

    x = check_patches(arr, "train.npy", size=96, channels=1)   # (N, 96, 96, 1) float32
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from btd_jax.data.errors import DataError

__all__ = ["check_shape", "check_values", "check_patches"]


def check_shape(x: Any, name: str = "patches", *, size: Optional[int] = None, channels: int = 1,
                owner: str = "the model", allow_int: bool = False) -> np.ndarray:
    """Checks shape and dtype; returns ``x`` as (N, H, W, C) without copying or reading values.

    Args:
      x: (N, H, W) or (N, H, W, C) array (anything with ``shape``/``dtype`` is not converted).
      name: how the error messages name ``x``.
      size: the required side H = W (None: any square side).
      channels: the required C; (N, H, W) input counts as one channel.
      owner: who requires ``size``/``channels``, for the messages (e.g. "the model (ct)").
      allow_int: accept integer dtypes too (their values must still lie in [0, 1]).
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = np.asarray(x)
    number = np.issubdtype(x.dtype, np.floating) or (allow_int and np.issubdtype(x.dtype, np.integer))
    if not number:
        raise DataError(f"{name}: expected floating patches in [0, 1], got dtype {x.dtype} "
                        "(scale integer images to [0, 1] first, e.g. / 255)")
    if x.ndim == 3:
        if channels != 1:
            raise DataError(f"{name}: shape {tuple(x.shape)} has no channel axis but {owner} expects "
                            f"{channels} channels")
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"{name}: expected patches of shape (N, H, W) or (N, H, W, C), got shape {tuple(x.shape)}")
    n, h, w, c = x.shape
    if n == 0 or h == 0 or w == 0:
        raise DataError(f"{name}: empty, no patches (shape {tuple(x.shape)})")
    if h != w:
        raise DataError(f"{name}: patches must be square, got {h}x{w}")
    if size is not None and h != size:
        raise DataError(f"{name}: patches are {h}x{w} but {owner} expects {size}x{size}")
    if c != channels:
        raise DataError(f"{name}: patches have {c} channels but {owner} expects {channels}, "
                        f"got {tuple(x.shape)}")
    return x


def check_values(x: Any, name: str = "patches", *, offset: int = 0, clip: bool = False, tol: float = 0.0,
                 hint: str = "window CT (window_ct) or normalise MRI (normalize_mri) first") -> np.ndarray:
    """NaN/inf and [0, 1] checks of patches (first axis = patch); returns float32 (clipped when ``clip``).

    ``offset`` is the index of ``x[0]`` in the whole set (errors name the global index); ``tol``
    tolerates values up to ``tol`` outside [0, 1] (rounding in upstream preprocessing).
    """
    x = np.asarray(x, dtype=np.float32)
    flat = x.reshape(len(x), -1)
    finite = np.isfinite(flat).all(axis=1)
    if not finite.all():
        raise DataError(f"{name}: contains NaN or inf (first at index {offset + int(np.argmin(finite))})")
    if clip:
        return np.clip(x, 0.0, 1.0)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    bad = (lo < -tol) | (hi > 1.0 + tol)
    if bad.any():
        j = int(np.argmax(bad))
        raise DataError(f"{name}: values in [{lo[j]:.4g}, {hi[j]:.4g}] are outside [0, 1] "
                        f"(first at index {offset + j}); {hint}")
    return x


def check_patches(x: Any, name: str = "patches", *, size: Optional[int] = None, channels: int = 1,
                  owner: str = "the model", allow_int: bool = False, tol: float = 0.0) -> np.ndarray:
    """:func:`check_shape` then :func:`check_values` on all of ``x`` -> (N, H, W, C) float32."""
    x = check_shape(x, name, size=size, channels=channels, owner=owner, allow_int=allow_int)
    return check_values(x, name, tol=tol)

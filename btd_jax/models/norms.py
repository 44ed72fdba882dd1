"""Group normalisation with a hand-written backward pass (``torch.nn.GroupNorm`` semantics).

Why a custom VJP: XLA:CPU differentiates the reference formulation (mean and variance over
``(H, W, C/groups)`` of a 5-D reshape) into tree reductions and broadcasts that made GroupNorm
3-5x slower than PyTorch's (``experiments/bench_ops.py``). Here every statistic is a per-channel
sum over the ``H*W`` axis of a ``(B, H*W, C)`` view, grouped afterwards on the tiny ``(B, C)``
result, and the backward pass is the closed form: two per-channel sums and one elementwise pass.
The forward values are the same two-pass float32 statistics as before (biased variance, eps 1e-5).
"""

from __future__ import annotations

import functools
from typing import Tuple

import jax
import jax.numpy as jnp

__all__ = ["group_norm"]


def _group_mean(s: jax.Array, groups: int) -> jax.Array:
    """(B, C) per-channel values -> (B, C) mean over each channel's group."""
    b, c = s.shape
    return jnp.repeat(s.reshape(b, groups, c // groups).mean(-1), c // groups, axis=1)


def _stats(xf: jax.Array, groups: int) -> Tuple[jax.Array, jax.Array]:
    """xf (B, N, C) float32 -> per-group mean (B, C) and biased variance (B, C), per channel."""
    mean = _group_mean(xf.mean(axis=1), groups)
    var = _group_mean(jnp.square(xf - mean[:, None, :]).mean(axis=1), groups)
    return mean, var


def _forward(x, scale, bias, groups: int, eps: float):
    b, h, w, c = x.shape
    xf = x.reshape(b, h * w, c)
    mean, var = _stats(xf, groups)
    rstd = jax.lax.rsqrt(var + eps)
    y = (xf - mean[:, None, :]) * (rstd * scale)[:, None, :] + bias
    return y.reshape(x.shape), (xf, mean, rstd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _group_norm(x, scale, bias, groups, eps):
    return _forward(x, scale, bias, groups, eps)[0]


def _group_norm_fwd(x, scale, bias, groups, eps):
    y, (xf, mean, rstd) = _forward(x, scale, bias, groups, eps)
    return y, (xf, scale, mean, rstd)


def _group_norm_bwd(groups, eps, res, g):
    xf, scale, mean, rstd = res
    b, n, c = xf.shape
    gf = g.reshape(b, n, c)
    xhat = (xf - mean[:, None, :]) * rstd[:, None, :]
    sum_g = gf.sum(axis=1)  # (B, C)
    sum_gx = (gf * xhat).sum(axis=1)
    # d/dx of (x - mean) * rstd within a group of m = n * C/groups elements, with gy = g * scale:
    # dx = rstd * (gy - mean_group(gy) - xhat * mean_group(gy * xhat)).
    a1 = _group_mean(sum_g * scale, groups) / n
    a2 = _group_mean(sum_gx * scale, groups) / n
    dx = rstd[:, None, :] * (gf * scale - a1[:, None, :] - xhat * a2[:, None, :])
    return dx.reshape(g.shape), sum_gx.sum(0), sum_g.sum(0)


_group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)


def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, eps: float = 1e-5) -> jax.Array:
    """``torch.nn.GroupNorm(groups, C, eps)`` on NHWC input, statistics in float32.

    Args:
      x: (B, H, W, C) array, any float dtype; C divisible by ``groups``.
      scale: (C,) float32 affine scale.
      bias: (C,) float32 affine bias.
      groups: number of channel groups.
      eps: added to the biased variance.

    Returns:
      (B, H, W, C) normalised array in ``x.dtype``.
    """
    c = x.shape[-1]
    if x.ndim != 4 or c % groups:
        raise ValueError(f"group_norm needs (B, H, W, C) with C divisible by groups={groups}; got shape {x.shape}")
    y = _group_norm(x.astype(jnp.float32), scale.astype(jnp.float32), bias.astype(jnp.float32), groups, float(eps))
    return y.astype(x.dtype)

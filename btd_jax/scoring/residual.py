"""The residual maths of Back-in-Time Diffusion: reverse steps from the image itself, window, pooling.

Pure functions of explicit arguments (no configuration objects). ``x`` is the image in the model's
units ((N, H, W, C); [-1, 1] with lucidrains' ``auto_normalize``). ``d`` reverse steps run at
t = start_t + d - 1, ..., start_t starting from x itself, and the squared residual ``(x - x_d)^2``
(averaged over channels) is pooled over the patch or its central k x k window. Higher means more
likely fake. Noise, when a step adds any, is drawn per image from ``fold_in(item_key(key, i), t)``
(:mod:`btd_jax.keys`), so results do not depend on batching.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from btd_jax import diffusion, keys
from btd_jax.configs import reductions
from btd_jax.scoring.pooling import center_window

__all__ = ["center_window", "reduce_residual", "is_stochastic", "reverse_step", "reverse", "squared_residual"]

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]  # (x (N,H,W,C), t (N,)) -> model output


def reduce_residual(maps: jax.Array, center: Optional[int] = None, reduction: str = "mean") -> jax.Array:
    """(N, H, W) squared residuals -> (N,) scores over the (central k x k) window.

    Args:
      maps: (N, H, W) float array of per-pixel squared residuals.
      center: k of the central window, or None for the whole patch.
      reduction: a name of :mod:`btd_jax.configs.reductions` ('mean', the paper).
    """
    flat = center_window(maps, center).reshape(maps.shape[0], -1)
    return reductions.apply(flat, reduction, jnp)


def is_stochastic(steps: int, start_t: int, sampler: str = "ddpm", eta: float = 0.0) -> bool:
    """Whether any of the reverse steps adds noise (and so needs a key): DDPM below t = 0, DDIM with eta > 0."""
    last_t = start_t + steps - 1
    return last_t > 0 and (sampler == "ddpm" or eta > 0)


def reverse_step(sched: diffusion.Schedule, model_fn: ModelFn, x: jax.Array, t, key, *, sampler: str = "ddpm",
                 eta: float = 0.0, clip_denoised: bool = True) -> jax.Array:
    """One reverse step t -> t-1: lucidrains ``p_sample``, or a unit-stride DDIM step (x_start at t = 0).

    ``key`` is None on the deterministic path (t = 0 for DDPM, eta = 0 for DDIM)."""
    if sampler == "ddpm":
        return diffusion.p_sample(sched, model_fn, x, t, key, clip_denoised=clip_denoised)[0]
    return diffusion.ddim_step(sched, model_fn, x, t, t - 1, key, eta=eta, clip_denoised=clip_denoised)[0]


def reverse(sched: diffusion.Schedule, model_fn: ModelFn, x: jax.Array, idx: jax.Array, key, *, steps: int = 1,
            start_t: int = 0, sampler: str = "ddpm", eta: float = 0.0, clip_denoised: bool = True) -> jax.Array:
    """x (N, H, W, C) -> x_d after ``steps`` reverse steps from t = start_t + steps - 1 down to start_t.

    ``idx`` (N,) are the images' global indices: image i's noise at step t is drawn from
    ``fold_in(item_key(key, idx[i]), t)``, independent of batch composition. ``key`` is unused (may
    be None) when :func:`is_stochastic` is False.
    """
    opts = dict(sampler=sampler, eta=eta, clip_denoised=clip_denoised)
    if is_stochastic(steps, start_t, sampler, eta):
        img_keys = keys.item_keys(key, idx)

        def step(x, t):
            def single(xi, ki):
                return reverse_step(sched, model_fn, xi[None], t, jax.random.fold_in(ki, t), **opts)[0]
            return jax.vmap(single)(x, img_keys)
    else:
        def step(x, t):
            return reverse_step(sched, model_fn, x, t, None, **opts)

    if steps == 1:
        return step(x, start_t)  # static t: p_sample can drop the noise branch at trace time
    ts = jnp.arange(start_t + steps - 1, start_t - 1, -1, dtype=jnp.int32)
    x_d, _ = jax.lax.scan(lambda c, t: (step(c, t), None), x, ts)
    return x_d


def squared_residual(x: jax.Array, x_d: jax.Array) -> jax.Array:
    """(N, H, W, C) pair -> (N, H, W) float32 ``(x - x_d)^2`` averaged over channels."""
    return jnp.mean(jnp.square(x.astype(jnp.float32) - x_d.astype(jnp.float32)), axis=-1)

"""Gaussian diffusion maths of lucidrains' ``GaussianDiffusion`` as pure JAX functions.

Semantics follow ``denoising-diffusion-pytorch`` 1.8.3 (the paper's version); 2.3.4 computes the
same schedules, buffers, posterior, loss and sampling steps. Differences between the two, and how
they map here:

* 2.x adds ``immiscible`` noise assignment (a host-side ``linear_sum_assignment``); no config
  exposes it, so it is not implemented.
* 2.x's per-sample reduction (``loss_reduction='none'``) is ``loss(..., reduce=False)``.
* Both default to ``beta_schedule='sigmoid'`` and ``objective='pred_v'`` (the paper passes
  ``pred_noise``; :class:`btd_jax.configs.DiffusionConfig` defaults to that).

Everything is NHWC. ``t`` is an int array of shape ``(N,)`` or a scalar (Python int or traced),
which broadcasts over the batch. The schedule is a :class:`Schedule` pytree, so it can be passed
through ``jax.jit``; ``num_timesteps`` and ``objective`` are static fields.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from btd_jax.configs import T_SAMPLINGS
from btd_jax.schedules import _torch_linspace
# Schedules live in btd_jax.schedules; re-exported here, the module users import.
from btd_jax.schedules import (BETA_SCHEDULES, BUFFER_NAMES, OBJECTIVES, Schedule, beta_schedule,  # noqa: F401
                               cosine_beta_schedule, linear_beta_schedule, make_schedule, schedule_buffers,
                               sigmoid_beta_schedule)

__all__ = [
    "OBJECTIVES", "BETA_SCHEDULES", "T_DISTRIBUTIONS", "BUFFER_NAMES", "Schedule",
    "linear_beta_schedule", "cosine_beta_schedule", "sigmoid_beta_schedule", "beta_schedule",
    "schedule_buffers", "make_schedule", "normalize", "unnormalize", "q_sample",
    "predict_start_from_noise", "predict_noise_from_start", "predict_v", "predict_start_from_v",
    "q_posterior", "model_predictions", "p_mean_variance", "p_sample_from_output", "p_sample",
    "ddim_time_pairs", "ddim_step", "training_target", "loss", "sample_noise",
    "sample_timesteps", "timestep_probs",
]

T_DISTRIBUTIONS = T_SAMPLINGS  # the training timestep laws (configs: train.t_sampling)

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


# ----------------------------------------------------------------------------- helpers

def normalize(x01):
    """[0, 1] -> [-1, 1] (lucidrains ``auto_normalize``)."""
    return x01 * 2 - 1


def unnormalize(x):
    """[-1, 1] -> [0, 1]."""
    return (x + 1) * 0.5


def _check_t(t, num_timesteps: int) -> None:
    """Raises for out-of-range host-side ``t``; device arrays and tracers are left alone (no sync)."""
    if isinstance(t, (int, np.integer, np.ndarray)) and not isinstance(t, bool):
        arr = np.asarray(t)
        if arr.size and (arr.min() < 0 or arr.max() >= num_timesteps):
            raise ValueError(f"t must lie in [0, {num_timesteps}), got values in [{arr.min()}, {arr.max()}]")


def _extract(a: jax.Array, t, ndim: int) -> jax.Array:
    """``a[t]`` shaped to broadcast against an ``ndim`` NHWC array: ``(N, 1, 1, 1)`` or ``()``-like."""
    v = a[jnp.asarray(t, jnp.int32)]
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def _f32(x):
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def q_sample(sched: Schedule, x_start, t, noise) -> jax.Array:
    """x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise. Shapes (N,H,W,C); t (N,) or scalar."""
    _check_t(t, sched.num_timesteps)
    x_start, noise = _f32(x_start), _f32(noise)
    return (_extract(sched.sqrt_alphas_cumprod, t, x_start.ndim) * x_start
            + _extract(sched.sqrt_one_minus_alphas_cumprod, t, x_start.ndim) * noise)


def predict_start_from_noise(sched: Schedule, x_t, t, noise) -> jax.Array:
    x_t = _f32(x_t)
    return (_extract(sched.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t
            - _extract(sched.sqrt_recipm1_alphas_cumprod, t, x_t.ndim) * _f32(noise))


def predict_noise_from_start(sched: Schedule, x_t, t, x0) -> jax.Array:
    x_t = _f32(x_t)
    return ((_extract(sched.sqrt_recip_alphas_cumprod, t, x_t.ndim) * x_t - _f32(x0))
            / _extract(sched.sqrt_recipm1_alphas_cumprod, t, x_t.ndim))


def predict_v(sched: Schedule, x_start, t, noise) -> jax.Array:
    """v = sqrt(abar_t) noise - sqrt(1 - abar_t) x_0 (progressive distillation, appendix D)."""
    x_start = _f32(x_start)
    return (_extract(sched.sqrt_alphas_cumprod, t, x_start.ndim) * _f32(noise)
            - _extract(sched.sqrt_one_minus_alphas_cumprod, t, x_start.ndim) * x_start)


def predict_start_from_v(sched: Schedule, x_t, t, v) -> jax.Array:
    x_t = _f32(x_t)
    return (_extract(sched.sqrt_alphas_cumprod, t, x_t.ndim) * x_t
            - _extract(sched.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * _f32(v))


def q_posterior(sched: Schedule, x_start, x_t, t) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0); the last two are (N,1,1,1)."""
    x_t = _f32(x_t)
    mean = (_extract(sched.posterior_mean_coef1, t, x_t.ndim) * _f32(x_start)
            + _extract(sched.posterior_mean_coef2, t, x_t.ndim) * x_t)
    return (mean, _extract(sched.posterior_variance, t, x_t.ndim),
            _extract(sched.posterior_log_variance_clipped, t, x_t.ndim))


def model_predictions(sched: Schedule, model_out, x_t, t, clip_x_start: bool = False,
                      rederive_pred_noise: bool = False) -> Tuple[jax.Array, jax.Array]:
    """(pred_noise, x_start) from the network output for ``sched.objective``.

    As in lucidrains 1.8.3/2.3.4: for pred_noise the noise is re-derived from the clipped x_start only
    when ``clip_x_start and rederive_pred_noise`` (DDIM does that; ``p_sample`` never clips here);
    for pred_x0 and pred_v it is always derived from the (possibly clipped) x_start.
    """
    _check_t(t, sched.num_timesteps)
    maybe_clip = (lambda x: jnp.clip(x, -1.0, 1.0)) if clip_x_start else (lambda x: x)
    out = _f32(model_out)
    if sched.objective == "pred_noise":
        pred_noise = out
        x_start = maybe_clip(predict_start_from_noise(sched, x_t, t, pred_noise))
        if clip_x_start and rederive_pred_noise:
            pred_noise = predict_noise_from_start(sched, x_t, t, x_start)
    elif sched.objective == "pred_x0":
        x_start = maybe_clip(out)
        pred_noise = predict_noise_from_start(sched, x_t, t, x_start)
    elif sched.objective == "pred_v":
        x_start = maybe_clip(predict_start_from_v(sched, x_t, t, out))
        pred_noise = predict_noise_from_start(sched, x_t, t, x_start)
    else:
        raise ValueError(f"unknown objective {sched.objective!r}; valid objectives are {', '.join(OBJECTIVES)}")
    return pred_noise, x_start


def p_mean_variance(sched: Schedule, model_out, x_t, t, clip_denoised: bool = True):
    """(model_mean, posterior_variance, posterior_log_variance, x_start) of p(x_{t-1} | x_t)."""
    _, x_start = model_predictions(sched, model_out, x_t, t, clip_x_start=False)
    if clip_denoised:
        x_start = jnp.clip(x_start, -1.0, 1.0)
    mean, var, log_var = q_posterior(sched, x_start, x_t, t)
    return mean, var, log_var, x_start


def _time_vector(t, n: int) -> jax.Array:
    return jnp.broadcast_to(jnp.asarray(t, jnp.int32), (n,))


def _is_concrete_zero(t) -> bool:
    return isinstance(t, (int, np.integer, np.ndarray)) and not np.any(np.asarray(t))


def _std_noise(key, noise, x_t, needs_noise: bool, what: str) -> Optional[jax.Array]:
    if noise is not None:
        return _f32(noise)
    if key is None:
        if needs_noise:
            raise ValueError(f"{what} needs a PRNG key (or explicit noise)")
        return None
    return jax.random.normal(key, x_t.shape, x_t.dtype)


def p_sample_from_output(sched: Schedule, model_out, x_t, t, key: Optional[jax.Array],
                         clip_denoised: bool = True, noise=None) -> Tuple[jax.Array, jax.Array]:
    """One DDPM reverse step given the network output at (x_t, t); see :func:`p_sample`."""
    _check_t(t, sched.num_timesteps)
    x_t = _f32(x_t)
    t_vec = _time_vector(t, x_t.shape[0])
    mean, _, log_var, x_start = p_mean_variance(sched, model_out, x_t, t_vec, clip_denoised)
    noise = _std_noise(key, noise, x_t, not _is_concrete_zero(t), "p_sample with t > 0 (or traced t)")
    if noise is None:
        return mean, x_start
    # t may be traced (inside fori_loop/scan): gate the noise with where, per sample.
    nonzero = (t_vec > 0).reshape((-1,) + (1,) * (x_t.ndim - 1))
    return mean + jnp.where(nonzero, jnp.exp(0.5 * log_var) * noise, 0.0), x_start


def p_sample(sched: Schedule, model_fn: ModelFn, x_t, t, key: Optional[jax.Array],
             clip_denoised: bool = True, noise=None) -> Tuple[jax.Array, jax.Array]:
    """lucidrains ``p_sample``: x_{t-1} = posterior mean + exp(0.5 log_var) z, z only where t > 0.

    Args:
      sched: the schedule's buffers.
      model_fn: ``model_fn(x (N,H,W,C), t (N,) int32) -> model output``.
      x_t: (N, H, W, C).
      t: Python int, traced scalar, or (N,) ints.
      key: PRNG key; may be None when t is a concrete 0 (the step is then deterministic).
      noise: optional standard normal (N,H,W,C) used instead of drawing from ``key`` (common random
        numbers, parity tests).
    Returns:
      (x_prev, x_start), both (N, H, W, C) float32. At t = 0 the posterior coefficients are 1 and 0,
      so x_prev is the (clipped) x_0 prediction.
    """
    _check_t(t, sched.num_timesteps)
    model_out = model_fn(x_t, _time_vector(t, x_t.shape[0]))
    return p_sample_from_output(sched, model_out, x_t, t, key, clip_denoised, noise)


def ddim_time_pairs(num_timesteps: int, sampling_timesteps: int) -> np.ndarray:
    """lucidrains' DDIM (t, t_next) pairs, int32 ``(sampling_timesteps, 2)``; the last t_next is -1."""
    if not 1 <= sampling_timesteps <= num_timesteps:
        raise ValueError(f"sampling_timesteps must be in [1, {num_timesteps}], got {sampling_timesteps}")
    # torch.linspace in float32 (default dtype), then .int() truncation toward zero.
    times = _torch_linspace(-1, num_timesteps - 1, sampling_timesteps + 1, np.float32)
    times = np.trunc(times).astype(np.int32)[::-1]
    return np.stack([times[:-1], times[1:]], axis=1)


def ddim_step(sched: Schedule, model_fn: ModelFn, x_t, t, t_prev, key: Optional[jax.Array],
              eta: float = 0.0, clip_denoised: bool = True, noise=None) -> Tuple[jax.Array, jax.Array]:
    """One step of lucidrains ``ddim_sample`` from t to t_prev (t_prev < 0: return x_start).

    Uses ``model_predictions(clip_x_start=clip_denoised, rederive_pred_noise=True)`` as the reference.
    t, t_prev: Python ints, traced scalars or (N,) arrays. ``key`` may be None when eta = 0 (the
    reference still draws noise but multiplies it by sigma = 0); ``noise`` replaces the draw.
    """
    _check_t(t, sched.num_timesteps)
    x_t = _f32(x_t)
    n, nd = x_t.shape[0], x_t.ndim
    t_vec = _time_vector(t, n)
    pred_noise, x_start = model_predictions(sched, model_fn(x_t, t_vec), x_t, t_vec,
                                            clip_x_start=clip_denoised, rederive_pred_noise=True)
    t_next = _time_vector(t_prev, n)
    alpha = _extract(sched.alphas_cumprod, t_vec, nd)
    alpha_next = _extract(sched.alphas_cumprod, jnp.maximum(t_next, 0), nd)
    sigma = eta * jnp.sqrt((1 - alpha / alpha_next) * (1 - alpha_next) / (1 - alpha))
    c = jnp.sqrt(1 - alpha_next - sigma ** 2)
    needs_noise = not (isinstance(eta, (int, float)) and eta == 0) and not (
        isinstance(t_prev, (int, np.integer, np.ndarray)) and np.all(np.asarray(t_prev) < 0))
    noise = _std_noise(key, noise, x_t, needs_noise, "ddim_step with eta > 0")
    if noise is None:
        noise = jnp.zeros_like(x_t)
    img = x_start * jnp.sqrt(alpha_next) + c * pred_noise + sigma * noise
    return jnp.where((t_next < 0).reshape((-1,) + (1,) * (nd - 1)), x_start, img), x_start


# ----------------------------------------------------------------------------- training

def sample_noise(key: jax.Array, shape: Tuple[int, ...], offset_noise_strength: float = 0.0,
                 dtype=jnp.float32) -> jax.Array:
    """Training noise (N,H,W,C): N(0, I), plus ``strength * N(0, 1)`` per (sample, channel) if strength > 0.

    The offset term (crosslabs' offset noise, lucidrains ``offset_noise_strength``) is constant over
    H and W. It is part of the noise that pred_noise learns and that :func:`q_sample` adds.
    """
    if not offset_noise_strength:
        return jax.random.normal(key, shape, dtype)
    k_noise, k_offset = jax.random.split(key)
    offset = jax.random.normal(k_offset, (shape[0],) + (1,) * (len(shape) - 2) + (shape[-1],), dtype)
    return jax.random.normal(k_noise, shape, dtype) + offset_noise_strength * offset


def training_target(sched: Schedule, x_start, t, noise) -> jax.Array:
    """What the network regresses: noise (pred_noise), x_0 (pred_x0) or v (pred_v)."""
    if sched.objective == "pred_noise":
        return _f32(noise)
    if sched.objective == "pred_x0":
        return _f32(x_start)
    if sched.objective == "pred_v":
        return predict_v(sched, x_start, t, noise)
    raise ValueError(f"unknown objective {sched.objective!r}; valid objectives are {', '.join(OBJECTIVES)}")


def loss(sched: Schedule, model_out, x_start, t, noise, reduce: bool = True) -> jax.Array:
    """lucidrains ``p_losses``: mean over non-batch axes of (out - target)^2, times ``loss_weight[t]``.

    ``model_out`` is the network applied to ``q_sample(sched, x_start, t, noise)`` by the caller.
    Returns the batch mean, or the per-sample ``(N,)`` losses with ``reduce=False``.
    """
    _check_t(t, sched.num_timesteps)
    target = training_target(sched, x_start, t, noise)
    err = jnp.square(_f32(model_out) - target)
    per_sample = jnp.mean(err.reshape(err.shape[0], -1), axis=1)
    per_sample = per_sample * jnp.broadcast_to(sched.loss_weight[jnp.asarray(t, jnp.int32)], per_sample.shape)
    return jnp.mean(per_sample) if reduce else per_sample


def _check_dist(dist: str, num_timesteps: int, t_max: int) -> int:
    if dist not in T_DISTRIBUTIONS:
        raise ValueError(f"unknown timestep distribution {dist!r}; valid ones are {', '.join(T_DISTRIBUTIONS)}")
    if int(num_timesteps) < 1 or int(t_max) < 1:
        raise ValueError(f"num_timesteps and t_max must be >= 1, got {num_timesteps} and {t_max}")
    return min(int(t_max), int(num_timesteps))


def timestep_probs(num_timesteps: int, dist: str = "uniform", t_max: int = 10,
                   uniform_frac: float = 0.25) -> np.ndarray:
    """The training distribution of t as float64 probabilities ``(num_timesteps,)``.

    * ``uniform``: 1/T (the paper, lucidrains ``randint(0, T)``).
    * ``truncated``: uniform on [0, t_max) (t_max capped at T).
    * ``mixture``: ``uniform_frac`` x uniform + (1 - uniform_frac) x truncated, so that larger t,
      needed for scores with d > 1, are still seen.
    * ``lowt``: p(t) proportional to exp(-t / t_max) on [0, T): a truncated geometric law whose mass
      is 63% below t_max and 95% below 3 t_max, yet every t has non-zero probability.
    """
    tm = _check_dist(dist, num_timesteps, t_max)
    T = int(num_timesteps)
    uniform = np.full(T, 1.0 / T)
    trunc = np.where(np.arange(T) < tm, 1.0 / tm, 0.0)
    if dist == "uniform":
        return uniform
    if dist == "truncated":
        return trunc
    if dist == "mixture":
        return uniform_frac * uniform + (1 - uniform_frac) * trunc
    w = np.exp(-np.arange(T) / t_max)
    return w / w.sum()


def sample_timesteps(key: jax.Array, n: int, num_timesteps: int, dist: str = "uniform", t_max: int = 10,
                     uniform_frac: float = 0.25) -> jax.Array:
    """Draws ``n`` training timesteps, int32 ``(n,)``, from :func:`timestep_probs`'s law; jittable.

    ``n``, ``num_timesteps``, ``dist`` and ``t_max`` must be static; ``uniform_frac`` may be traced.
    """
    tm = _check_dist(dist, num_timesteps, t_max)
    T = int(num_timesteps)
    if dist == "uniform":
        return jax.random.randint(key, (n,), 0, T, jnp.int32)
    if dist == "truncated":
        return jax.random.randint(key, (n,), 0, tm, jnp.int32)
    if dist == "mixture":
        k_u, k_t, k_pick = jax.random.split(key, 3)
        pick_uniform = jax.random.bernoulli(k_pick, uniform_frac, (n,))
        return jnp.where(pick_uniform, jax.random.randint(k_u, (n,), 0, T, jnp.int32),
                         jax.random.randint(k_t, (n,), 0, tm, jnp.int32))
    logits = -jnp.arange(T, dtype=jnp.float32) / t_max
    return jax.random.categorical(key, logits, shape=(n,)).astype(jnp.int32)

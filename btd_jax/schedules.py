"""Noise schedules of lucidrains' ``GaussianDiffusion``: betas and every derived buffer, bit-exact.

Computed in float64 and stored float32 like the reference; the sigmoid schedule reproduces torch's
float32 sigmoid rounding and ``linspace`` filling order, without which betas differed by up to 1e-4
relative for non-default ``tau``. :mod:`btd_jax.diffusion` re-exports every name here.
"""

from __future__ import annotations

import inspect
import math
from typing import Dict

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from btd_jax.configs import BETA_SCHEDULES, OBJECTIVES

__all__ = ["OBJECTIVES", "BETA_SCHEDULES", "BUFFER_NAMES", "Schedule", "linear_beta_schedule",
           "cosine_beta_schedule", "sigmoid_beta_schedule", "beta_schedule", "schedule_buffers", "make_schedule"]

BUFFER_NAMES = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
    "posterior_mean_coef1", "posterior_mean_coef2", "loss_weight",
)


def _torch_linspace(start: float, end: float, steps: int, dtype=np.float64) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=dtype)`` as torch's CPU kernel: it fills from both ends."""
    start, end = dtype(start), dtype(end)
    if steps == 1:
        return np.array([start], dtype)
    step = (end - start) / dtype(steps - 1)
    i = np.arange(steps).astype(dtype)
    return np.where(np.arange(steps) < steps // 2, start + step * i, end - step * (dtype(steps - 1) - i)).astype(dtype)


def linear_beta_schedule(timesteps: int) -> np.ndarray:
    """The DDPM schedule, rescaled so that ``timesteps`` steps span the same noise as 1000."""
    scale = 1000 / timesteps
    return _torch_linspace(scale * 0.0001, scale * 0.02, timesteps)


def cosine_beta_schedule(timesteps: int, s: float = 0.008) -> np.ndarray:
    """Nichol & Dhariwal: ``alphas_cumprod(t) = cos((t/T + s)/(1 + s) * pi/2)^2``, betas clipped to 0.999."""
    t = _torch_linspace(0, timesteps, timesteps + 1) / timesteps
    alphas_cumprod = np.cos((t + s) / (1 + s) * math.pi * 0.5) ** 2
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    return np.clip(1 - alphas_cumprod[1:] / alphas_cumprod[:-1], 0, 0.999)


def _torch_sigmoid32(v: float) -> float:
    """torch's float32 sigmoid of a 0-d tensor: float32 exp (correctly rounded), then 1 / (1 + e) in float32.

    Not the correctly rounded sigmoid (which differs by 1 ulp for e.g. 2/0.7); matched on 2000 values.
    """
    e = np.float32(math.exp(-float(np.float32(v))))
    return float(np.float32(1) / (np.float32(1) + e))


def sigmoid_beta_schedule(timesteps: int, start: float = -3, end: float = 3, tau: float = 1,
                          clamp_min: float = 1e-5) -> np.ndarray:
    """Jabri et al. sigmoid schedule (lucidrains' default); ``clamp_min`` is accepted but unused, as there.

    lucidrains computes ``sigmoid(start/tau)`` and ``sigmoid(end/tau)`` from ``torch.tensor(float)``,
    i.e. in float32; we round them the same way so that the buffers match bit for bit.
    """
    del clamp_min
    t = _torch_linspace(0, timesteps, timesteps + 1) / timesteps
    v_start, v_end = _torch_sigmoid32(start / tau), _torch_sigmoid32(end / tau)
    alphas_cumprod = (-1 / (1 + np.exp(-(t * (end - start) + start) / tau)) + v_end) / (v_end - v_start)
    alphas_cumprod = alphas_cumprod / alphas_cumprod[0]
    return np.clip(1 - alphas_cumprod[1:] / alphas_cumprod[:-1], 0, 0.999)


_SCHEDULE_FNS = {"linear": linear_beta_schedule, "cosine": cosine_beta_schedule, "sigmoid": sigmoid_beta_schedule}


def beta_schedule(name: str, timesteps: int, **kwargs) -> np.ndarray:
    """Returns the float64 betas ``(timesteps,)`` of schedule ``name`` (linear, cosine or sigmoid)."""
    if name not in _SCHEDULE_FNS:
        raise ValueError(f"unknown beta schedule {name!r}; valid schedules are {', '.join(BETA_SCHEDULES)}")
    if int(timesteps) < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    fn = _SCHEDULE_FNS[name]
    allowed = [p for p in inspect.signature(fn).parameters if p != "timesteps"]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"{name} beta schedule got unknown arguments {unknown}; it takes {allowed or 'none'}")
    return np.asarray(fn(int(timesteps), **kwargs), np.float64)


def schedule_buffers(betas: np.ndarray, objective: str = "pred_noise", min_snr_loss_weight: bool = False,
                     min_snr_gamma: float = 5.0) -> Dict[str, np.ndarray]:
    """The buffers lucidrains registers, in float64 (before its cast to float32), keyed as there."""
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; valid objectives are {', '.join(OBJECTIVES)}")
    betas = np.asarray(betas, np.float64)
    if betas.ndim != 1 or betas.size == 0:
        raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
    if not np.all((betas > 0) & (betas < 1)):
        # e.g. the linear schedule with fewer than ~21 steps, whose scaled beta_end reaches 1
        raise ValueError(f"betas must lie in (0, 1); got values in [{betas.min():.4g}, {betas.max():.4g}]"
                         f" for {betas.size} timesteps")
    alphas = 1.0 - betas
    ac = np.cumprod(alphas)
    ac_prev = np.concatenate([[1.0], ac[:-1]])
    posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
    snr = ac / (1 - ac)
    clipped_snr = np.minimum(snr, min_snr_gamma) if min_snr_loss_weight else snr.copy()
    loss_weight = {"pred_noise": clipped_snr / snr, "pred_x0": clipped_snr, "pred_v": clipped_snr / (snr + 1)}[objective]
    return {
        "betas": betas,
        "alphas_cumprod": ac,
        "alphas_cumprod_prev": ac_prev,
        "sqrt_alphas_cumprod": np.sqrt(ac),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ac),
        "log_one_minus_alphas_cumprod": np.log(1.0 - ac),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ac),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ac - 1),
        "posterior_variance": posterior_variance,
        # the posterior variance is 0 at t = 0, hence the clamp before the log
        "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
        "posterior_mean_coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
        "loss_weight": loss_weight,
    }


@struct.dataclass
class Schedule:
    """Diffusion buffers, each float32 ``(T,)``; ``num_timesteps`` and ``objective`` are static."""

    betas: jax.Array
    alphas_cumprod: jax.Array
    alphas_cumprod_prev: jax.Array
    sqrt_alphas_cumprod: jax.Array
    sqrt_one_minus_alphas_cumprod: jax.Array
    log_one_minus_alphas_cumprod: jax.Array
    sqrt_recip_alphas_cumprod: jax.Array
    sqrt_recipm1_alphas_cumprod: jax.Array
    posterior_variance: jax.Array
    posterior_log_variance_clipped: jax.Array
    posterior_mean_coef1: jax.Array
    posterior_mean_coef2: jax.Array
    loss_weight: jax.Array
    num_timesteps: int = struct.field(pytree_node=False)
    objective: str = struct.field(pytree_node=False)

    @classmethod
    def from_betas(cls, betas: np.ndarray, objective: str = "pred_noise", min_snr_loss_weight: bool = False,
                   min_snr_gamma: float = 5.0) -> "Schedule":
        """Builds every buffer in float64 from ``betas`` and stores it float32, like lucidrains."""
        bufs = schedule_buffers(betas, objective, min_snr_loss_weight, min_snr_gamma)
        arrays = {k: jnp.asarray(v.astype(np.float32)) for k, v in bufs.items()}
        return cls(**arrays, num_timesteps=int(bufs["betas"].shape[0]), objective=objective)

    def buffers(self) -> Dict[str, np.ndarray]:
        """The buffers as float32 NumPy arrays keyed like lucidrains' state dict."""
        return {k: np.asarray(getattr(self, k)) for k in BUFFER_NAMES}


def make_schedule(cfg) -> Schedule:
    """Schedule of a :class:`btd_jax.configs.DiffusionConfig` (beta schedule, kwargs, objective, min-SNR)."""
    betas = beta_schedule(cfg.beta_schedule, cfg.timesteps, **dict(cfg.schedule_kwargs))
    return Schedule.from_betas(betas, cfg.objective, cfg.min_snr_loss_weight, cfg.min_snr_gamma)

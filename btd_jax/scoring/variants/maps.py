"""Residual maps the variants pool: one start time, or the average over several (NumPy on the host).

Energies are in the model's units, like ``Scorer.residual_map``. ``model`` is anything with
``residual_map`` (a ``Scorer``), or params together with their ``cfg``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

import numpy as np

from btd_jax import keys
from btd_jax.configs import ScoreConfig
from btd_jax.scoring import pooling
from btd_jax.scoring.interfaces import ResidualModel
from btd_jax.scoring.stream import ModelStream

__all__ = ["DEFAULT_START_TS", "as_model", "map_options", "pool_maps", "average_maps", "multi_t_maps",
           "energy_maps"]

DEFAULT_START_TS: Tuple[int, ...] = (0, 1, 2, 3)
# ScoreConfig fields that residual_map takes (the pooling ones, center and reduction, are applied after).
_MAP_FIELDS = ("sampler", "clip_denoised", "clip_inputs", "micro_batch")


def as_model(model: Any, cfg=None) -> ResidualModel:
    """A residual model from a Scorer (or anything with ``residual_map``), or from params and cfg."""
    if cfg is not None:
        return ModelStream(model, cfg)
    if not hasattr(model, "residual_map"):
        raise ValueError("pass a Scorer (or anything with residual_map), or params together with cfg")
    return model


def map_options(settings: ScoreConfig) -> dict:
    """The ``residual_map`` keywords of ``settings`` beyond steps/start_t/batch_size."""
    return {k: getattr(settings, k) for k in _MAP_FIELDS}


def pool_maps(maps: np.ndarray, center: Optional[int] = None, pool: str = "mean") -> np.ndarray:
    """(N, H, W) squared residuals -> (N,) float64 pooled energies over the central ``center`` window.

    ``pool`` is a name of :mod:`btd_jax.configs.reductions`, applied as on device, but on the host so
    that one set of maps can be pooled many ways.
    """
    return pooling.pool_window(np.asarray(maps, np.float64), center, pool)


def average_maps(maps_by_t: Sequence[np.ndarray], weights: Optional[Sequence[float]] = None) -> np.ndarray:
    """Weighted mean of K residual maps (each (N, H, W)) -> (N, H, W); equal weights by default."""
    if len(maps_by_t) == 0:
        raise ValueError("need at least one residual map to average")
    stack = np.stack([np.asarray(m, np.float64) for m in maps_by_t])
    w = np.ones(len(maps_by_t)) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (len(maps_by_t),) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be {len(maps_by_t)} non-negative numbers with a positive sum, got {weights}")
    return np.tensordot(w / w.sum(), stack, axes=1)


def _check_start_ts(start_ts: Sequence[int], steps: int, timesteps: Optional[int]) -> Tuple[int, ...]:
    ts = tuple(int(t) for t in start_ts)
    if not ts or len(set(ts)) != len(ts):
        raise ValueError(f"start_ts must be distinct start times, got {tuple(start_ts)}")
    if min(ts) < 0 or (timesteps is not None and max(ts) + steps > timesteps):
        raise ValueError(f"start_ts must lie in [0, {timesteps - steps}] for steps={steps}, got {ts}")
    return ts


def multi_t_maps(model, images, cfg=None, start_ts: Sequence[int] = DEFAULT_START_TS, key=None, steps: int = 1,
                 weights: Optional[Sequence[float]] = None, batch_size: int = 256, **kw) -> np.ndarray:
    """Residual maps averaged over start times -> (N, H, W) float64.

    Args:
      model: a Scorer (anything with ``residual_map``), or params (then pass ``cfg``).
      images: (N, H, W) or (N, H, W, C) patches in [0, 1].
      start_ts: the start times t0; from each, ``steps`` reverse steps t0 + steps - 1 ... t0.
      key: PRNG key, needed when any step adds noise (any t0 + steps > 1); start time t0 uses
        ``item_key(key, t0)`` so that adding a start time leaves the others' noise unchanged.
      weights: optional per-start-time weights (default equal).
      kw: passed to ``residual_map`` (``sampler``, ``clip_denoised``, ``clip_inputs``, ``progress``).
    """
    scorer = as_model(model, cfg)
    timesteps = getattr(getattr(scorer, "cfg", None), "diffusion", None)
    ts = _check_start_ts(start_ts, steps, None if timesteps is None else timesteps.timesteps)
    if key is None and max(ts) + steps > 1:
        raise ValueError(f"start times {ts} with steps={steps} add noise: pass key=jax.random.key(seed)")
    progress = kw.pop("progress", None)
    if progress is not None:  # one pass per start time: report each patch once in total
        kw["progress"] = lambda n: progress(n / len(ts))
    maps = [scorer.residual_map(images, steps=steps, start_t=t, batch_size=batch_size,
                                key=None if key is None else keys.item_key(key, t), **kw) for t in ts]
    return average_maps(maps, weights)


def energy_maps(model, images, cfg=None, base: str = "btd", start_ts: Sequence[int] = DEFAULT_START_TS,
                key=None, steps: int = 1, start_t: int = 0, batch_size: int = 256, **kw) -> np.ndarray:
    """The (N, H, W) float64 maps a score pools: one start time ``start_t`` (``base='btd'``) or the
    average over ``start_ts`` (``base='multi_t'``)."""
    if base == "btd":
        return np.asarray(as_model(model, cfg).residual_map(images, steps=steps, start_t=start_t, key=key,
                                                            batch_size=batch_size, **kw), np.float64)
    if base == "multi_t":
        return multi_t_maps(model, images, cfg, start_ts, key=key, steps=steps, batch_size=batch_size, **kw)
    raise ValueError(f"unknown residual base {base!r}; use 'btd' or 'multi_t'")

"""Score variants beside the paper's BTD score: pooling, multi-start-time and two-sided scores.

The paper scores a patch by the mean squared residual ``(x - x_1)^2`` of one reverse step at t = 0.
Three variants, all built on residual maps (anything with ``residual_map``, e.g. a ``Scorer``):

* **pooling** -- ``pool='max'`` or ``'percentile:Q'`` instead of the mean over the (central) window:
  a small tampered region inside a real patch moves the top of the residual distribution long before
  it moves its mean.
* **multi_t** -- the residual map averaged over several small start times ``start_ts`` (one reverse
  step from each; t > 0 adds the posterior noise, so a key is needed). The t = 0 step alone sees only
  the finest noise scale; a few more give a less noisy, multi-scale estimate of "how far from the
  manifold of real patches" the patch is.
* **two_sided** -- ``|log E - mu| / sigma``, where ``E`` is the pooled residual energy (any of the
  above) and ``(mu, sigma)`` the mean and standard deviation of ``log E`` over *real* validation
  patches (:func:`fit_reference`). BTD is one-sided: a patch whose native scanner noise was removed
  (in-painted, denoised, generated smooth) has an unusually *small* residual and looks more real than
  real. The two-sided score flags both tails.

Energies are in the model's units, like ``Scorer.residual_map``. A fitted :class:`Reference` is only
valid for the model and the scoring settings it was fitted with; they are stored with it (a
ScoreConfig dict, as in ``calibration.json``; JSON ``score_reference.json`` beside the checkpoints)::

    maps = multi_t_maps(scorer, val_real, start_ts=(0, 1, 2), key=jax.random.key(0))
    ref = fit_reference(pool_maps(maps, center=16), base="multi_t", start_ts=(0, 1, 2), center=16)
    ref.save(workdir)
    s = variant_scores(scorer, test, variant="two_sided", reference=ref, key=jax.random.key(0))
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from btd_jax import keys
from btd_jax.configs import ScoreConfig
from btd_jax.data.errors import DataError
from btd_jax.runtime.atomic import write_json
from btd_jax.scoring import pooling
from btd_jax.scoring.interfaces import ResidualModel
from btd_jax.scoring.stream import SCORE_FIELDS, ModelStream

__all__ = [
    "VARIANTS", "REFERENCE_FILE", "pool_maps", "average_maps", "multi_t_maps", "energy_maps",
    "Reference", "fit_reference", "two_sided", "variant_scores", "scorer_scores", "fit_scorer_reference",
]

VARIANTS = ("btd", "multi_t", "two_sided")
REFERENCE_FILE = "score_reference.json"
DEFAULT_START_TS: Tuple[int, ...] = (0, 1, 2, 3)


# ----------------------------------------------------------------------------- pure maths (NumPy)

def pool_maps(maps: np.ndarray, center: Optional[int] = None, pool: str = "mean") -> np.ndarray:
    """(N, H, W) squared residuals -> (N,) float64 pooled energies over the central ``center`` window.

    ``pool`` is 'mean' (the paper), 'max' or 'percentile:Q' (linear interpolation, as ``np.percentile``),
    the same grammar and window as ``reduce_residual``, on the host so that one set of maps can be
    pooled many ways.
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


# ----------------------------------------------------------------------------- residual maps (model)

def _as_model(model, cfg=None) -> ResidualModel:
    """A residual model from a Scorer (or anything with ``residual_map``), or from params and cfg."""
    if cfg is not None:
        return ModelStream(model, cfg)
    if not hasattr(model, "residual_map"):
        raise ValueError("pass a Scorer (or anything with residual_map), or params together with cfg")
    return model


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
    scorer = _as_model(model, cfg)
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
        return np.asarray(_as_model(model, cfg).residual_map(images, steps=steps, start_t=start_t, key=key,
                                                             batch_size=batch_size, **kw), np.float64)
    if base == "multi_t":
        return multi_t_maps(model, images, cfg, start_ts, key=key, steps=steps, batch_size=batch_size, **kw)
    raise ValueError(f"unknown residual base {base!r}; use 'btd' or 'multi_t'")


# ----------------------------------------------------------------------------- two-sided reference

@dataclasses.dataclass(frozen=True)
class Reference:
    """Statistics of ``log(E + eps)`` over real validation patches, plus how E was computed.

    Attributes:
      mean, std: of log energies (std with ddof = 1, floored at ``min_std``).
      n: number of real patches. eps: added before the log (E can be exactly 0 when clipped).
      score: the scoring settings E was made with (ScoreConfig field names: center, reduction, steps,
        start_t, ...); :func:`variant_scores` reuses them so that test energies match the reference.
      base: 'btd' (one start time) or 'multi_t' (maps averaged over ``start_ts``).
    """

    mean: float
    std: float
    n: int
    eps: float = 1e-12
    score: Dict[str, Any] = dataclasses.field(default_factory=dict)
    base: str = "btd"
    start_ts: Optional[Tuple[int, ...]] = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["start_ts"] = None if self.start_ts is None else list(self.start_ts)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Reference":
        try:
            score, base, start_ts = dict(d.get("score", {})), d.get("base", "btd"), d.get("start_ts")
            if "settings" in d:  # older files: one 'settings' dict with 'pool' for the reduction
                score, base, start_ts = _split_settings(dict(d["settings"]))
            ref = cls(mean=float(d["mean"]), std=float(d["std"]), n=int(d["n"]), eps=float(d.get("eps", 1e-12)),
                      score=score, base=str(base), start_ts=None if start_ts is None else tuple(int(t) for t in start_ts))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"score reference: malformed ({e!r}); expected keys mean, std, n") from None
        if not (math.isfinite(ref.mean) and math.isfinite(ref.std) and ref.std > 0):
            raise DataError(f"score reference: needs finite mean and positive std, got {ref.mean}, {ref.std}")
        return ref

    def save(self, path: str) -> str:
        """Writes JSON to ``path`` (a file, or a directory: ``path/score_reference.json``); returns the file."""
        if os.path.isdir(path):
            path = os.path.join(path, REFERENCE_FILE)
        return write_json(path, self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def load(cls, path: str) -> "Reference":
        if os.path.isdir(path):
            path = os.path.join(path, REFERENCE_FILE)
        if not os.path.isfile(path):
            raise DataError(f"{path}: no score reference (fit one with variants.fit_reference on real patches)")
        try:
            with open(path) as f:
                d = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d)


def _split_settings(settings: Dict[str, Any]):
    """Keyword settings -> (ScoreConfig dict, base, start_ts); ``pool`` is the old name of ``reduction``."""
    base, start_ts = settings.pop("base", "btd"), settings.pop("start_ts", None)
    if "pool" in settings:
        settings["reduction"] = settings.pop("pool")
    unknown = sorted(set(settings) - set(SCORE_FIELDS))
    if unknown:
        raise ValueError(f"unknown reference setting(s) {unknown}")
    return settings, base, start_ts


def fit_reference(real_energies, eps: float = 1e-12, min_std: float = 1e-6, **settings) -> Reference:
    """Fits a :class:`Reference` to pooled residual energies ``(N,)`` of real validation patches.

    ``settings``: ``base``, ``start_ts`` and the ScoreConfig fields the energies were made with (e.g.
    ``center=16, reduction='mean'``; ``pool`` is accepted for ``reduction``); they are stored with it.
    """
    e = np.asarray(real_energies, np.float64).reshape(-1)
    if e.size < 2:
        raise DataError(f"real energies: need at least 2 real validation patches, got {e.size}")
    bad = ~np.isfinite(e) | (e < 0)
    if bad.any():
        raise DataError(f"real energies: item {int(np.argmax(bad))} is negative, NaN or inf")
    log_e = np.log(e + eps)
    score, base, start_ts = _split_settings(dict(settings))
    return Reference(mean=float(log_e.mean()), std=float(max(log_e.std(ddof=1), min_std)), n=int(e.size),
                     eps=float(eps), score=score, base=str(base),
                     start_ts=None if start_ts is None else tuple(int(t) for t in start_ts))


def two_sided(energies, ref: Reference) -> np.ndarray:
    """``|log(E + eps) - mean| / std`` for pooled energies ``(N,)`` -> (N,) float64; high = unlike real.

    Too-large energies (the paper's fakes) and too-small ones (noise removed) both score high.
    """
    e = np.asarray(energies, np.float64)
    return np.abs(np.log(np.maximum(e, 0.0) + ref.eps) - ref.mean) / ref.std


# ----------------------------------------------------------------------------- one entry point

def variant_scores(model, images, cfg=None, variant: str = "btd", pool: str = "mean", center: Optional[int] = None,
                   start_ts: Optional[Sequence[int]] = None, reference: Optional[Reference] = None, key=None,
                   steps: int = 1, start_t: int = 0, batch_size: int = 256, **kw) -> np.ndarray:
    """(N,) scores of ``images`` for one variant; higher = more likely fake.

    * ``btd``: the paper's residual at ``start_t`` pooled by ``pool`` over ``center``.
    * ``multi_t``: the map averaged over ``start_ts`` (default (0, 1, 2, 3)), then pooled.
    * ``two_sided``: needs ``reference``; its stored settings (base, start_ts and the scoring
      settings) override the arguments, so test energies are computed exactly like the reference's.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown score variant {variant!r}; valid ones are {', '.join(VARIANTS)}")
    base = variant
    if variant == "two_sided":
        if reference is None:
            raise ValueError("variant 'two_sided' needs a reference fitted on real patches (fit_reference)")
        s = reference.score
        base, pool, center = reference.base, s.get("reduction", pool), s.get("center", center)
        steps, start_t = int(s.get("steps", steps)), int(s.get("start_t", start_t))
        start_ts = reference.start_ts or start_ts
        kw.update({k: s[k] for k in ("sampler", "clip_denoised") if k in s})
    maps = energy_maps(model, images, cfg, base, start_ts or DEFAULT_START_TS, key, steps, start_t, batch_size, **kw)
    energies = pool_maps(maps, center, pool)
    return two_sided(energies, reference) if variant == "two_sided" else energies


# ----------------------------------------------------------------------------- Scorer / CLI glue

def _load_reference(reference, scorer) -> Reference:
    if isinstance(reference, Reference):
        return reference
    if reference is None:
        if getattr(scorer, "workdir", None) is None:
            raise ValueError("variant 'two_sided' needs reference= (a Reference or its JSON path), or a Scorer "
                             "loaded from a workdir holding " + REFERENCE_FILE)
        reference = scorer.workdir
    return Reference.load(str(reference))


def scorer_scores(scorer, images, variant: str, settings: ScoreConfig, key=None,
                  start_ts: Optional[Sequence[int]] = None, reference=None, progress=None) -> np.ndarray:
    """``Scorer.score(..., variant=...)``: :func:`variant_scores` with the Scorer's resolved ``settings``.

    ``reference`` may be a :class:`Reference`, a JSON path, or None (the Scorer's workdir).
    """
    ref = _load_reference(reference, scorer) if variant == "two_sided" else None
    s = settings
    kw = {} if progress is None else {"progress": progress}
    return variant_scores(scorer, images, variant=variant, pool=s.reduction, center=s.center, start_ts=start_ts,
                          reference=ref, key=key, steps=s.steps, start_t=s.start_t, batch_size=s.batch_size,
                          sampler=s.sampler, clip_denoised=s.clip_denoised, clip_inputs=s.clip_inputs,
                          micro_batch=s.micro_batch, **kw).astype(np.float32)


def fit_scorer_reference(scorer, real_images, base: str = "btd", center: Optional[int] = None,
                         pool: str = "mean", start_ts: Optional[Sequence[int]] = None, key=None, steps: int = 1,
                         start_t: int = 0, batch_size: int = 256, **kw) -> Reference:
    """Fits the two-sided :class:`Reference` of ``scorer`` on real validation patches (N, H, W[, C]).

    The energies are made with ``base`` ('btd' at ``start_t``, or 'multi_t' over ``start_ts``),
    ``steps``, ``center``, ``pool`` and ``kw`` (e.g. ``sampler``); these settings are stored with the
    reference (all of the Scorer's ScoreConfig when ``scorer`` has ``settings()``).
    """
    ts = tuple(start_ts or DEFAULT_START_TS)
    maps = energy_maps(scorer, real_images, None, base, ts, key, steps, start_t, batch_size, **kw)
    given = dict(center=center, reduction=pool, steps=int(steps), start_t=int(start_t),
                 **{k: v for k, v in kw.items() if k in SCORE_FIELDS and k not in ScoreConfig.SPEED_FIELDS})
    if hasattr(scorer, "settings"):
        given = scorer.settings(**given).scoring_dict()
    return fit_reference(pool_maps(maps, center, pool), base=base, start_ts=ts if base == "multi_t" else None,
                         **given)

"""``two_sided``: ``|log E - mu| / sigma`` against the log energies of real validation patches.

BTD is one-sided: a patch whose native scanner noise was removed (in-painted, denoised, generated
smooth) has an unusually *small* residual and looks more real than real. ``E`` is the pooled
residual energy (of ``btd`` or ``multi_t``, the reference's ``base``) and ``(mu, sigma)`` the mean
and standard deviation of ``log E`` over real patches (:func:`fit_reference`), so both tails score
high. The reference's stored scoring settings are used to score, so test energies are made exactly
like the reference's::

    ref = fit_reference(pool_maps(real_maps, center=16), center=16)
    s = two_sided(pool_maps(test_maps, center=16), ref)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Optional, Tuple

import numpy as np

from btd_jax.configs import ScoreConfig
from btd_jax.data.errors import DataError
from btd_jax.scoring.stream import SCORE_FIELDS
from btd_jax.scoring.variants import reference as ref_file
from btd_jax.scoring.variants.maps import DEFAULT_START_TS, energy_maps, map_options, pool_maps
from btd_jax.scoring.variants.registry import Call, Variant, register

__all__ = ["Reference", "fit_reference", "two_sided", "score", "fit", "from_maps"]


@dataclasses.dataclass(frozen=True)
class Reference:
    """Statistics of ``log(E + eps)`` over real validation patches, plus how E was computed.

    Attributes:
      mean, std: of log energies (std with ddof = 1, floored at ``min_std``).
      n: number of real patches. eps: added before the log (E can be exactly 0 when clipped).
      score: the scoring settings E was made with (ScoreConfig field names: center, reduction, steps,
        start_t, ...); scoring reuses them so that test energies match the reference.
      base: 'btd' (one start time) or 'multi_t' (maps averaged over ``start_ts``).
      model: fingerprint of the parameters it was fitted with (None: not recorded).
    """

    mean: float
    std: float
    n: int
    eps: float = 1e-12
    score: Dict[str, Any] = dataclasses.field(default_factory=dict)
    base: str = "btd"
    start_ts: Optional[Tuple[int, ...]] = None
    model: Optional[str] = None
    variant = "two_sided"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["start_ts"] = None if self.start_ts is None else list(self.start_ts)
        return dict(d, variant=self.variant)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "Reference":
        try:
            score, base, start_ts = dict(d.get("score", {})), d.get("base", "btd"), d.get("start_ts")
            if "settings" in d:  # older files: one 'settings' dict with 'pool' for the reduction
                score, base, start_ts = _split_settings(dict(d["settings"]))
            ref = cls(mean=float(d["mean"]), std=float(d["std"]), n=int(d["n"]), eps=float(d.get("eps", 1e-12)),
                      score=score, base=str(base), start_ts=None if start_ts is None else tuple(int(t) for t in start_ts),
                      model=d.get("model"))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"score reference: malformed ({e!r}); expected keys mean, std, n") from None
        if not (math.isfinite(ref.mean) and math.isfinite(ref.std) and ref.std > 0):
            raise DataError(f"score reference: needs finite mean and positive std, got {ref.mean}, {ref.std}")
        return ref

    def save(self, path: str) -> str:
        """Writes JSON to ``path`` (a file, or a folder: ``path/score_reference.json``); returns the file."""
        return ref_file.save(self.to_dict(), path)

    @classmethod
    def load(cls, path: str) -> "Reference":
        return ref_file.read(path, {cls.variant: cls.from_dict})


def _split_settings(settings: Dict[str, Any]):
    """Keyword settings -> (ScoreConfig dict, base, start_ts); ``pool`` is the old name of ``reduction``."""
    base, start_ts = settings.pop("base", "btd"), settings.pop("start_ts", None)
    if "pool" in settings:
        settings["reduction"] = settings.pop("pool")
    unknown = sorted(set(settings) - set(SCORE_FIELDS))
    if unknown:
        raise ValueError(f"unknown reference setting(s) {unknown}")
    return settings, base, start_ts


def fit_reference(real_energies, eps: float = 1e-12, min_std: float = 1e-6, model: Optional[str] = None,
                  **settings) -> Reference:
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
                     start_ts=None if start_ts is None else tuple(int(t) for t in start_ts), model=model)


def two_sided(energies, ref: Reference) -> np.ndarray:
    """``|log(E + eps) - mean| / std`` for pooled energies ``(N,)`` -> (N,) float64; high = unlike real."""
    e = np.asarray(energies, np.float64)
    return np.abs(np.log(np.maximum(e, 0.0) + ref.eps) - ref.mean) / ref.std


def _energies(model, images, s: ScoreConfig, base: str, start_ts, call: Call) -> np.ndarray:
    maps = energy_maps(model, images, base=base, start_ts=start_ts or DEFAULT_START_TS, key=call.key,
                       steps=s.steps, start_t=s.start_t, batch_size=s.batch_size, progress=call.progress,
                       **map_options(s))
    return pool_maps(maps, s.center, s.reduction)


def score(model, images, s: ScoreConfig, call: Call) -> np.ndarray:
    """Two-sided scores with the reference's own settings (they override ``s``'s scoring fields)."""
    ref = call.reference
    if ref is None:
        raise ValueError("variant 'two_sided' needs a reference fitted on real patches (fit_reference)")
    used = ref_file.settings_of(ref, s)
    return two_sided(_energies(model, images, used, ref.base, ref.start_ts or call.start_ts, call), ref)


def from_maps(images, maps, s: ScoreConfig, ref: Reference) -> np.ndarray:
    """Windows' residual maps (N, H, W) at the reference's settings -> (N,) two-sided scores ('btd' base)."""
    if ref.base != "btd":
        raise ValueError(f"a two_sided reference over {ref.base!r} energies needs several maps per window; "
                         "screening takes references over 'btd' energies")
    used = ref_file.settings_of(ref, s)
    return two_sided(pool_maps(maps, used.center, used.reduction), ref)


def fit(model, real_images, s: ScoreConfig, call: Call) -> Reference:
    """The reference of real patches; ``call.options['base']``: 'btd' (default) or 'multi_t'."""
    base = call.options.get("base", "btd")
    ts = tuple(call.start_ts or DEFAULT_START_TS)
    energies = _energies(model, real_images, s, base, ts, call)
    return fit_reference(energies, base=base, start_ts=ts if base == "multi_t" else None,
                         model=ref_file.model_fingerprint(model), **s.scoring_dict())


register(Variant("two_sided", "abs(log E - mu) / sigma against real patches: flags too-large and too-small residuals",
                 score, fit=fit, decode=Reference.from_dict, from_maps=from_maps))

"""``Scorer``: a trained model ready to score, on every local device, with its ScoreConfig as defaults.

    scorer = Scorer.load(workdir)                 # config + EMA params, no training stack
    scores = scorer.score(images)                 # (N,) with cfg.score's steps, center, reduction ...
    scores = scorer.score(images, center=32, reduction="percentile:99")
    res = scorer.run(images, maps=True)           # ScoreResult(scores (N,), maps (N, H, W))
    scores, is_fake, p = scorer.decide(images)    # at the threshold of WORKDIR/calibration.json

Every keyword of ``score``/``run``/``residual_map`` overrides one field of ``cfg.score``
(:class:`~btd_jax.configs.ScoreConfig`: steps, center, reduction, clip_denoised, clip_inputs, start_t,
sampler, batch_size, micro_batch), besides ``key`` (noise, needed when a step adds any), ``progress``
(called with the number of patches done), ``index_offset``, and for ``score``/``run`` ``variant``
('btd', 'multi_t', 'two_sided'), ``start_ts`` and ``reference`` (:mod:`btd_jax.scoring.variants`).
Unknown names raise ``TypeError``.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from btd_jax import checkpoints
from btd_jax.calibration import Calibration, score_and_decide
from btd_jax.configs import Config
from btd_jax.data.errors import DataError
from btd_jax.runtime.finite import all_finite, nonfinite_leaves
from btd_jax.scoring import variants
from btd_jax.scoring.interfaces import ResidualModel, ScoreResult
from btd_jax.scoring.stream import ModelStream

__all__ = ["Scorer", "ScoreResult", "ResidualModel", "btd_score", "residual_map"]

_VARIANT_KEYWORDS = ("variant", "start_ts", "reference")


class Scorer(ModelStream):
    """A trained model ready to score: params and schedule replicated once on the local devices.

    ``cfg.score`` holds the defaults of every call; ``workdir`` (set by :meth:`load`) is where
    :meth:`decide` and the two-sided variant look for ``calibration.json`` / ``score_reference.json``.
    """

    def __init__(self, params, cfg: Config, mesh=None):
        super().__init__(params, cfg, mesh)
        if not bool(all_finite(self.params)):  # NaN weights would only ever give NaN scores
            bad = ", ".join(nonfinite_leaves(self.params)[:3])
            raise DataError(f"the model's parameters hold NaN/inf values (in {bad}); refusing to score with them")
        self.workdir: Optional[str] = None

    @classmethod
    def from_params(cls, params, cfg: Config, mesh=None) -> "Scorer":
        return cls(params, cfg, mesh)

    @classmethod
    def load(cls, workdir: str, which: str = "ema", mesh=None, step: Optional[int] = None) -> "Scorer":
        """Restores config + (EMA) params of the latest (or ``step``) checkpoint in ``workdir``."""
        params, cfg = checkpoints.load_params(workdir, which=which, step=step)
        scorer = cls(params, cfg, mesh)
        scorer.workdir = workdir
        return scorer

    def run(self, images, maps: bool = False, **overrides: Any) -> ScoreResult:
        """``ScoreResult(scores (N,) float32, maps (N, H, W) or None)`` in one pass over ``images``."""
        s, kw = self._split(overrides, _VARIANT_KEYWORDS)
        variant = kw.pop("variant", "btd")
        if variant != "btd":
            if maps:
                raise ValueError(f"residual maps are only available with variant 'btd', not {variant!r}")
            kw.pop("index_offset", None)
            return ScoreResult(variants.scorer_scores(self, images, variant, s, **kw), None)
        kw.pop("start_ts", None)
        kw.pop("reference", None)
        return self._stream(images, maps, s, **kw)

    def score(self, images, **overrides: Any) -> np.ndarray:
        """(N,) float32 scores; higher = more likely fake."""
        return self.run(images, maps=False, **overrides).scores

    def decide(self, images, calibration: Optional[Calibration] = None, batch_size: Optional[int] = None,
               key=None):
        """(scores (N,), is_fake (N,) bool, p_values (N,)) at a calibrated threshold.

        ``calibration`` defaults to the ``calibration.json`` that ``btd-jax evaluate --calibrate`` saved
        in the workdir; its scoring settings are used so that the threshold stays valid.
        """
        if calibration is None:
            if self.workdir is None:
                raise ValueError("decide() needs a Calibration, or a Scorer loaded from a calibrated workdir")
            calibration = Calibration.load(self.workdir)
        return score_and_decide(self, images, calibration, batch_size=batch_size, key=key)


def _given(**kw: Any) -> dict:
    return {k: v for k, v in kw.items() if v is not None}


def btd_score(params, images, cfg: Config, steps: int = 1, center: Optional[int] = None, key=None,
              start_t: int = 0, clip_denoised: bool = True, sampler: str = "ddpm",
              batch_size: Optional[int] = None, reduction: Optional[str] = None, mesh=None, micro_batch="auto",
              variant: str = "btd", start_ts=None, reference=None) -> np.ndarray:
    """BTD scores of ``images`` (N,H,W) or (N,H,W,C) in [0, 1] -> np.ndarray (N,) float32.

    ``steps`` = d reverse steps from t = start_t + d - 1 down to start_t; ``center`` = k of the
    central window (None: whole patch); ``reduction`` pools the window ('mean', 'max', 'percentile:Q';
    None: ``cfg.score.reduction``); ``sampler`` 'ddpm' (lucidrains p_sample, the paper) or 'ddim'
    (unit-stride DDIM, eta from ``cfg.diffusion``); ``key`` needed when any step adds noise.
    ``variant`` 'multi_t' (maps averaged over ``start_ts``) or 'two_sided' (needs ``reference``): see
    :mod:`btd_jax.scoring.variants`.
    """
    return Scorer(params, cfg, mesh).score(
        images, steps=steps, center=center, start_t=start_t, clip_denoised=clip_denoised, sampler=sampler,
        micro_batch=micro_batch, variant=variant, **_given(key=key, batch_size=batch_size, reduction=reduction,
                                                           start_ts=start_ts, reference=reference))


def residual_map(params, images, cfg: Config, steps: int = 1, key=None, start_t: int = 0,
                 clip_denoised: bool = True, sampler: str = "ddpm", batch_size: Optional[int] = None,
                 mesh=None, micro_batch="auto") -> np.ndarray:
    """Per-pixel squared residuals (x - x_d)^2 in the model's units, averaged over channels -> (N, H, W)."""
    return ModelStream(params, cfg, mesh).residual_map(
        images, steps=steps, start_t=start_t, clip_denoised=clip_denoised, sampler=sampler, micro_batch=micro_batch,
        **_given(key=key, batch_size=batch_size))

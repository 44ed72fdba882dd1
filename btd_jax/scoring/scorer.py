"""``Scorer``: a trained model ready to score, on every local device, with its ScoreConfig as defaults.

    scorer = Scorer.load(workdir)                 # config + EMA params, no training stack
    scores = scorer.score(images)                 # (N,) with cfg.score's steps, center, reduction ...
    scores = scorer.score(images, center=32, reduction="percentile:99")
    res = scorer.run(images, maps=True)           # ScoreResult(scores (N,), maps (N, H, W))
    scores, is_fake, p = scorer.decide(images)    # at the threshold of WORKDIR/calibration.json

``score`` and ``run`` take every :class:`~btd_jax.configs.ScoreConfig` field as an explicit keyword
(steps, center, reduction, start_t, sampler, clip_denoised, clip_inputs, batch_size, micro_batch;
left out, ``cfg.score``'s value is used), besides ``key`` (noise, needed when a step adds any),
``progress`` (called with the number of patches done), ``index_offset``, ``variant`` (a name of
:mod:`btd_jax.scoring.variants`), ``start_ts`` and ``reference``.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence, Union

import jax
import numpy as np
from jax.typing import ArrayLike

from btd_jax import checkpoints, configs
from btd_jax.calibration import Calibration, score_and_decide
from btd_jax.configs import Config
from btd_jax.data.errors import DataError
from btd_jax.runtime.finite import all_finite, nonfinite_leaves
from btd_jax.scoring import variants
from btd_jax.scoring.interfaces import ResidualModel, ScoreResult
from btd_jax.scoring.stream import ModelStream

__all__ = ["Scorer", "ScoreResult", "ResidualModel", "FROM_CONFIG", "as_scorer", "btd_score", "residual_map"]


class _FromConfig:
    """Marks a keyword left to ``cfg.score`` where None is itself a value (``center=None``: whole patch)."""

    def __repr__(self) -> str:
        return "FROM_CONFIG"


FROM_CONFIG: Any = _FromConfig()


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

    def run(self, images: ArrayLike, maps: bool = False, *, steps: Optional[int] = None,
            center: Union[int, None, _FromConfig] = FROM_CONFIG, reduction: Optional[str] = None,
            start_t: Optional[int] = None, sampler: Optional[str] = None, clip_denoised: Optional[bool] = None,
            clip_inputs: Optional[bool] = None, batch_size: Optional[int] = None,
            micro_batch: Union[int, str, None, _FromConfig] = FROM_CONFIG, key: Optional[jax.Array] = None,
            progress: Optional[Callable[[float], None]] = None, index_offset: int = 0, variant: str = "btd",
            start_ts: Optional[Sequence[int]] = None, reference: Any = None,
            clip: Optional[bool] = None) -> ScoreResult:
        """Scores ``images`` (N, H, W) or (N, H, W, C) in [0, 1] in one pass over the local devices.

        Args:
          images: the patches, of the model's size.
          maps: also return the (N, H, W) squared residual maps (variant 'btd' only).
          steps: reverse steps d. This and the next eight are :class:`~btd_jax.configs.ScoreConfig`
            fields: not given (None, or ``FROM_CONFIG`` for ``center``/``micro_batch``, where None
            means something) they are ``cfg.score``'s.
          center: k of the central k x k window scored; None: the whole patch.
          reduction: a spelling of :mod:`btd_jax.configs.reductions` ('mean', 'max', 'percentile:Q').
          start_t: the last timestep of the reverse steps (the paper: 0).
          sampler: 'ddpm' (lucidrains ``p_sample``) or 'ddim'.
          clip_denoised: clip the x0 prediction to [-1, 1] (lucidrains).
          clip_inputs: clip inputs to [0, 1] instead of refusing them.
          batch_size: patches per device call (speed only).
          micro_batch: rows per U-Net pass on each device ('auto': 1 on CPU, all elsewhere; None: all);
            speed only.
          key: PRNG key, needed when a reverse step adds noise (d > 1 or start_t > 0).
          progress: called with the number of patches done.
          index_offset: global index of ``images[0]`` (noise is drawn per global index).
          variant: a name of :data:`btd_jax.scoring.variants.VARIANTS`.
          start_ts: the start times of variant 'multi_t'.
          reference: a fitted reference, its JSON path, or None for the workdir's (variants that
            need one).
          clip: deprecated name of ``clip_inputs``.
        Returns:
          ``ScoreResult(scores (N,) float32, maps (N, H, W) float32 or None)``; higher = more likely fake.
        """
        given = _given(steps=steps, reduction=reduction, start_t=start_t, sampler=sampler,
                       clip_denoised=clip_denoised, clip_inputs=clip_inputs, batch_size=batch_size, clip=clip)
        given.update({k: v for k, v in (("center", center), ("micro_batch", micro_batch)) if v is not FROM_CONFIG})
        s = self.settings(**given)
        if variant != "btd":
            if maps:
                raise ValueError(f"residual maps are only available with variant 'btd', not {variant!r}")
            return ScoreResult(variants.scorer_scores(self, images, variant, s, key=key, start_ts=start_ts,
                                                      reference=reference, progress=progress), None)
        variants.get(variant)
        return self._stream(images, maps, s, key=key, progress=progress, index_offset=index_offset)

    def score(self, images: ArrayLike, *, steps: Optional[int] = None,
              center: Union[int, None, _FromConfig] = FROM_CONFIG, reduction: Optional[str] = None,
              start_t: Optional[int] = None, sampler: Optional[str] = None, clip_denoised: Optional[bool] = None,
              clip_inputs: Optional[bool] = None, batch_size: Optional[int] = None,
              micro_batch: Union[int, str, None, _FromConfig] = FROM_CONFIG, key: Optional[jax.Array] = None,
              progress: Optional[Callable[[float], None]] = None, index_offset: int = 0, variant: str = "btd",
              start_ts: Optional[Sequence[int]] = None, reference: Any = None,
              clip: Optional[bool] = None) -> np.ndarray:
        """(N,) float32 scores of ``images``, higher = more likely fake; the keywords are :meth:`run`'s."""
        return self.run(images, False, steps=steps, center=center, reduction=reduction, start_t=start_t,
                        sampler=sampler, clip_denoised=clip_denoised, clip_inputs=clip_inputs,
                        batch_size=batch_size, micro_batch=micro_batch, key=key, progress=progress,
                        index_offset=index_offset, variant=variant, start_ts=start_ts, reference=reference,
                        clip=clip).scores

    def reference(self, variant: str, reference: Any = None) -> Any:
        """The fitted reference ``variant`` scores against (None if it needs none): ``reference`` (a
        reference or its JSON path) or the workdir's file; refused when fitted with another model."""
        return variants.resolve_reference(variant, reference, self)

    def decide(self, images, calibration: Optional[Calibration] = None, batch_size: Optional[int] = None,
               key=None):
        """(scores (N,), is_fake (N,) bool, p_values (N,)) at a calibrated threshold.

        ``calibration`` defaults to the ``calibration.json`` that ``btd-jax evaluate --calibrate`` saved
        in the workdir; its scoring settings and variant are used so that the threshold stays valid.
        """
        if calibration is None:
            if self.workdir is None:
                raise ValueError("decide() needs a Calibration, or a Scorer loaded from a calibrated workdir")
            calibration = Calibration.load(self.workdir)
        return score_and_decide(self, images, calibration, batch_size=batch_size, key=key)


def as_scorer(model: Union[Scorer, str, "os.PathLike[str]"], dtype: Optional[str] = None) -> Scorer:
    """:meth:`Scorer.load` of the workdir ``model``, or ``model`` itself (a Scorer, or a stand-in with its
    interface); ``dtype``: compute in this dtype instead of the config's ``model.dtype`` (same weights)."""
    scorer = Scorer.load(os.fspath(model)) if isinstance(model, (str, os.PathLike)) else model
    if dtype and dtype != scorer.cfg.model.dtype:
        workdir = scorer.workdir
        scorer = Scorer.from_params(scorer.params, configs.override(scorer.cfg, {"model.dtype": dtype}))
        scorer.workdir = workdir
    return scorer


def _given(**kw: Any) -> dict:
    return {k: v for k, v in kw.items() if v is not None}


def btd_score(params: Any, images: ArrayLike, cfg: Config, steps: int = 1, center: Optional[int] = None,
              key: Optional[jax.Array] = None, start_t: int = 0, clip_denoised: bool = True, sampler: str = "ddpm",
              batch_size: Optional[int] = None, reduction: Optional[str] = None,
              mesh: Optional[jax.sharding.Mesh] = None, micro_batch: Union[int, str, None] = "auto",
              variant: str = "btd", start_ts: Optional[Sequence[int]] = None, reference: Any = None) -> np.ndarray:
    """BTD scores of ``images`` (N,H,W) or (N,H,W,C) in [0, 1] -> np.ndarray (N,) float32.

    Args:
      params: the U-Net's parameters (``cfg.model``'s shapes).
      images: patches of ``cfg.image_size``.
      cfg: the model's config.
      steps: d reverse steps, from t = start_t + d - 1 down to start_t (the paper: 1).
      center: k of the central window scored (None: the whole patch; the paper: 32 for injection).
      key: PRNG key, needed when any step adds noise.
      clip_denoised: clip the x0 prediction to [-1, 1] (lucidrains).
      sampler: 'ddpm' (lucidrains ``p_sample``, the paper) or 'ddim' (unit-stride, eta from the config).
      batch_size: patches per device call, speed only (None: the config's).
      reduction: a name of :mod:`btd_jax.configs.reductions` (None: ``cfg.score.reduction``).
      mesh: devices to use (default: every local device).
      micro_batch: rows per U-Net pass on each device ('auto': 1 on CPU, all elsewhere; None: all);
        speed only.
      variant: a name of :data:`btd_jax.scoring.variants.VARIANTS` (the paper's: 'btd').
      start_ts: the start times of variant 'multi_t'.
      reference: the fitted reference of a variant that needs one (or its JSON path).

    Returns:
      (N,) float32 scores; higher = more likely fake.
    """
    return Scorer(params, cfg, mesh).score(
        images, steps=steps, center=center, start_t=start_t, clip_denoised=clip_denoised, sampler=sampler,
        micro_batch=micro_batch, variant=variant, key=key, batch_size=batch_size, reduction=reduction,
        start_ts=start_ts, reference=reference)


def residual_map(params: Any, images: ArrayLike, cfg: Config, steps: int = 1, key: Optional[jax.Array] = None,
                 start_t: int = 0, clip_denoised: bool = True, sampler: str = "ddpm",
                 batch_size: Optional[int] = None, mesh: Optional[jax.sharding.Mesh] = None,
                 micro_batch: Union[int, str, None] = "auto") -> np.ndarray:
    """Per-pixel squared residuals (x - x_d)^2 in the model's units, averaged over channels -> (N, H, W)."""
    return ModelStream(params, cfg, mesh).residual_map(
        images, steps=steps, start_t=start_t, clip_denoised=clip_denoised, sampler=sampler, micro_batch=micro_batch,
        **_given(key=key, batch_size=batch_size))

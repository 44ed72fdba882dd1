"""Calibrated decisions from real-only validation scores: a threshold at a target FPR and p-values.

The paper (eq. 3) flags a patch as fake when its score reaches a threshold tau chosen "high enough
such that normal data will likely produce scores less than tau"; its Fig. 4 normalises scores to a
false-positive rate of 0.1. Given BTD scores of *real* validation patches this module fixes tau at a
target FPR and gives each new score a conformal p-value::

    cal = calibration.fit(val_real_scores, target_fpr=0.1, score={"steps": 1, "center": 32})
    cal.save(workdir)                         # -> workdir/calibration.json, beside the checkpoints
    cal = calibration.Calibration.load(workdir)
    is_fake = cal.decide(test_scores)         # score >= threshold
    p = cal.p_values(test_scores)             # small = unlike the real validation scores

A calibration is only valid for the model and the scoring settings it was fitted with; they are
stored with it (``score``: the ScoreConfig fields that decide a score, as in the two-sided score
reference; ``variant``: the score variant, and for one fitted on real patches the identity of its
reference) so that callers score new data the same way::

    cal = calibration.calibrate_scorer(scorer, val_real, variant="oneclass")   # the workdir's reference
    scores, is_fake, p = calibration.score_and_decide(scorer, test, cal)       # refused after a refit

Knows nothing of models: a scorer is anything with ``score(images, **settings)`` (and, for a variant
with a reference, ``reference(variant, reference)`` as :class:`btd_jax.score.Scorer` has).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from btd_jax.configs import ScoreConfig
from btd_jax.data.errors import DataError
from btd_jax.runtime.atomic import write_json
from btd_jax.runtime.files import json_digest, read_json

__all__ = ["Calibration", "fit", "threshold_at_fpr", "p_values", "FILENAME", "calibrate_scorer",
           "score_and_decide", "reference_id"]

FILENAME = "calibration.json"


def _as_scores(x: Any, name: str) -> np.ndarray:
    s = np.asarray(x, dtype=np.float64)
    if s.ndim != 1:
        raise DataError(f"{name}: expected a 1-D array of scores, got shape {s.shape}")
    bad = ~np.isfinite(s)
    if bad.any():
        raise DataError(f"{name}: {int(bad.sum())} score(s) are NaN or infinite (first at item {int(np.argmax(bad))})")
    return s


def threshold_at_fpr(real_scores: Any, target_fpr: float = 0.1) -> Tuple[float, float]:
    """The smallest threshold whose empirical FPR on ``real_scores`` (N,) is at most ``target_fpr``.

    Decisions are ``score >= threshold`` -> fake, so the FPR of a candidate ``t`` is the fraction of
    real scores ``>= t``. Candidates are the observed real scores (ties are handled: a tied block is
    flagged together or not at all) plus one value just above the maximum, used when even flagging
    only the top score would exceed the target (e.g. ``target_fpr < 1 / N``).

    Returns ``(threshold, empirical_fpr)``.
    """
    s = np.sort(_as_scores(real_scores, "real scores"))
    if s.size == 0:
        raise DataError("real scores: empty; calibration needs real validation scores")
    if not 0.0 < target_fpr < 1.0:
        raise ValueError(f"target_fpr must be in (0, 1), got {target_fpr}")
    n = s.size
    fpr = (n - np.searchsorted(s, s, side="left")) / n  # fraction >= each candidate, non-increasing
    ok = np.flatnonzero(fpr <= target_fpr)
    if ok.size:
        return float(s[ok[0]]), float(fpr[ok[0]])
    return float(np.nextafter(s[-1], np.inf)), 0.0


def p_values(real_sorted: np.ndarray, scores: Any) -> np.ndarray:
    """Empirical p-values with +1 smoothing: ``(1 + #{real >= s}) / (N + 1)`` per score, shape (M,).

    ``real_sorted`` (N,) ascending. This is the conformal p-value: for a real sample exchangeable
    with the validation set, ``P(p <= a) <= a``; it never returns 0 (the smallest is 1 / (N + 1)).
    """
    s = _as_scores(scores, "scores")
    n_ge = real_sorted.size - np.searchsorted(real_sorted, s, side="left")
    return (1.0 + n_ge) / (real_sorted.size + 1.0)


def _legacy_score(d: Mapping[str, Any]) -> Dict[str, Any]:
    """The scoring settings of a calibration file written before they were one ``score`` dict."""
    score = {"steps": d.get("steps") or 1, "center": d.get("center")}
    if (d.get("meta") or {}).get("reduction"):
        score["reduction"] = d["meta"]["reduction"]
    return score


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A fitted operating point. ``real_scores`` is kept (sorted, float64) for p-values.

    Fields: ``threshold`` (flag ``score >= threshold``), ``target_fpr``, ``empirical_fpr`` (on the
    validation scores), ``real_scores`` (N,), ``score`` (the scoring settings the scores were
    computed with: ScoreConfig field names such as steps, center, reduction; empty if unknown),
    ``meta`` (free-form, e.g. dataset, config name), ``variant`` (the score variant) and
    ``reference`` (the identity of the variant's fitted reference, :func:`reference_id`; None without one).
    """

    threshold: float
    target_fpr: float
    empirical_fpr: float
    real_scores: np.ndarray
    score: Dict[str, Any] = dataclasses.field(default_factory=dict)
    meta: Dict[str, Any] = dataclasses.field(default_factory=dict)
    variant: str = "btd"
    reference: Optional[str] = None

    @property
    def n(self) -> int:
        return int(self.real_scores.size)

    @property
    def steps(self) -> Optional[int]:
        return self.score.get("steps")

    @property
    def center(self) -> Optional[int]:
        return self.score.get("center")

    @property
    def reduction(self) -> str:
        return self.score.get("reduction", "mean")

    def decide(self, scores: Any) -> np.ndarray:
        """(M,) bool: True = flagged fake (``score >= threshold``)."""
        return _as_scores(scores, "scores") >= self.threshold

    def p_values(self, scores: Any) -> np.ndarray:
        """(M,) float64 empirical p-values in [1/(N+1), 1]; see :func:`p_values`."""
        return p_values(self.real_scores, scores)

    def check_reference(self, ref: Any, where: str = "calibration") -> None:
        """Refuses (DataError) a reference other than the one the calibration's scores were made against."""
        if self.reference is None:
            return
        have = None if ref is None else reference_id(ref)
        if have != self.reference:
            raise DataError(f"{where}: fitted on {self.variant} scores against the reference {self.reference}, but "
                            f"{'no reference' if have is None else f'the reference {have}'} is used now; "
                            "recalibrate after refitting a reference")

    def normalize(self, scores: Any) -> np.ndarray:
        """Scores divided by the threshold (paper Fig. 4): values >= 1 are flagged."""
        if self.threshold <= 0:
            raise ValueError(f"cannot normalise by a non-positive threshold {self.threshold}")
        return _as_scores(scores, "scores") / self.threshold

    def to_dict(self) -> Dict[str, Any]:
        return {"threshold": self.threshold, "target_fpr": self.target_fpr, "empirical_fpr": self.empirical_fpr,
                "n": self.n, "score": dict(self.score), "meta": dict(self.meta), "variant": self.variant,
                "reference": self.reference, "real_scores": [float(v) for v in self.real_scores]}

    @classmethod
    def from_dict(cls, d: Dict[str, Any], source: str = "calibration") -> "Calibration":
        missing = {"threshold", "target_fpr", "real_scores"} - set(d)
        if missing:
            raise DataError(f"{source}: missing key(s) {sorted(missing)}")
        real = np.sort(_as_scores(d["real_scores"], f"{source}: real_scores"))
        if real.size == 0:
            raise DataError(f"{source}: real_scores is empty")
        score = dict(d["score"]) if isinstance(d.get("score"), Mapping) else _legacy_score(d)
        return cls(threshold=float(d["threshold"]), target_fpr=float(d["target_fpr"]),
                   empirical_fpr=float(d.get("empirical_fpr", np.mean(real >= float(d["threshold"])))),
                   real_scores=real, score=score, meta=dict(d.get("meta", {})), variant=str(d.get("variant", "btd")),
                   reference=d.get("reference"))

    def save(self, path: str) -> str:
        """Writes JSON to ``path`` (a file) or ``path/calibration.json`` (a directory, e.g. the workdir)."""
        if os.path.isdir(path):
            path = os.path.join(path, FILENAME)
        return write_json(path, self.to_dict(), indent=1)  # never half-written beside the model

    @classmethod
    def load(cls, path: str) -> "Calibration":
        """Reads a file written by :meth:`save`; ``path`` may be the workdir holding ``calibration.json``.

        A missing file raises :class:`~btd_jax.data.MissingInput` (also a ``FileNotFoundError``)."""
        if os.path.isdir(path):
            path = os.path.join(path, FILENAME)
        d = read_json(path, "calibration", hint="fit one with btd_jax.calibration.fit or btd-jax evaluate --calibrate")
        return cls.from_dict(d, source=path)


def reference_id(ref: Any) -> str:
    """A fitted reference's identity: :func:`~btd_jax.runtime.files.json_digest` of its ``to_dict()``."""
    return json_digest(ref.to_dict())


def fit(real_scores: Any, target_fpr: float = 0.1, steps: Optional[int] = None, center: Optional[int] = None,
        score: Optional[Mapping[str, Any]] = None, reduction: Optional[str] = None, variant: str = "btd",
        reference: Any = None, **meta: Any) -> Calibration:
    """Fits a :class:`Calibration` on scores (N,) of real-only validation patches.

    ``score``: the scoring settings the scores were made with (a ScoreConfig's ``scoring_dict()`` or
    any mapping of its field names). ``steps``, ``center`` and ``reduction`` are shorthands added to
    it; with ``steps`` or ``center`` and no ``score``, both are stored (``center=None``: whole patch).
    ``variant``: the score variant the scores are of; ``reference``: its fitted reference (recorded by
    identity), if it has one.
    """
    real = np.sort(_as_scores(real_scores, "real scores"))
    thr, fpr = threshold_at_fpr(real, target_fpr)
    settings = dict(score or {})
    if score is None and (steps is not None or center is not None):
        settings["center"] = None
    for k, v in (("steps", steps), ("center", center), ("reduction", reduction)):
        if v is not None:
            settings[k] = v
    return Calibration(threshold=thr, target_fpr=float(target_fpr), empirical_fpr=fpr, real_scores=real,
                       score=settings, meta=meta, variant=variant,
                       reference=None if reference is None else reference_id(reference))


def _key_kw(key: Any) -> Dict[str, Any]:
    return {} if key is None else {"key": key}  # d > 1 adds noise: the scorer then needs a key


def _settings_used(scorer: Any, overrides: Mapping[str, Any]) -> Dict[str, Any]:
    """The full scoring settings when the scorer can resolve them (``settings()``), else ``overrides``."""
    resolve = getattr(scorer, "settings", None)
    if resolve is None:
        return dict(overrides)
    return resolve(**overrides).scoring_dict()


def _variant_kw(scorer: Any, variant: str, reference: Any) -> Tuple[Dict[str, Any], Any]:
    """(scoring keywords, resolved reference) of ``variant`` ('btd': none)."""
    if variant == "btd":
        return {}, None
    ref = scorer.reference(variant, reference)
    return {"variant": variant, "reference": ref}, ref


def calibrate_scorer(scorer: Any, real_images: Any, target_fpr: float = 0.1, key: Any = None,
                     meta: Optional[Mapping[str, Any]] = None, variant: str = "btd", reference: Any = None,
                     **settings: Any) -> Calibration:
    """Scores real validation images (N,H,W) in [0,1] with ``scorer.score`` and fits a calibration.

    ``settings`` (e.g. ``steps=1, center=32, reduction='percentile:99', batch_size=64``) are passed
    to the scorer; what it scored with is stored (for a ``Scorer``: its whole ScoreConfig with these
    overrides, except batch_size/micro_batch) and reused by :func:`score_and_decide`. ``meta``:
    free-form facts kept with the calibration (data set, modality, ...). ``variant``: a score variant
    (``reference``: its fitted reference or JSON path; None = the scorer's workdir's file), recorded
    with the reference's identity so that a refitted reference is not used with this threshold.
    """
    vkw, ref = _variant_kw(scorer, variant, reference)
    s = scorer.score(real_images, **_key_kw(key), **vkw, **settings)
    used = {k: v for k, v in _settings_used(scorer, settings).items() if k not in ScoreConfig.SPEED_FIELDS}
    return fit(s, target_fpr=target_fpr, score=used, variant=variant, reference=ref, **dict(meta or {}))


def score_and_decide(scorer: Any, images: Any, cal: Calibration, batch_size: Optional[int] = None, key: Any = None,
                     reference: Any = None):
    """Scores ``images`` with the calibration's own settings and variant; returns (scores, is_fake, p).

    ``scorer`` is anything with ``score(images, **settings[, batch_size=, key=])`` such as
    :class:`btd_jax.score.Scorer`. Use the same ``key`` as for calibration when ``steps > 1``. A
    variant's ``reference`` (default the scorer's workdir's) must be the one calibrated against.
    """
    vkw, ref = _variant_kw(scorer, cal.variant, reference)
    cal.check_reference(ref)
    kw = dict(cal.score, **vkw, **_key_kw(key), **({} if batch_size is None else {"batch_size": batch_size}))
    s = np.asarray(scorer.score(images, **kw))
    return s, cal.decide(s), cal.p_values(s)

"""Detection metrics as the paper reports them: ROC AUC, equal error rate, scanner-balanced bootstrap.

Convention everywhere: ``labels`` are 0 (real) / 1 (fake) and higher ``scores`` mean "more likely
fake"; a sample is flagged fake when ``score >= threshold``.

The paper (section 4, *Metrics*) computes AUC and EER "using bootstrap sampling with 100 iterations,
where in each iteration the number of samples per class were balanced across the scanners", and
reports the mean over iterations. :func:`bootstrap` implements that::

    res = metrics.bootstrap(scores, labels, groups=scanner, n=100, seed=0)
    res["auc_mean"], res["auc_ci"], res["eer_mean"]

This module knows nothing of models; it only needs NumPy and scikit-learn.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

import numpy as np
from sklearn import metrics as _skm

from btd_jax.data.errors import DataError

__all__ = ["parse_labels", "check_inputs", "roc_curve", "auc", "eer", "bootstrap", "balanced_indices"]

_REAL = {"0", "real", "tm", "tb", "genuine", "authentic"}
_FAKE = {"1", "fake", "fm", "fb", "tampered", "deepfake"}


def parse_labels(values: Iterable[Any], source: str = "labels") -> np.ndarray:
    """0/1, bool or the paper's names (real/fake, TM/TB real, FM/FB fake) -> int8 (N,)."""
    arr = np.asarray(values)
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.integer):
        values = arr.astype(np.int64)
    out = []
    for i, v in enumerate(values):
        t = str(v).strip().lower()
        if t in ("1", "1.0", "true") or t in _FAKE:
            out.append(1)
        elif t in ("0", "0.0", "false") or t in _REAL:
            out.append(0)
        else:
            raise DataError(f"{source}: item {i} has label {v!r}; use 0/1, real/fake or TM/TB/FM/FB")
    return np.asarray(out, dtype=np.int8)


def check_inputs(labels: Any, scores: Any, name: str = "scores") -> Tuple[np.ndarray, np.ndarray]:
    """Validates and converts ``labels`` (N,) in {0, 1} and finite ``scores`` (N,).

    Returns ``(labels int8 (N,), scores float64 (N,))``. Raises :class:`DataError` (a ``ValueError``)
    on a length mismatch, a non-1-D input, a label other than 0/1, NaN/inf scores, or when only
    one class is present (AUC and EER are undefined then).
    """
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1:
        raise DataError(f"{name}: labels and scores must be 1-D, got shapes {y.shape} and {s.shape}")
    if y.shape[0] != s.shape[0]:
        raise DataError(f"{name}: length mismatch, {y.shape[0]} labels but {s.shape[0]} scores")
    if y.dtype == bool:
        y = y.astype(np.int8)
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        raise DataError(f"{name}: labels must be 0 (real) or 1 (fake); item {int(np.argmax(bad))} is {y[bad][0]!r}")
    y = y.astype(np.int8)
    nonfinite = ~np.isfinite(s)
    if nonfinite.any():
        raise DataError(f"{name}: {int(nonfinite.sum())} score(s) are NaN or infinite "
                        f"(first at item {int(np.argmax(nonfinite))})")
    n_fake = int(y.sum())
    if n_fake == 0 or n_fake == y.shape[0]:
        which = "real (0)" if n_fake == 0 else "fake (1)"
        raise DataError(f"{name}: only one class present ({y.shape[0]} samples, all {which}); "
                        "AUC and EER need both real and fake samples")
    return y, s


def roc_curve(labels: Any, scores: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The full ROC curve: ``(fpr (K,), tpr (K,), thresholds (K,))``, thresholds decreasing.

    Every distinct score is kept (no dropping of collinear points) so that interpolation between
    neighbours is exact. The first point is (0, 0) with threshold ``+inf`` (nothing flagged).
    """
    y, s = check_inputs(labels, scores)
    fpr, tpr, thr = _skm.roc_curve(y, s, drop_intermediate=False)
    return fpr, tpr, thr


def auc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve (ties count one half, as in scikit-learn's ``roc_auc_score``)."""
    y, s = check_inputs(labels, scores)
    return float(_skm.roc_auc_score(y, s))


def _eer_from_roc(fpr: np.ndarray, tpr: np.ndarray, thr: np.ndarray) -> Tuple[float, float]:
    fnr = 1.0 - tpr
    diff = fpr - fnr  # -1 at the first point (0, 0), +1 at the last (1, 1): it crosses zero once
    i = int(np.argmax(diff >= 0))
    d0, d1 = diff[i - 1], diff[i]
    alpha = 0.0 if d1 == d0 else -d0 / (d1 - d0)  # fraction of the segment i-1 -> i where FPR = FNR
    rate = fpr[i - 1] + alpha * (fpr[i] - fpr[i - 1])
    # The first ROC threshold is +inf ("flag nothing"); use the largest score instead so that the
    # interpolated threshold stays inside the range of observed scores.
    t_prev = thr[i - 1] if np.isfinite(thr[i - 1]) else thr[i]
    threshold = t_prev + alpha * (thr[i] - t_prev)
    return float(rate), float(threshold)


def eer(labels: Any, scores: Any) -> Tuple[float, float]:
    """Equal error rate and its threshold: ``(eer, threshold)``.

    The ROC is walked from (FPR 0, TPR 0) to (1, 1); between the two neighbouring ROC points where
    ``FPR - FNR`` (FNR = 1 - TPR) changes sign, both rates and the threshold are linearly
    interpolated to the point where FPR = FNR. So the EER is the value of both error rates there and
    need not equal any single achievable operating point; the threshold is interpolated the same
    way between the two neighbouring distinct scores (use it as ``score >= threshold`` -> fake).
    """
    y, s = check_inputs(labels, scores)
    fpr, tpr, thr = _skm.roc_curve(y, s, drop_intermediate=False)
    return _eer_from_roc(fpr, tpr, thr)


def _group_plan(labels: np.ndarray, groups: Optional[Any]):
    """Per group: (name, real indices, fake indices, per-class count); plus skipped group names."""
    if groups is None:
        groups = np.zeros(labels.shape[0], dtype=np.int8)
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != labels.shape[0]:
        raise DataError(f"groups: expected shape ({labels.shape[0]},) like labels, got {g.shape}")
    g = g.astype(str) if g.dtype == object else g
    plan, skipped = [], []
    for name in np.unique(g):
        in_g = g == name
        real = np.flatnonzero(in_g & (labels == 0))
        fake = np.flatnonzero(in_g & (labels == 1))
        k = min(real.size, fake.size)
        if k == 0:
            skipped.append((name.item() if hasattr(name, "item") else name, int(real.size), int(fake.size)))
        else:
            plan.append((name.item() if hasattr(name, "item") else name, real, fake, k))
    return plan, skipped


def balanced_indices(plan: Sequence, rng: np.random.Generator) -> np.ndarray:
    """One bootstrap draw: within every group, ``k`` real and ``k`` fake indices with replacement."""
    parts = []
    for _, real, fake, k in plan:
        parts.append(rng.choice(real, size=k, replace=True))
        parts.append(rng.choice(fake, size=k, replace=True))
    return np.concatenate(parts)


def _summary(values: np.ndarray, ci: float) -> Tuple[float, float, Tuple[float, float]]:
    lo, hi = np.percentile(values, [50 * (1 - ci), 50 * (1 + ci)])
    return float(values.mean()), float(values.std(ddof=1) if values.size > 1 else 0.0), (float(lo), float(hi))


def bootstrap(scores: Any, labels: Any, groups: Optional[Any] = None, n: int = 100, seed: int = 0,
              ci: float = 0.95) -> Dict[str, Any]:
    """Scanner-balanced bootstrap of AUC and EER (the paper's section 4 protocol).

    Args:
      scores: (N,) finite scores, higher = more likely fake.
      labels: (N,) 0 real / 1 fake.
      groups: optional (N,) scanner (or any stratum) per sample; ``None`` = one group.
      n: bootstrap iterations (the paper uses 100).
      seed: NumPy ``default_rng`` seed; the same seed gives the same result.
      ci: width of the percentile interval (0.95 -> 2.5th and 97.5th percentiles).

    In every iteration, within every group ``g``, ``k_g`` real and ``k_g`` fake samples are drawn
    with replacement, where ``k_g = min(#real in g, #fake in g)`` -- so each scanner contributes
    equally to both classes and the classes are balanced, while every draw has the same size
    ``2 * sum_g k_g``. A group that has only one class cannot be balanced: it is *skipped* (a
    ``UserWarning`` is issued and the group is listed in ``skipped_groups``); if every group is
    skipped a :class:`DataError` is raised.

    Returns a dict: ``auc_mean``, ``auc_std``, ``auc_ci`` (lo, hi), ``auc_values`` (n,), the same
    four for ``eer``, ``eer_threshold_values`` (n,), ``n``, ``seed``, ``ci``, ``samples_per_draw``,
    ``per_class_per_group`` ({group: k_g}) and ``skipped_groups`` ([(group, #real, #fake)]).
    """
    y, s = check_inputs(labels, scores)
    if int(n) < 1:
        raise ValueError(f"bootstrap: n must be >= 1, got {n}")
    if not 0.0 < ci < 1.0:
        raise ValueError(f"bootstrap: ci must be in (0, 1), got {ci}")
    plan, skipped = _group_plan(y, groups)
    if skipped:
        warnings.warn("bootstrap: skipping group(s) with a single class (cannot balance): "
                      + ", ".join(f"{g!r} ({r} real, {f} fake)" for g, r, f in skipped), UserWarning, stacklevel=2)
    if not plan:
        raise DataError("bootstrap: no group has both real and fake samples; "
                        "AUC/EER cannot be balanced per scanner")
    rng = np.random.default_rng(seed)
    aucs = np.empty(n)
    eers = np.empty(n)
    thrs = np.empty(n)
    for it in range(n):
        idx = balanced_indices(plan, rng)
        yi, si = y[idx], s[idx]
        fpr, tpr, thr = _skm.roc_curve(yi, si, drop_intermediate=False)
        aucs[it] = _skm.auc(fpr, tpr)
        eers[it], thrs[it] = _eer_from_roc(fpr, tpr, thr)
    auc_mean, auc_std, auc_ci = _summary(aucs, ci)
    eer_mean, eer_std, eer_ci = _summary(eers, ci)
    return {
        "auc_mean": auc_mean, "auc_std": auc_std, "auc_ci": auc_ci, "auc_values": aucs,
        "eer_mean": eer_mean, "eer_std": eer_std, "eer_ci": eer_ci, "eer_values": eers,
        "eer_threshold_values": thrs,
        "n": int(n), "seed": int(seed), "ci": float(ci),
        "samples_per_draw": int(2 * sum(k for *_, k in plan)),
        "per_class_per_group": {g: int(k) for g, _, _, k in plan},
        "skipped_groups": skipped,
    }

"""Whole-slice localisation: sliding-window BTD -> suspicion map and top-k suspicious locations.

The paper scores a patch cut around a *known* tumour position. Here every ``P x P`` window of a
slice (``P`` = the model's patch size) on a grid of step ``stride`` is scored by the device-parallel
scorer in one batched call; the per-pixel squared residuals of all windows are averaged where they
overlap into a suspicion map (H, W), and each window also gets the paper's score (mean residual over
the window or its central ``center x center`` part). The top-k windows after non-max suppression are
the suspicious locations, reported by their centres::

    res = localize.localize_slice(scorer, img01, stride=16, center=32, top_k=5)
    res.suspicion          # (H, W) float32
    res.top                # [{"row": r, "col": c, "score": s}, ...], best first
    localize.save_overlay(img01, res, "overlay.png")

The grid always includes the last window flush with the bottom/right edge so every pixel is covered;
slices smaller than ``P`` are zero-padded (bottom/right) and the map cropped back.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from btd_jax import keys
from btd_jax.data import validate
from btd_jax.data.errors import DataError
from btd_jax.plots import save_overlay  # re-exported: localize.save_overlay(img01, res, path)
from btd_jax.scoring.interfaces import ResidualModel
from btd_jax.scoring.pooling import center_window, pool_window

__all__ = ["window_positions", "extract_windows", "aggregate_maps", "window_scores", "nms", "LocalizeResult",
           "localize_slice", "localize_volume", "save_overlay"]


def window_positions(length: int, patch: int, stride: int) -> np.ndarray:
    """Top-left starts along one axis: 0, stride, 2*stride, ... plus ``length - patch`` (the edge)."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    last = max(length - patch, 0)
    pos = np.arange(0, last + 1, stride)
    if pos[-1] != last:
        pos = np.append(pos, last)
    return pos


def extract_windows(img: np.ndarray, patch: int, stride: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W) -> windows (K, P, P), top-left rows (K,), cols (K,) on the stride grid (row-major).

    ``img`` must be at least ``P x P`` (see :func:`localize_slice` for padding).
    """
    view = np.lib.stride_tricks.sliding_window_view(img, (patch, patch))
    rs = window_positions(img.shape[0], patch, stride)
    cs = window_positions(img.shape[1], patch, stride)
    rr, cc = np.meshgrid(rs, cs, indexing="ij")
    rr, cc = rr.ravel(), cc.ravel()
    return np.ascontiguousarray(view[rr, cc]), rr, cc


def _window_mask(patch: int, center: Optional[int]) -> np.ndarray:
    """(P, P) 1 inside the central k x k window (:func:`~btd_jax.scoring.pooling.center_window`), 0 outside."""
    m = np.zeros((patch, patch), np.float32)
    center_window(m, center)[...] = 1
    return m


def aggregate_maps(maps: np.ndarray, rows: np.ndarray, cols: np.ndarray, shape: Tuple[int, int],
                   center: Optional[int] = None) -> np.ndarray:
    """Averages per-window residual maps (K, P, P) at their positions into an (H, W) map.

    With ``center`` only each window's central k x k residuals count (where BTD has context on all
    sides); pixels that no window centre covers fall back to the average over whole windows.
    """
    p = maps.shape[-1]
    mask = _window_mask(p, center)
    acc = np.zeros(shape, np.float64)
    cnt = np.zeros(shape, np.float64)
    full_acc = np.zeros(shape, np.float64) if center is not None else acc
    full_cnt = np.zeros(shape, np.float64) if center is not None else cnt
    for m, r, c in zip(maps, rows, cols):
        acc[r:r + p, c:c + p] += m * mask
        cnt[r:r + p, c:c + p] += mask
        if center is not None:
            full_acc[r:r + p, c:c + p] += m
            full_cnt[r:r + p, c:c + p] += 1
    out = np.where(cnt > 0, acc / np.maximum(cnt, 1), full_acc / np.maximum(full_cnt, 1))
    return out.astype(np.float32)


def window_scores(maps: np.ndarray, center: Optional[int] = None) -> np.ndarray:
    """(K, P, P) -> (K,) mean residual over each window or its central k x k (the paper's BTD score)."""
    return pool_window(maps, center, "mean")


def nms(rows: np.ndarray, cols: np.ndarray, scores: np.ndarray, k: int, radius: float) -> np.ndarray:
    """Greedy non-max suppression: best first, dropping points within ``radius`` (Chebyshev) of a pick.

    Returns up to ``k`` indices into the inputs, in decreasing score order.
    """
    order = np.argsort(-scores, kind="stable")
    keep: List[int] = []
    for i in order:
        if all(max(abs(rows[i] - rows[j]), abs(cols[i] - cols[j])) > radius for j in keep):
            keep.append(int(i))
            if len(keep) == k:
                break
    return np.asarray(keep, dtype=np.int64)


@dataclasses.dataclass
class LocalizeResult:
    """Outcome for one slice. ``rows``/``cols`` are window *centres* in slice pixels."""

    suspicion: np.ndarray  # (H, W) float32 averaged squared residual
    scores: np.ndarray  # (K,) per-window BTD score
    rows: np.ndarray  # (K,) window centre row
    cols: np.ndarray  # (K,) window centre col
    top: List[Dict[str, Any]]  # [{"row", "col", "score"[, "p_value", "flagged"]}], best first
    patch: int
    stride: int
    center: Optional[int]


def _as_slice(img: Any, name: str) -> np.ndarray:
    x = np.asarray(img, dtype=np.float32)
    if x.ndim != 2:
        raise DataError(f"{name}: expected a 2-D slice (H, W), got shape {x.shape}")
    return validate.check_values(x[None], name)[0]


def localize_slice(scorer: ResidualModel, img01: Any, stride: int = 16, center: Optional[int] = None, steps: int = 1,
                   top_k: int = 5, nms_radius: Optional[float] = None, batch_size: int = 256, key: Any = None,
                   patch: Optional[int] = None, calibration: Any = None, name: str = "slice") -> LocalizeResult:
    """Sliding-window BTD over one (H, W) slice in [0, 1].

    Args:
      scorer: anything with ``residual_map(images (K,P,P), steps=, batch_size=[, key=]) -> (K,P,P)``,
        e.g. :class:`btd_jax.score.Scorer` (all local devices).
      stride: grid step in pixels. ``center``: k of the central window for window scores and for the
        map (None: whole window). ``nms_radius``: default ``P // 2``.
      calibration: optional :class:`btd_jax.calibration.Calibration`; adds ``p_value`` and ``flagged``
        to the top-k entries (meaningful when it was fitted with the same ``steps``/``center``).
      patch: window size; default ``scorer.cfg.image_size``.
    """
    x = _as_slice(img01, name)
    p = int(patch or scorer.cfg.image_size)
    if center is not None and not 1 <= center <= p:
        raise ValueError(f"center window {center} must be between 1 and the patch size {p}")
    h, w = x.shape
    padded = np.pad(x, ((0, max(p - h, 0)), (0, max(p - w, 0))))  # zero = air after CT windowing
    windows, r0, c0 = extract_windows(padded, p, stride)
    kw = {} if key is None else {"key": key}
    maps = np.asarray(scorer.residual_map(windows, steps=steps, batch_size=batch_size, **kw), dtype=np.float32)
    suspicion = aggregate_maps(maps, r0, c0, padded.shape, center)[:h, :w]
    scores = window_scores(maps, center)
    rows = np.minimum(r0 + p // 2, h - 1)
    cols = np.minimum(c0 + p // 2, w - 1)
    keep = nms(rows, cols, scores, top_k, p // 2 if nms_radius is None else nms_radius)
    top = [{"row": int(rows[i]), "col": int(cols[i]), "score": float(scores[i])} for i in keep]
    if calibration is not None and top:
        pv = calibration.p_values([t["score"] for t in top])
        for t, v in zip(top, pv):
            t["p_value"], t["flagged"] = float(v), bool(t["score"] >= calibration.threshold)
    return LocalizeResult(suspicion, scores, rows, cols, top, p, int(stride), center)


def localize_volume(scorer: ResidualModel, vol01: Any, top_k: int = 5, key: Any = None, **kw: Any):
    """Each slice of an (S, H, W) volume in turn; returns (per-slice results, global top-k).

    Global entries carry ``slice`` and are the best ``top_k`` of all slices' top-k lists (2-D NMS
    per slice). With ``steps > 1`` slice ``s`` uses ``item_key(key, s)``.
    """
    v = np.asarray(vol01)
    if v.ndim != 3:
        raise DataError(f"volume: expected (S, H, W), got shape {v.shape}")
    results = []
    for s in range(v.shape[0]):
        k = None if key is None else keys.item_key(key, s)
        results.append(localize_slice(scorer, v[s], top_k=top_k, key=k, name=f"slice {s}", **kw))
    flat = [dict(t, slice=s) for s, r in enumerate(results) for t in r.top]
    flat.sort(key=lambda t: -t["score"])
    return results, flat[:top_k]


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
    run = localize.localize("runs/ct", "scan.nii.gz", "out/", stride=16)   # a scan on disk (btd-jax localize)

The grid always includes the last window flush with the bottom/right edge so every pixel is covered;
slices smaller than ``P`` are zero-padded (bottom/right) and the map cropped back.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Dict, List, Optional, Tuple, Union

import jax
import numpy as np

from btd_jax import calibration as calib
from btd_jax import keys
from btd_jax.data import validate
from btd_jax.data.errors import DataError
from btd_jax.data.readers import Format, Volume, read_volume
from btd_jax.plots import save_overlay  # re-exported: localize.save_overlay(img01, res, path)
from btd_jax.runtime.atomic import save_npy, write_json
from btd_jax.runtime.outputs import write_skipped
from btd_jax.scoring.interfaces import ResidualModel
from btd_jax.scoring.pooling import center_window, pool_window
from btd_jax.scoring.scorer import Scorer, as_scorer

__all__ = ["window_positions", "extract_windows", "aggregate_maps", "window_scores", "nms", "LocalizeResult",
           "localize_slice", "localize_volume", "save_overlay", "FILES", "Localized", "localize"]

FILES = ("suspicion.npy", "overlay.png", "localize.json", "skipped.csv")  # what localize writes in its folder


def window_positions(length: int, patch: int, stride: int) -> np.ndarray:
    """Top-left starts along one axis: 0, stride, 2*stride, ... plus ``length - patch`` (the edge)."""
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    last = max(length - patch, 0)
    pos = np.arange(0, last + 1, stride)
    if pos[-1] != last:
        pos = np.append(pos, last)
    return pos


def extract_windows(img: np.ndarray, patch: int, stride: int, starts: Optional[Tuple[np.ndarray, np.ndarray]] = None
                    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(H, W) -> windows (K, P, P), top-left rows (K,), cols (K,) on the stride grid (row-major), or
    on the grid of the given per-axis ``starts`` (rows, cols).

    ``img`` must be at least ``P x P`` (see :func:`localize_slice` for padding).
    """
    view = np.lib.stride_tricks.sliding_window_view(img, (patch, patch))
    rs, cs = starts if starts is not None else (window_positions(n, patch, stride) for n in img.shape)
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



@dataclasses.dataclass
class Localized:
    """What :func:`localize` did: the volume read, the slice indices scored, per-slice results, the
    global top-k (``slice`` = index in the volume) and the report written to ``localize.json``."""

    volume: Volume
    slices: List[int]
    results: List[LocalizeResult]
    top: List[Dict[str, Any]]
    report: Dict[str, Any]


def _matching_calibration(workdir: Optional[str], center: Optional[int], steps: int) -> Optional[calib.Calibration]:
    """The workdir's calibration.json when it was fitted with this ``center`` and ``steps``."""
    if not workdir or not os.path.exists(os.path.join(workdir, calib.FILENAME)):
        return None
    c = calib.Calibration.load(workdir)
    return c if c.center == center and (c.steps or 1) == steps else None


def localize(model: Union[Scorer, str, "os.PathLike[str]"], path: str, out: str, *, stride: int = 16,
             center: Optional[int] = 32, steps: Optional[int] = None, top_k: int = 5,
             nms_radius: Optional[float] = None, units: str = "raw", slices: Optional[Tuple[int, Optional[int]]] = None,
             batch_size: Optional[int] = None, clip_inputs: bool = False, seed: int = 0, strict: bool = True,
             fmt: Union[str, Format] = "auto", series_uid: Optional[str] = None) -> Localized:
    """Sliding-window BTD over a scan on disk (any format with volumes: ``.npy`` slice or volume, DICOM,
    NIfTI, a slice store's series, ...) with the model ``model`` (a :class:`Scorer` or a workdir).

    Writes to the folder ``out``: ``suspicion.npy`` ((H, W) for a 2-D input, else (S, H, W)),
    ``localize.json`` (top-k locations as slice/row/col/score, with p-values when the workdir's
    ``calibration.json`` matches ``center`` and ``steps``), ``overlay.png`` (the slice holding the best
    location) and ``skipped.csv`` (files left out with ``strict=False``).

    ``center``: k of the central window (None: whole window); ``steps``: reverse steps d (None: the
    config's); ``units``: 'raw' (HU, scanner values; the paper's preprocessing) or 'unit' (already
    [0, 1]); ``slices``: (start, stop) of the volume (stop None: to the end); ``clip_inputs``: clip
    values to [0, 1] instead of refusing them; ``seed``: the noise key when ``steps > 1``; ``series_uid``:
    which series of an input holding several.
    """
    scorer = as_scorer(model)
    cfg = scorer.cfg
    if center is not None and center > cfg.image_size:
        raise ValueError(f"center {center} is larger than the model's patch size {cfg.image_size}")
    vol = read_volume(path, cfg.modality, units, series_uid, strict=strict, fmt=fmt)
    write_skipped(os.path.join(out, "skipped.csv"), vol.skipped)
    pixels = np.clip(vol.pixels, 0.0, 1.0) if clip_inputs else vol.pixels  # NaN stays NaN and is still refused
    n = len(pixels)
    start, stop = (0, n) if slices is None else (slices[0], n if slices[1] is None else slices[1])
    if not 0 <= start < stop <= n:
        raise ValueError(f"slices {start}:{stop} is not a valid range in a volume of {n} slices")
    idx = list(range(start, stop))
    steps = cfg.score.steps if steps is None else steps
    cal = _matching_calibration(scorer.workdir, center, steps)
    t0 = time.perf_counter()
    results, top = localize_volume(
        scorer, pixels[idx], top_k=top_k, key=jax.random.key(seed) if steps > 1 else None, stride=stride,
        center=center, steps=steps, nms_radius=nms_radius, batch_size=batch_size or cfg.score.batch_size,
        calibration=cal, patch=cfg.image_size)
    seconds = time.perf_counter() - t0
    for t in top:
        t["slice"] = idx[t["slice"]]
    maps = np.stack([r.suspicion for r in results])
    save_npy(os.path.join(out, "suspicion.npy"), maps[0] if vol.single else maps)
    best = idx.index(top[0]["slice"]) if top else 0
    save_overlay(pixels[idx[best]], results[best], os.path.join(out, "overlay.png"),
                 title=f"{os.path.basename(str(path))} slice {idx[best]}: BTD suspicion")
    report = {
        "input": os.path.abspath(path), "workdir": os.path.abspath(scorer.workdir) if scorer.workdir else None,
        "shape": list(pixels.shape), "slices": [idx[0], idx[-1] + 1], "patch": cfg.image_size, "stride": stride,
        "center": center, "steps": steps, "windows_per_slice": int(results[0].scores.size), "seconds": seconds,
        "seconds_per_slice": seconds / len(idx), "calibrated": cal is not None, "top": top,
        "per_slice_top": {str(i): r.top for i, r in zip(idx, results)},
    }
    write_json(os.path.join(out, "localize.json"), report, indent=1)
    return Localized(vol, idx, results, top, report)

"""What screening hands back: :class:`ScreenResult`, the findings list and the scan decision."""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from btd_jax import calibration as calib
from btd_jax.data.readers import Geometry
from btd_jax.localize import nms

__all__ = ["ScreenResult", "findings", "decision", "check_calibration"]


@dataclasses.dataclass
class ScreenResult:
    """``findings`` best first; ``suspicion`` (S, H, W) proposal map; ``slice_scores`` (S,) best
    approximate window score per slice; ``decision`` the scan-level call; ``work`` counts/seconds."""

    findings: List[Dict[str, Any]]
    suspicion: np.ndarray
    slice_scores: np.ndarray
    decision: Dict[str, Any]
    work: Dict[str, Any]
    settings: Dict[str, Any]


def findings(exact: Dict[Tuple[int, int, int], float], grid: Tuple[np.ndarray, np.ndarray],
             shape: Tuple[int, int, int], p: int, radius: float, top_k: int,
             geometry: Optional[Geometry]) -> List[Dict[str, Any]]:
    """Exact scores {(slice, i, j): score} -> the ``top_k`` best windows after per-slice non-max
    suppression, best first (ties: slice, then row-major), with centres, windows and mm coordinates."""
    rs, cs = grid
    _, h, w = shape
    by_slice: Dict[int, List[Tuple[int, int, int]]] = {}
    for k in sorted(exact):
        by_slice.setdefault(k[0], []).append(k)
    out = []
    for s, keys in by_slice.items():
        r0 = np.array([rs[i] for _, i, _ in keys])
        c0 = np.array([cs[j] for _, _, j in keys])
        scores = np.array([exact[k] for k in keys], np.float64)
        for n in nms(r0, c0, scores, top_k, radius):
            row, col = int(min(r0[n] + p // 2, h - 1)), int(min(c0[n] + p // 2, w - 1))
            f = {"slice": int(s), "row": row, "col": col, "score": float(scores[n]),
                 "window": [int(r0[n]), int(c0[n]), int(p)]}
            if geometry is not None:
                f["x_mm"], f["y_mm"], f["z_mm"] = (round(v, 3) for v in geometry.to_mm(s, row, col))
                f.update(geometry.describe(s))
            out.append(f)
    out.sort(key=lambda f: -f["score"])
    for rank, f in enumerate(out[:top_k]):
        f["rank"] = rank + 1
    return out[:top_k]


def check_calibration(cal: Optional[calib.Calibration], win: Any = None, **settings: Any) -> None:
    """Refuses a patch-level calibration, or one fitted with another variant, reference (``win``, a
    :class:`~btd_jax.screen.variant.WindowScore`) or other scoring ``settings``."""
    if cal is None:
        return
    if cal.meta.get("level") != "scan":
        raise ValueError("screen_volume needs a scan-level calibration (screen.calibrate on real scans); "
                         "a patch-level threshold would flag almost every scan")
    if win is not None:
        if cal.variant != win.variant:
            raise ValueError(f"the calibration was fitted on {cal.variant} scores, not {win.variant}")
        cal.check_reference(win.reference, "scan-level calibration")
    fitted = dict(cal.score)
    odd = {k: (fitted[k], v) for k, v in settings.items() if k in fitted and fitted[k] != v}
    if odd:
        raise ValueError("the calibration was fitted with other scoring settings: "
                         + ", ".join(f"{k}={a!r} (now {b!r})" for k, (a, b) in odd.items()))


def decision(best: float, cal: Optional[calib.Calibration]) -> Dict[str, Any]:
    """The scan-level call on the best finding's score."""
    out = {"score": best, "calibrated": cal is not None}
    if cal is not None and np.isfinite(best):
        out.update(flagged=bool(cal.decide([best])[0]), threshold=cal.threshold, target_fpr=cal.target_fpr,
                   p_value=float(cal.p_values([best])[0]), n_real_scans=cal.n)
    return out

"""Whole-scan screening: where in a volume was it tampered with, without being told where.

The paper scores a patch around a known position; exhaustive :mod:`btd_jax.localize` scores every
window on a stride grid (729 windows of 96 px per 512x512 slice at stride 16). Screening is a
cascade that scores only where it matters:

1. **proposal** over every slice, cheap: ``'grid'`` cuts the slice into ``P x P`` windows at
   ``proposal_stride`` (default ``P``: tiles) and averages their residual maps (exact patch
   semantics, ~(P/stride)^2 fewer windows than exhaustive; ``proposal_stride = proposal_center =
   P/2`` takes each pixel from the one window it is central in, the most faithful map);
   ``'fullconv'`` runs the U-Net once over the whole slice at t = 0 (the d = 1 residual of the
   slice; GroupNorm and attention then see the whole slice, so it is a proxy). Every window of the
   exact grid (``stride``, the grid exhaustive localisation uses) gets an approximate score: the map
   pooled over its central ``k x k``.
2. **candidates**: the best ``shortlist`` windows of each slice by the approximate score (non-max
   suppressed); optionally only the best ``max_candidates`` of the volume.
3. **exact BTD score** (the paper's patch score), batched over the whole volume on every device:
   first of the shortlist, then of the grid neighbours within ``refine`` steps of the best
   ``per_slice`` of each slice; with ``climb`` the search moves to the best neighbour until each is
   a local maximum of the exact score.
4. **findings**: exact-scored windows, non-max suppressed per slice, best first, with millimetre
   coordinates and SOPInstanceUID from the :class:`~btd_jax.data.volume.Geometry`; the **scan
   decision** compares the best score with a scan-level calibration (:func:`calibrate`: the best
   score of real scans, so its false-positive rate is per scan, not per window)::

    res = screen.screen_volume(scorer, vol.pixels, vol.geometry, top_k=5, calibration=cal)
    res.findings[0]    # {"slice", "row", "col", "score", "x_mm", "y_mm", "z_mm", "sop_instance_uid", ...}
    res.suspicion      # (S, H, W) proposal residual map
    res.decision       # {"score", "flagged", "threshold", "p_value", "target_fpr", "calibrated"}
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from btd_jax import calibration as calib
from btd_jax import diffusion, parallel
from btd_jax.data.errors import DataError
from btd_jax.data.volume import Geometry, check_volume
from btd_jax.localize import aggregate_maps, extract_windows, nms, window_positions
from btd_jax.models.unet import Unet, downsample_factor
from btd_jax.score import parse_reduction

__all__ = ["Cascade", "ScreenResult", "PROPOSALS", "screen_volume", "calibrate", "window_proxy",
           "fullconv_residual", "tissue_fraction"]

PROPOSALS = ("grid", "fullconv")


@dataclasses.dataclass(frozen=True)
class Cascade:
    """How much work screening does. ``stride``: the exact grid; ``proposal_stride`` (grid only):
    None = the patch size (tiles: fastest); P // 2 makes the proposal map faithful to windows centred
    on each pixel (closer agreement with exhaustive search, ~4x the proposal work).
    ``proposal_center``: the central c x c of each proposal window whose residuals make the map
    (None: the score's centre window); with ``proposal_stride = proposal_center`` (e.g. 48 for
    96 px) these centres tile the slice, so every pixel is seen away from a window's border.
    ``shortlist`` candidates per slice (None: ``per_slice``) are scored exactly, and the best
    ``per_slice`` of them get their neighbours within ``refine`` grid steps scored too: the
    approximate score only has to put the best region in the shortlist, not first. ``climb``: keep
    moving to the best neighbour (at most ``max_climb`` moves) until it is a local maximum; it only
    adds windows to those scored, so it can only raise the top finding.
    ``max_candidates`` caps the shortlist per volume (None: no cap, so the cost is linear in the
    number of slices and a slice's result does not depend on the others).
    ``tissue_min``: skip windows with less than this fraction of pixels above ``tissue_level``
    (default: -500 HU after CT windowing) in both passes (0 = off)."""

    proposal: str = "grid"
    proposal_stride: Optional[int] = None
    proposal_center: Optional[int] = None
    stride: int = 16
    per_slice: int = 2
    shortlist: Optional[int] = None
    max_candidates: Optional[int] = None
    refine: int = 1
    climb: bool = True
    max_climb: int = 8
    tissue_min: float = 0.0
    tissue_level: float = 200.0 / 2700.0

    def __post_init__(self):
        if self.proposal not in PROPOSALS:
            raise ValueError(f"proposal must be one of {PROPOSALS}, got {self.proposal!r}")
        capped = self.max_candidates is not None
        if self.stride < 1 or self.per_slice < 1 or (capped and self.max_candidates < 1) or self.refine < 0:
            raise ValueError("stride, per_slice and max_candidates (or None) must be >= 1 and refine >= 0")
        if self.shortlist is not None and self.shortlist < self.per_slice:
            raise ValueError(f"shortlist ({self.shortlist}) must be None or >= per_slice ({self.per_slice})")
        if self.max_climb < 0:
            raise ValueError(f"max_climb must be >= 0, got {self.max_climb}")
        for name in ("proposal_stride", "proposal_center"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.tissue_min <= 1.0:
            raise ValueError(f"tissue_min must be in [0, 1], got {self.tissue_min}")


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


# ----------------------------------------------------------------------------- proposal pass

@functools.lru_cache(maxsize=16)
def _fullconv_fn(model_cfg, normalize: bool, clip_denoised: bool, mesh) -> Callable:
    """Jitted (params, sched, x01 (B, H, W, C)) -> (B, H, W) d = 1 residuals, batch over ``mesh``."""
    model = Unet.from_config(model_cfg)

    def fn(params, sched, x01):
        x = diffusion.normalize(x01) if normalize else x01
        x_d = diffusion.p_sample(sched, lambda a, t: model.apply({"params": params}, a, t), x, 0, None,
                                 clip_denoised=clip_denoised)[0]
        return jnp.mean(jnp.square(x - x_d.astype(jnp.float32)), axis=-1)

    data, rep = parallel.data_sharding(mesh), parallel.replicated(mesh)
    return jax.jit(fn, in_shardings=(rep, rep, data), out_shardings=data)


def fullconv_residual(scorer: Any, slices01: np.ndarray) -> np.ndarray:
    """(S, H, W) in [0, 1] -> (S, H, W) d = 1 residuals of whole slices, one U-Net pass each.

    Slices are zero-padded (bottom/right; zero = air after CT windowing) to the U-Net's
    downsampling multiple and processed one per device at a time.
    """
    cfg = scorer.cfg
    s, h, w = slices01.shape
    m = downsample_factor(cfg.model.num_stages)
    hp, wp = -(-h // m) * m, -(-w // m) * m
    x = np.pad(slices01, ((0, 0), (0, hp - h), (0, wp - w)))[..., None]
    x = np.repeat(x, cfg.model.channels, axis=-1) if cfg.model.channels > 1 else x
    fn = _fullconv_fn(cfg.model, bool(cfg.diffusion.auto_normalize), bool(cfg.score.clip_denoised), scorer.mesh)
    n_dev = scorer.mesh.devices.size
    out = np.empty((s, hp, wp), np.float32)
    for i in range(0, s, n_dev):
        chunk, nv = parallel.pad_to_multiple(x[i:i + n_dev], n_dev)
        out[i:i + nv] = np.asarray(fn(scorer.params, scorer.sched, parallel.shard_batch(chunk, scorer.mesh)))[:nv]
    return out[:, :h, :w]


def tissue_fraction(img: np.ndarray, rows: np.ndarray, cols: np.ndarray, p: int, level: float) -> np.ndarray:
    """Fraction of pixels above ``level`` in each P x P window (top-left rows/cols), via an integral image."""
    c = np.zeros((img.shape[0] + 1, img.shape[1] + 1))
    c[1:, 1:] = np.cumsum(np.cumsum(img > level, 0), 1)
    return (c[rows + p, cols + p] - c[rows, cols + p] - c[rows + p, cols] + c[rows, cols]) / (p * p)


def window_proxy(suspicion: np.ndarray, rows: np.ndarray, cols: np.ndarray, patch: int, center: Optional[int],
                 reduction: str) -> np.ndarray:
    """Approximate window scores: the (H, W) map pooled like the BTD score over the central k x k
    of each P x P window (top-left ``rows``/``cols``) -> (K,)."""
    k = patch if center is None else center
    o = (patch - k) // 2
    view = np.lib.stride_tricks.sliding_window_view(suspicion, (k, k))[rows + o, cols + o].reshape(len(rows), -1)
    kind, q = parse_reduction(reduction)
    if kind == "mean":
        return view.mean(axis=1)
    if kind == "max":
        return view.max(axis=1)
    return np.percentile(view, q, axis=1)


def _grid_proposal(scorer, vol, cas: Cascade, p, center, steps, batch_size, key):
    """Tiles of every slice in one batched residual-map call -> (S, H, W) averaged maps."""
    ps = cas.proposal_stride or p
    per_slice = [extract_windows(v, p, ps) for v in vol]
    keep = [np.ones(len(r), bool) if cas.tissue_min <= 0 else
            tissue_fraction(v, r, c, p, cas.tissue_level) >= cas.tissue_min
            for v, (_, r, c) in zip(vol, per_slice)]
    windows = np.concatenate([w[k] for (w, _, _), k in zip(per_slice, keep)])
    maps = np.zeros((0, p, p), np.float32)
    if len(windows):
        maps = np.asarray(scorer.residual_map(windows, steps=steps, batch_size=batch_size, **_key_kw(key, 1)))
    out, i = np.zeros(vol.shape, np.float32), 0
    for s, ((_, r, c), k) in enumerate(zip(per_slice, keep)):
        n = int(k.sum())
        if n:
            out[s] = aggregate_maps(maps[i:i + n], r[k], c[k], vol.shape[1:], cas.proposal_center or center)
        i += n
    return out, len(windows)


def _key_kw(key, salt: int) -> Dict[str, Any]:
    return {} if key is None else {"key": jax.random.fold_in(key, salt)}


# ----------------------------------------------------------------------------- candidates

def _candidates(suspicion, vol, cas: Cascade, p, center, reduction, radius):
    """-> list of (slice, grid row index, grid col index, approx score), best first; (S,) slice maxima."""
    rs, cs = window_positions(vol.shape[1], p, cas.stride), window_positions(vol.shape[2], p, cas.stride)
    ii, jj = np.meshgrid(np.arange(len(rs)), np.arange(len(cs)), indexing="ij")
    ii, jj = ii.ravel(), jj.ravel()
    found, slice_best = [], np.full(vol.shape[0], -np.inf)
    for s in range(vol.shape[0]):
        approx = window_proxy(suspicion[s], rs[ii], cs[jj], p, center, reduction)
        if cas.tissue_min > 0:
            tissue = tissue_fraction(vol[s], rs[ii], cs[jj], p, cas.tissue_level)
            approx = np.where(tissue >= cas.tissue_min, approx, -np.inf)
        if not np.isfinite(approx).any():
            continue
        slice_best[s] = approx.max()
        for n in nms(rs[ii], cs[jj], approx, cas.shortlist or cas.per_slice, radius):
            if np.isfinite(approx[n]):
                found.append((s, int(ii[n]), int(jj[n]), float(approx[n])))
    found.sort(key=lambda t: -t[3])
    return found[:cas.max_candidates] if cas.max_candidates else found, slice_best, (rs, cs)


def _hood(key: Tuple[int, int, int], grid, refine: int) -> List[Tuple[int, int, int]]:
    """(slice, grid row index, grid col index) within ``refine`` grid steps of ``key``, itself first."""
    (s, i, j), (rs, cs) = key, grid
    return [key] + [(s, a, b) for a in range(max(i - refine, 0), min(i + refine, len(rs) - 1) + 1)
                    for b in range(max(j - refine, 0), min(j + refine, len(cs) - 1) + 1) if (a, b) != (i, j)]


def _exact_search(score_fn: Callable[[List[Tuple[int, int, int]]], np.ndarray], cands, grid,
                  cas: Cascade) -> Dict[Tuple[int, int, int], float]:
    """Exact scores of the shortlist, then of the neighbourhoods of each slice's best ``per_slice``
    (moved to their best neighbour while ``climb``) -> {(slice, i, j): score}."""
    done: Dict[Tuple[int, int, int], float] = {}

    def run(keys):
        new = [k for k in dict.fromkeys(keys) if k not in done]
        if new:
            done.update(zip(new, (float(v) for v in score_fn(new))))

    heads = [(s, i, j) for s, i, j, _ in cands]
    if (cas.shortlist or cas.per_slice) > cas.per_slice:
        run(heads)
        by_slice: Dict[int, List[Tuple[int, int, int]]] = {}
        for k in heads:
            by_slice.setdefault(k[0], []).append(k)
        heads = [k for ks in by_slice.values() for k in sorted(ks, key=lambda k: -done[k])[:cas.per_slice]]
    for _ in range(cas.max_climb + 1 if cas.climb else 1):
        hoods = {h: _hood(h, grid, cas.refine) for h in dict.fromkeys(heads)}
        run([k for hood in hoods.values() for k in hood])
        heads = [m for h, hood in hoods.items() if (m := max(hood, key=done.__getitem__)) != h]
        if not heads:
            break
    return done


# ----------------------------------------------------------------------------- driver

def _settings(scorer, center, steps, reduction, batch_size):
    sc = scorer.cfg.score
    center = sc.center if center is None else (center or None)
    steps = int(sc.steps if steps is None else steps)
    reduction = sc.reduction if reduction is None else reduction
    parse_reduction(reduction)
    p = int(scorer.cfg.image_size)
    if center is not None and not 1 <= center <= p:
        raise ValueError(f"center window {center} must be between 1 and the patch size {p}")
    return center, steps, reduction, int(batch_size or sc.batch_size), p


def _check_calibration(cal: Optional[calib.Calibration], **settings: Any) -> None:
    if cal is None:
        return
    if cal.meta.get("level") != "scan":
        raise ValueError("screen_volume needs a scan-level calibration (screen.calibrate on real scans); "
                         "a patch-level threshold would flag almost every scan")
    fitted = dict(cal.score)
    odd = {k: (fitted[k], v) for k, v in settings.items() if k in fitted and fitted[k] != v}
    if odd:
        raise ValueError("the calibration was fitted with other scoring settings: "
                         + ", ".join(f"{k}={a!r} (now {b!r})" for k, (a, b) in odd.items()))


def _decision(best: float, cal: Optional[calib.Calibration]) -> Dict[str, Any]:
    out = {"score": best, "calibrated": cal is not None}
    if cal is not None and np.isfinite(best):
        out.update(flagged=bool(cal.decide([best])[0]), threshold=cal.threshold, target_fpr=cal.target_fpr,
                   p_value=float(cal.p_values([best])[0]), n_real_scans=cal.n)
    return out


def screen_volume(scorer: Any, volume01: Any, geometry: Optional[Geometry] = None, *, top_k: int = 10,
                  center: Optional[int] = None, steps: Optional[int] = None, reduction: Optional[str] = None,
                  nms_radius: Optional[float] = None, calibration: Optional[calib.Calibration] = None,
                  batch_size: Optional[int] = None, key: Any = None, cascade: Optional[Cascade] = None,
                  name: str = "volume", **cascade_kw: Any) -> ScreenResult:
    """Screens a volume (S, H, W) (or one slice (H, W)) in [0, 1]; see the module docstring.

    Args:
      scorer: a :class:`btd_jax.score.Scorer` (``cfg``, ``params``, ``sched``, ``mesh``,
        ``residual_map``, ``score``).
      geometry: adds ``x_mm``/``y_mm``/``z_mm`` (LPS) and, for DICOM, ``sop_instance_uid``/``path``.
      center / steps / reduction / batch_size: BTD settings; None = the scorer config's ``score``
        (``center=0`` means the whole window).
      nms_radius: Chebyshev radius of non-max suppression in pixels (default P // 2).
      calibration: a scan-level :class:`~btd_jax.calibration.Calibration` from :func:`calibrate`.
      key: needed when ``steps > 1``. cascade / cascade_kw: a :class:`Cascade` or its fields.
    """
    t0 = time.perf_counter()
    cas = dataclasses.replace(cascade or Cascade(), **cascade_kw)
    center, steps, reduction, batch_size, p = _settings(scorer, center, steps, reduction, batch_size)
    if (cas.proposal_center or 0) > p:
        raise ValueError(f"proposal_center {cas.proposal_center} is larger than the patch size {p}")
    _check_calibration(calibration, steps=steps, center=center, reduction=reduction)
    vol = check_volume(volume01, p, name)
    if geometry is not None and geometry.sop_instance_uids is not None and len(geometry.sop_instance_uids) != len(vol):
        raise DataError(f"{name}: {len(vol)} slices but the geometry describes {len(geometry.sop_instance_uids)}")
    radius = p // 2 if nms_radius is None else nms_radius
    if cas.proposal == "fullconv":
        if steps != 1:
            raise ValueError("proposal='fullconv' is the d = 1 residual; use proposal='grid' with steps > 1")
        suspicion, n_prop = fullconv_residual(scorer, vol), 0
    else:
        suspicion, n_prop = _grid_proposal(scorer, vol, cas, p, center, steps, batch_size, key)
    t1 = time.perf_counter()
    cands, slice_best, grid = _candidates(suspicion, vol, cas, p, center, reduction, radius)
    rs, cs = grid
    salts = iter(range(2, 1 << 30))  # one noise key per exact round (steps > 1)

    def score_fn(keys):
        windows = np.stack([vol[s, rs[i]:rs[i] + p, cs[j]:cs[j] + p] for s, i, j in keys])
        return np.asarray(scorer.score(windows, steps=steps, center=center, reduction=reduction,
                                       batch_size=batch_size, **_key_kw(key, next(salts))), np.float64)

    exact = _exact_search(score_fn, cands, grid, cas)
    findings: List[Dict[str, Any]] = []
    if exact:
        findings = _findings(list(exact), np.fromiter(exact.values(), np.float64), grid, vol.shape, p, radius,
                             top_k, geometry)
    best = findings[0]["score"] if findings else float("-inf")
    decision = _decision(best, calibration)
    if calibration is not None:
        for f in findings:
            f["p_value"] = float(calibration.p_values([f["score"]])[0])
    t2 = time.perf_counter()
    work = {"slices": int(len(vol)), "proposal_windows": int(n_prop),
            "fullconv_slices": len(vol) if cas.proposal == "fullconv" else 0, "candidates": len(cands),
            "exact_windows": len(exact), "proposal_s": t1 - t0, "exact_s": t2 - t1,
            "seconds": t2 - t0}
    settings = {"patch": p, "center": center, "steps": steps, "reduction": reduction, "nms_radius": radius,
                "top_k": top_k, **dataclasses.asdict(cas)}
    return ScreenResult(findings, suspicion, slice_best, decision, work, settings)


def _findings(todo, exact, grid, shape, p, radius, top_k, geometry) -> List[Dict[str, Any]]:
    rs, cs = grid
    _, h, w = shape
    by_slice: Dict[int, List[int]] = {}
    for n, (s, _, _) in enumerate(todo):
        by_slice.setdefault(s, []).append(n)
    out = []
    for s, idx in by_slice.items():
        idx = np.asarray(idx)
        r0 = np.array([rs[todo[n][1]] for n in idx])
        c0 = np.array([cs[todo[n][2]] for n in idx])
        for k in nms(r0, c0, exact[idx], top_k, radius):
            row, col = int(min(r0[k] + p // 2, h - 1)), int(min(c0[k] + p // 2, w - 1))
            f = {"slice": int(s), "row": row, "col": col, "score": float(exact[idx[k]]),
                 "window": [int(r0[k]), int(c0[k]), int(p)]}
            if geometry is not None:
                f["x_mm"], f["y_mm"], f["z_mm"] = (round(v, 3) for v in geometry.to_mm(s, row, col))
                f.update(geometry.describe(s))
            out.append(f)
    out.sort(key=lambda f: -f["score"])
    for rank, f in enumerate(out[:top_k]):
        f["rank"] = rank + 1
    return out[:top_k]


def calibrate(scorer: Any, real_volumes: Sequence[Any], target_fpr: float = 0.1, **screen_kw: Any) -> calib.Calibration:
    """Scan-level calibration: screens each real volume (S, H, W) in [0, 1] and fits the threshold on
    their best finding scores, so that ``target_fpr`` is the fraction of *real scans* flagged.

    ``screen_kw`` (center, steps, reduction, cascade fields ...) must match later screening; they
    are stored in the calibration's meta.
    """
    best, settings = [], {}
    for i, v in enumerate(real_volumes):
        res = screen_volume(scorer, v, name=f"real scan {i}", **screen_kw)
        if not res.findings:
            raise DataError(f"real scan {i}: no window was scored (all below the tissue threshold?)")
        best.append(res.findings[0]["score"])
        settings = res.settings
    if not best:
        raise DataError("calibrate: no real scans given")
    return calib.fit(np.asarray(best), target_fpr=target_fpr, level="scan",
                     score={k: settings[k] for k in ("steps", "center", "reduction")},
                     screen={k: v for k, v in settings.items() if k not in ("steps", "center", "reduction")})

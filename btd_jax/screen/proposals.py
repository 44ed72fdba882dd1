"""The cheap first pass of screening and the candidates it proposes for the exact stage.

``'grid'``: P x P windows of the slice at ``proposal_stride`` whose residual maps are averaged into
a map (exact patch semantics); ``'fullconv'``: the U-Net once over the whole slice at t = 0 (the
d = 1 residual of the slice; GroupNorm and attention then see the whole slice, so it is a proxy).
With ``proposal_scale`` both see the slice shrunk by that factor and the map is enlarged back.
Every window of the exact grid then gets an approximate score (:func:`window_proxy`), and the best
of each slice, non-max suppressed, are its candidates (:func:`slice_candidates`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from btd_jax import diffusion, parallel
from btd_jax.localize import aggregate_maps, extract_windows, nms, window_positions
from btd_jax.models.unet import Unet, downsample_factor
from btd_jax.scoring.pooling import pool
from btd_jax.screen.cascade import Cascade

__all__ = ["tissue_fraction", "window_proxy", "shrink", "enlarge", "GridTiles", "span_positions", "grid_tiles",
           "grid_map", "fullconv_input", "fullconv_fn", "submit_fullconv", "fullconv_residual", "fullconv_trace_count",
           "slice_candidates"]

_TRACES = [0]  # traces of the whole-slice function (the no-recompilation test reads it)


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
    view = np.lib.stride_tricks.sliding_window_view(suspicion, (k, k))[rows + o, cols + o]
    return pool(view.reshape(len(rows), -1), reduction)


def shrink(img: np.ndarray, scale: int, least: int = 0) -> np.ndarray:
    """(H, W) -> (ceil(H/scale), ceil(W/scale)) block means (zero-padded: zero is air after CT
    windowing), then zero-padded to at least ``least`` on each side."""
    h, w = img.shape
    if scale > 1:
        hs, ws = -(-h // scale), -(-w // scale)
        img = np.pad(img, ((0, hs * scale - h), (0, ws * scale - w)))
        img = img.reshape(hs, scale, ws, scale).mean(axis=(1, 3), dtype=np.float32)
    return np.pad(img, ((0, max(least - img.shape[0], 0)), (0, max(least - img.shape[1], 0))))


def enlarge(small: np.ndarray, scale: int, shape: Tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`shrink` for maps: each value repeated over its scale x scale block, cropped."""
    if scale > 1:
        small = np.repeat(np.repeat(small, scale, axis=0), scale, axis=1)
    return np.ascontiguousarray(small[:shape[0], :shape[1]])


@dataclasses.dataclass
class GridTiles:
    """One slice's grid proposal windows: ``windows`` (K, P, P) with top-left ``rows``/``cols`` in the
    (shrunk) slice of ``shape``; ``index`` (K,) their positions among all ``n_all`` grid windows
    (tissue-poor windows are left out), the noise index of each within the slice."""

    windows: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    index: np.ndarray
    shape: Tuple[int, int]
    n_all: int


def span_positions(length: int, p: int, stride: int, margin: int) -> np.ndarray:
    """Top-left starts of the fewest windows at ``stride`` that cover ``[margin, length - margin)``
    (the pixels some exact window's centre covers), their spare pixels split evenly on both sides;
    the whole-slice layout where the stride leaves no room for that."""
    need = max(length - 2 * margin, 1)
    n = max(-(-(need - p) // stride), 0) + 1
    total = (n - 1) * stride + p
    if total > length:  # no room on the stride: the whole-slice layout, the last window flush
        return window_positions(length, p, stride)
    start = min(max(margin - (total - need) // 2, 0), length - total)
    return start + stride * np.arange(n)


def grid_tiles(img: np.ndarray, cas: Cascade, p: int, center: Optional[int] = None) -> GridTiles:
    """(H, W) slice -> its grid proposal windows (see :class:`GridTiles`); ``center``: the exact
    score's central window, which ``proposal_span='centres'`` needs."""
    small = shrink(img, cas.proposal_scale, p)
    stride = cas.proposal_stride or p
    starts = None
    if cas.proposal_span == "centres" and center is not None and cas.proposal_center is None:
        margin = (p - center) // 2 // cas.proposal_scale  # rows/columns in no exact window's centre
        starts = tuple(span_positions(n, p, stride, margin) for n in small.shape)
    windows, rows, cols = extract_windows(small, p, stride, starts)
    index = np.arange(len(rows))
    if cas.tissue_min > 0:
        index = index[tissue_fraction(small, rows, cols, p, cas.tissue_level) >= cas.tissue_min]
    return GridTiles(windows[index], rows[index], cols[index], index, small.shape, len(rows))


def grid_map(tiles: GridTiles, maps: np.ndarray, cas: Cascade, center: Optional[int], shape: Tuple[int, int]
             ) -> np.ndarray:
    """Residual maps (K, P, P) of ``tiles`` -> the slice's (H, W) proposal map (zeros if K = 0)."""
    if not len(maps):
        return np.zeros(shape, np.float32)
    small = aggregate_maps(maps, tiles.rows, tiles.cols, tiles.shape, cas.proposal_center or center)
    return enlarge(small, cas.proposal_scale, shape)


# ----------------------------------------------------------------------------- whole-slice pass

def fullconv_input(img: np.ndarray, cas: Cascade, cfg: Any) -> np.ndarray:
    """(H, W) slice -> (H', W', C): shrunk by ``proposal_scale``, zero-padded to the U-Net's
    downsampling multiple (bottom/right)."""
    small = shrink(img, cas.proposal_scale)
    m = downsample_factor(cfg.model.num_stages)
    h, w = small.shape
    x = np.pad(small, ((0, -h % m), (0, -w % m)))[..., None]
    return np.repeat(x, cfg.model.channels, axis=-1) if cfg.model.channels > 1 else x


@functools.lru_cache(maxsize=16)
def fullconv_fn(model_cfg, normalize: bool, clip_denoised: bool, mesh) -> Callable:
    """Jitted (params, sched, x01 (B, H, W, C)) -> (B, H, W) d = 1 residuals, batch over ``mesh``."""
    model = Unet.from_config(model_cfg)

    def fn(params, sched, x01):
        _TRACES[0] += 1
        x = diffusion.normalize(x01) if normalize else x01
        x_d = diffusion.p_sample(sched, lambda a, t: model.apply({"params": params}, a, t), x, 0, None,
                                 clip_denoised=clip_denoised)[0]
        return jnp.mean(jnp.square(x - x_d.astype(jnp.float32)), axis=-1)

    data, rep = parallel.data_sharding(mesh), parallel.replicated(mesh)
    return jax.jit(fn, in_shardings=(rep, rep, data), out_shardings=data)


def fullconv_trace_count() -> int:
    """How many times the whole-slice function has been traced in this process."""
    return _TRACES[0]


def submit_fullconv(scorer: Any, x: np.ndarray) -> Callable[[], np.ndarray]:
    """x (n <= devices, H', W', C) -> a callable waiting for the (n, H', W') residuals; padded to one
    slice per device, so every call of a volume has one shape."""
    cfg, n_dev = scorer.cfg, scorer.mesh.devices.size
    fn = fullconv_fn(cfg.model, bool(cfg.diffusion.auto_normalize), bool(cfg.score.clip_denoised), scorer.mesh)
    n = len(x)
    xp, _ = parallel.pad_to_multiple(x, n_dev)
    out = fn(scorer.params, scorer.sched, parallel.shard_batch(xp, scorer.mesh))
    return lambda: np.asarray(out)[:n]


def fullconv_residual(scorer: Any, slices01: np.ndarray, scale: int = 1) -> np.ndarray:
    """(S, H, W) in [0, 1] -> (S, H, W) d = 1 residuals of whole slices, one U-Net pass each
    (processed one per device at a time; ``scale``: see :class:`Cascade`'s ``proposal_scale``)."""
    cas = Cascade(proposal="fullconv", proposal_scale=scale)
    s, h, w = slices01.shape
    out = np.empty((s, h, w), np.float32)
    n_dev = scorer.mesh.devices.size
    for i in range(0, s, n_dev):
        x = np.stack([fullconv_input(v, cas, scorer.cfg) for v in slices01[i:i + n_dev]])
        for k, r in enumerate(submit_fullconv(scorer, x)()):
            out[i + k] = enlarge(r, scale, (h, w))
    return out


# ----------------------------------------------------------------------------- candidates

def slice_candidates(suspicion: np.ndarray, img: np.ndarray, grid: Tuple[np.ndarray, np.ndarray], cas: Cascade,
                     p: int, center: Optional[int], reduction: str, radius: float,
                     approx: Optional[Callable[..., np.ndarray]] = None) -> Tuple[List[Tuple[int, int, float]], float]:
    """One slice's proposal map -> its candidates (grid row index, grid col index, approximate score),
    best first and non-max suppressed, and its best approximate score (-inf when no window counts).

    ``approx(suspicion, img, rows, cols, p) -> (K,)`` scores the windows that count (a score
    variant's, :mod:`~btd_jax.screen.variant`); default :func:`window_proxy`."""
    rs, cs = grid
    ii, jj = np.meshgrid(np.arange(len(rs)), np.arange(len(cs)), indexing="ij")
    ii, jj = ii.ravel(), jj.ravel()
    keep = np.ones(len(ii), bool)
    if cas.tissue_min > 0:
        keep = tissue_fraction(img, rs[ii], cs[jj], p, cas.tissue_level) >= cas.tissue_min
    if approx is None:
        scores = np.where(keep, window_proxy(suspicion, rs[ii], cs[jj], p, center, reduction), -np.inf)
    else:
        scores = np.full(len(ii), -np.inf)
        scores[keep] = approx(suspicion, img, rs[ii[keep]], cs[jj[keep]], p)
    if not np.isfinite(scores).any():
        return [], float("-inf")
    picks = nms(rs[ii], cs[jj], scores, cas.shortlist or cas.per_slice, radius)
    return [(int(ii[n]), int(jj[n]), float(scores[n])) for n in picks if np.isfinite(scores[n])], float(scores.max())

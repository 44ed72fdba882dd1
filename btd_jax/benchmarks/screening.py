"""Seconds per slice of whole-scan screening (the cascade) and of exhaustive stride-16 search, on
512 x 512 head-CT slices, with every batch shape compiled before the timed calls."""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

import jax
import numpy as np

from btd_jax import configs, localize, parallel, screen
from btd_jax.attacks import demo_data
from btd_jax.data.errors import DataError
from btd_jax.models.unet import abstract_params
from btd_jax.scoring import stream
from btd_jax.scoring.scorer import Scorer
from btd_jax.screen import proposals
from btd_jax.timing import load_average

__all__ = ["random_scorer", "dihedral", "ct_volume", "time_screening", "time_exhaustive"]


def random_scorer(config: Any, dtype: str = "float32", seed: int = 0, devices: Optional[int] = None) -> Scorer:
    """A preset (name or Config) with random weights (speed does not depend on their values), on the
    first ``devices`` local devices (None: all)."""
    cfg = configs.override(configs.get(config) if isinstance(config, str) else config, {"model.dtype": dtype})
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda a: (0.05 * rng.standard_normal(a.shape)).astype(np.float32),
                          abstract_params(cfg.model))
    return Scorer.from_params(params, cfg, parallel.make_mesh(jax.local_devices()[:devices]))


def dihedral(img: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations of ``img`` (k = 0 .. 7)."""
    return np.rot90(img[:, ::-1] if k >= 4 else img, k % 4).copy()


def _phantom(size: int = 512) -> np.ndarray:
    """A head-like ellipse of textured tissue in air, in [0, 1] (when pydicom-data is missing)."""
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    head = (yy / 0.42) ** 2 + (xx / 0.35) ** 2 <= 1
    tex = np.random.default_rng(0).random((size, size)) * 0.05
    return np.where(head, 0.35 + tex + 0.3 * ((yy / 0.42) ** 2 + (xx / 0.35) ** 2 > 0.85), 0.0).astype(np.float32)


def ct_volume(n: int) -> tuple:
    """(n, 512, 512) in [0, 1]: flips/rotations of pydicom's 512 x 512 CQ500 head-CT slice (a
    synthetic phantom if it is not installed), and the source's name."""
    try:
        src = next(s for s in demo_data.load_sources("CT", 0.35, 96) if s.image.shape == (512, 512))
        img, name = src.unit, "CQ500 slice (pydicom-data), flips/rotations"
    except (DataError, StopIteration, ImportError):
        img, name = _phantom(), "synthetic phantom (pydicom-data not installed)"
    return np.stack([dihedral(img, k % 8) for k in range(n)]), name


def time_screening(scorer: Scorer, vol: np.ndarray, settings: Dict[str, Dict[str, Any]], center: Optional[int],
                   batch_size: Optional[int] = None, warm_slices: int = 2) -> Dict[str, Any]:
    """Seconds of :func:`btd_jax.screen.screen_volume` on ``vol`` for each named setting (Cascade
    fields), after a warm-up volume of ``warm_slices`` that compiles every shape; the trace counters
    around the timed call show whether anything compiled inside it."""
    out: Dict[str, Any] = {}
    for name, kw in settings.items():
        screen.screen_volume(scorer, vol[:warm_slices], center=center, batch_size=batch_size, **kw)
        traces = stream.trace_count(), proposals.fullconv_trace_count()
        load = load_average()
        t0 = time.perf_counter()
        res = screen.screen_volume(scorer, vol, center=center, batch_size=batch_size, **kw)
        dt = time.perf_counter() - t0
        w = res.work
        out[name] = {"cascade": kw, "seconds": dt, "seconds_per_slice": dt / len(vol), "work": w,
                     "windows_per_slice": (w["proposal_windows"] + w["exact_windows"]) / len(vol),
                     "compilations_inside": stream.trace_count() + proposals.fullconv_trace_count() - sum(traces),
                     "load_before": load, "load_after": load_average()}
    return out


def time_exhaustive(scorer: Scorer, img: np.ndarray, center: Optional[int], stride: int = 16,
                    batch_size: int = 256) -> Dict[str, Any]:
    """Seconds of exhaustive :func:`btd_jax.localize.localize_slice` over one slice, compiled first."""
    p = scorer.cfg.image_size
    side = min(p + stride * 15, *img.shape)  # 256 windows: the same batch shape as the timed call
    localize.localize_slice(scorer, img[:side, :side], stride=stride, center=center, batch_size=batch_size)
    load = load_average()
    t0 = time.perf_counter()
    res = localize.localize_slice(scorer, img, stride=stride, center=center, top_k=5, batch_size=batch_size)
    dt = time.perf_counter() - t0
    return {"seconds_per_slice": dt, "windows": int(res.scores.size), "seconds_per_window": dt / res.scores.size,
            "batch_size": batch_size, "load_before": load, "load_after": load_average()}

"""Screening one volume: both stages of the cascade fed through full, fixed-size batches.

Every window the cascade scores (grid proposal windows and exact windows, of any slice) travels in
batches of one shape through one compiled function (:class:`~btd_jax.scoring.stream.FixedChunks`),
exact windows first (they finish slices), proposal windows filling the rest. A batch leaves only
when full, except when nothing is on the devices and nothing else can come. Two batches are in
flight at a time, so the host routes one batch's results while the devices compute the next, and a
background thread cuts the next slices' proposal windows meanwhile. Nothing in a volume compiles
after its first batch (``stream.trace_count`` / ``proposals.fullconv_trace_count``).
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np

from btd_jax import calibration as calib
from btd_jax.data.errors import DataError
from btd_jax.data.readers import Geometry, check_volume
from btd_jax.localize import window_positions
from btd_jax.runtime.prefetch import thread_prefetch
from btd_jax.scoring.interfaces import ScoreResult
from btd_jax.scoring.pooling import parse_reduction, pool_window
from btd_jax.screen import proposals
from btd_jax.screen.cascade import Cascade
from btd_jax.screen.exact import ExactSearch, Key
from btd_jax.screen.report import ScreenResult, check_calibration, decision, findings
from btd_jax.screen.variant import WindowScore, window_score

__all__ = ["screen_volume", "calibrate", "CPU_CHUNK", "IN_FLIGHT"]

# On CPU a batch costs the same per window at any size (one window per U-Net pass), but the last
# batches of a volume (a few climbing windows) are padded to the full size: keep them small there.
CPU_CHUNK = 32
IN_FLIGHT = 2  # batches queued on the devices at once


class _HostChunks:
    """``FixedChunks``' interface over any ResidualModel (``residual_map`` only), e.g. a test stand-in."""

    def __init__(self, scorer: Any, chunk: int, steps: int, center: Optional[int], reduction: str, key: Any):
        self.scorer, self.chunk, self.steps, self.center, self.reduction = scorer, chunk, steps, center, reduction
        self.kw = {} if key is None else {"key": key}

    def submit(self, images: np.ndarray, ids: np.ndarray) -> Callable[[], ScoreResult]:
        maps = np.asarray(self.scorer.residual_map(images, steps=self.steps, **self.kw), np.float32)
        res = ScoreResult(pool_window(maps, self.center, self.reduction).astype(np.float32), maps)
        return lambda: res


class _Run:
    """One volume through the cascade (see the module docstring); :meth:`run` -> ``work`` counts."""

    def __init__(self, vol: np.ndarray, cas: Cascade, scorer: Any, runner: Any, p: int, win: WindowScore,
                 radius: float):
        self.vol, self.cas, self.scorer, self.runner, self.p = vol, cas, scorer, runner, p
        self.win, self.radius = win, radius
        self.center, self.reduction = win.settings.center, win.settings.reduction
        n, h, w = vol.shape
        self.grid = (window_positions(h, p, cas.stride), window_positions(w, p, cas.stride))
        self.search = ExactSearch(cas, len(self.grid[0]), len(self.grid[1]))
        self.suspicion = np.zeros(vol.shape, np.float32)
        self.slice_best = np.full(n, -np.inf)
        self.fullconv = cas.proposal == "fullconv"
        self.chunk = runner.chunk
        self.tiles: collections.deque = collections.deque()  # (slice, k) proposal windows not yet sent
        self.pending: Dict[int, Any] = {}  # slice -> [GridTiles, maps (K, P, P), windows left]
        self.slabs: collections.deque = collections.deque()  # (slice, fullconv input) not yet sent
        self.next_slice, self.finished, self.capped = 0, 0, []
        self.cells = len(self.grid[0]) * len(self.grid[1])
        self.work = dict(slices=n, proposal_windows=0, fullconv_slices=0, candidates=0, batches=0,
                         batch_size=self.chunk, padded_windows=0, wait_s=0.0, proposal_s=0.0)

    # --------------------------------------------------------------- producing work

    def _prepare(self, s: int):
        if self.fullconv:
            return proposals.fullconv_input(self.vol[s], self.cas, self.scorer.cfg)
        return proposals.grid_tiles(self.vol[s], self.cas, self.p, self.center)

    def _pull(self, ahead) -> None:
        s, item = self.next_slice, next(ahead)
        self.next_slice += 1
        if self.fullconv:
            self.slabs.append((s, item))
        elif len(item.windows):
            self.pending[s] = [item, np.empty((len(item.windows), self.p, self.p), np.float32), len(item.windows)]
            self.tiles.extend((s, k) for k in range(len(item.windows)))
            self.work["proposal_windows"] += len(item.windows)
        else:
            self._finish(s, proposals.grid_map(item, item.windows, self.cas, self.center, self.vol.shape[1:]))

    def _tile_id(self, s: int, k: int) -> int:
        t = self.pending[s][0]
        return len(self.vol) * self.cells + s * t.n_all + int(t.index[k])  # after every exact window's id

    def _batch(self, keys: Sequence[Key], tiles: Sequence[Tuple[int, int]]):
        p, (rs, cs) = self.p, self.grid
        x = [self.vol[s, rs[i]:rs[i] + p, cs[j]:cs[j] + p] for s, i, j in keys]
        x += [self.pending[s][0].windows[k] for s, k in tiles]
        ids = [s * self.cells + i * len(cs) + j for s, i, j in keys] + [self._tile_id(s, k) for s, k in tiles]
        self.work["padded_windows"] += self.chunk - len(x)
        x = np.stack(x)
        return ("windows", list(keys), list(tiles), self.runner.submit(x, np.asarray(ids, np.int64)), x[:len(keys)])

    def _next(self, ahead, busy: bool):
        """The next batch to send, or None: wait for one in flight (or, if none, all is done)."""
        n_slices = len(self.vol)
        if self.fullconv:
            if self.search.queued >= self.chunk:
                return self._batch(self.search.take(self.chunk), [])
            n_dev = self.scorer.mesh.devices.size
            while len(self.slabs) < n_dev and self.next_slice < n_slices:
                self._pull(ahead)
            if self.slabs:
                group = [self.slabs.popleft() for _ in range(min(n_dev, len(self.slabs)))]
                self.work["fullconv_slices"] += len(group)
                return ("slices", [s for s, _ in group], [],
                        proposals.submit_fullconv(self.scorer, np.stack([x for _, x in group])), None)
            if self.search.queued and not busy:
                return self._batch(self.search.take(self.chunk), [])
            return None
        while len(self.tiles) + self.search.queued < self.chunk and self.next_slice < n_slices:
            self._pull(ahead)
        n = len(self.tiles) + self.search.queued
        if n == 0 or (n < self.chunk and busy):
            return None
        keys = self.search.take(self.chunk)
        return self._batch(keys, [self.tiles.popleft() for _ in range(min(self.chunk - len(keys), len(self.tiles)))])

    # --------------------------------------------------------------- results

    def _finish(self, s: int, suspicion: np.ndarray) -> None:
        """A slice's proposal map is complete: its candidates go to the exact stage."""
        self.suspicion[s] = suspicion
        cands, self.slice_best[s] = proposals.slice_candidates(
            suspicion, self.vol[s], self.grid, self.cas, self.p, self.center, self.reduction, self.radius,
            approx=None if self.win.on_device else self.win.approx)
        self.finished += 1
        if self.cas.max_candidates is None:
            self.work["candidates"] += len(cands)
            self.search.add_slice(s, [(i, j) for i, j, _ in cands])
        else:  # the volume's best max_candidates: known once every slice is in
            self.capped += [(s, i, j, a) for i, j, a in cands]
            if self.finished == len(self.vol):
                best = sorted(self.capped, key=lambda c: -c[3])[:self.cas.max_candidates]
                self.work["candidates"] = len(best)
                for t in dict.fromkeys(c[0] for c in best):
                    self.search.add_slice(t, [(i, j) for u, i, j, _ in best if u == t])
        if self.finished == len(self.vol):
            self.work["proposal_s"] = time.perf_counter() - self.t0

    def _collect(self, job) -> None:
        kind, keys, tiles, wait, images = job
        t0 = time.perf_counter()
        if kind == "slices":
            for s, r in zip(keys, wait()):
                self._finish(s, proposals.enlarge(r, self.cas.proposal_scale, self.vol.shape[1:]))
            self.work["wait_s"] += time.perf_counter() - t0
            return
        res = wait()
        self.work["wait_s"] += time.perf_counter() - t0
        for (s, k), m in zip(tiles, res.maps[len(keys):]):
            slot = self.pending[s]
            slot[1][k] = m
            slot[2] -= 1
            if slot[2] == 0:
                del self.pending[s]
                self._finish(s, proposals.grid_map(slot[0], slot[1], self.cas, self.center, self.vol.shape[1:]))
        if keys:
            scores = res.scores[:len(keys)] if self.win.on_device else self.win.exact(images, res.maps[:len(keys)])
            self.search.deliver(keys, scores)

    def run(self) -> Dict[Tuple[int, int, int], float]:
        self.t0 = time.perf_counter()
        ahead = thread_prefetch(self._prepare, range(len(self.vol)), depth=4)
        flight: collections.deque = collections.deque()
        try:
            while True:
                while len(flight) < IN_FLIGHT:
                    job = self._next(ahead, busy=bool(flight))
                    if job is None:
                        break
                    self.work["batches"] += job[0] == "windows"
                    flight.append(job)
                if not flight:
                    return self.search.done
                self._collect(flight.popleft())
        finally:
            ahead.close()


# ----------------------------------------------------------------------------- entry points

def _settings(scorer, center, steps, reduction, batch_size):
    sc = scorer.cfg.score
    center = sc.center if center is None else (center or None)
    steps = int(sc.steps if steps is None else steps)
    reduction = sc.reduction if reduction is None else reduction
    parse_reduction(reduction)
    p = int(scorer.cfg.image_size)
    if center is not None and not 1 <= center <= p:
        raise ValueError(f"center window {center} must be between 1 and the patch size {p}")
    if batch_size is None:
        batch_size = min(sc.batch_size, CPU_CHUNK) if jax.default_backend() == "cpu" else sc.batch_size
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return center, steps, reduction, int(batch_size), p


def _runner(scorer: Any, chunk: int, steps: int, center: Optional[int], reduction: str, key: Any):
    if hasattr(scorer, "fixed_chunks"):
        return scorer.fixed_chunks(chunk, key=key, steps=steps, center=center, reduction=reduction)
    return _HostChunks(scorer, chunk, steps, center, reduction, key)


def screen_volume(scorer: Any, volume01: Any, geometry: Optional[Geometry] = None, *, top_k: int = 10,
                  center: Optional[int] = None, steps: Optional[int] = None, reduction: Optional[str] = None,
                  nms_radius: Optional[float] = None, calibration: Optional[calib.Calibration] = None,
                  batch_size: Optional[int] = None, key: Any = None, cascade: Optional[Cascade] = None,
                  name: str = "volume", variant: str = "btd", reference: Any = None,
                  **cascade_kw: Any) -> ScreenResult:
    """Screens a volume (S, H, W) (or one slice (H, W)) in [0, 1]; see :mod:`btd_jax.screen`.

    Args:
      scorer: a :class:`btd_jax.score.Scorer` (anything with ``cfg`` and ``fixed_chunks``, or with
        ``cfg`` and ``residual_map``; ``proposal='fullconv'`` also needs ``params``/``sched``/``mesh``).
      volume01: (S, H, W) or (H, W) in [0, 1].
      geometry: adds ``x_mm``/``y_mm``/``z_mm`` (LPS) and, for DICOM, ``sop_instance_uid``/``path``.
      top_k: findings kept, best first.
      center: k of the central window scored; None = the scorer config's ``score.center``
        (``center=0`` means the whole window).
      steps: reverse steps d; None = the config's.
      reduction: the pooling of :mod:`btd_jax.configs.reductions`; None = the config's.
      batch_size: windows per batch (None: the config's, at most :data:`CPU_CHUNK` on CPU); it
        changes no score.
      nms_radius: Chebyshev radius of non-max suppression in pixels (default P // 2).
      calibration: a scan-level :class:`~btd_jax.calibration.Calibration` from :func:`calibrate`.
      key: needed when ``steps > 1`` (window noise is drawn per window, whatever its batch).
      cascade: the cascade's settings (default: :class:`Cascade`'s defaults).
      name: how errors and the result name the volume.
      variant: the window score, a score variant that can score from one residual map per window
        (:mod:`btd_jax.scoring.variants`: 'btd', the paper's; 'oneclass'; 'two_sided'); one with a
        reference screens at the reference's settings (:mod:`~btd_jax.screen.variant`).
      reference: that variant's fitted reference or its JSON path (default: the workdir's).
      **cascade_kw: :class:`Cascade` fields that replace those of ``cascade``.
    """
    t0 = time.perf_counter()
    cas = dataclasses.replace(cascade or Cascade(), **cascade_kw)
    center, steps, reduction, batch_size, p = _settings(scorer, center, steps, reduction, batch_size)
    win = window_score(scorer, variant, reference, steps, center, reduction)
    if not win.on_device:  # a reference's settings
        steps, center, reduction = win.settings.steps, win.settings.center, win.settings.reduction
    if (cas.proposal_center or 0) > p:
        raise ValueError(f"proposal_center {cas.proposal_center} is larger than the patch size {p}")
    if cas.proposal == "fullconv" and steps != 1:
        raise ValueError("proposal='fullconv' is the d = 1 residual; use proposal='grid' with steps > 1")
    check_calibration(calibration, win, steps=steps, center=center, reduction=reduction)
    vol = check_volume(volume01, p, name)
    if geometry is not None and geometry.sop_instance_uids is not None and len(geometry.sop_instance_uids) != len(vol):
        raise DataError(f"{name}: {len(vol)} slices but the geometry describes {len(geometry.sop_instance_uids)}")
    radius = p // 2 if nms_radius is None else nms_radius
    run = _Run(vol, cas, scorer, _runner(scorer, batch_size, steps, center, reduction, key), p, win, radius)
    exact = run.run()
    found = findings(exact, run.grid, vol.shape, p, radius, top_k, geometry) if exact else []
    best = found[0]["score"] if found else float("-inf")
    if calibration is not None:
        for f in found:
            f["p_value"] = float(calibration.p_values([f["score"]])[0])
    seconds = time.perf_counter() - t0
    work = dict(run.work, exact_windows=len(exact), seconds=seconds, exact_s=seconds - run.work["proposal_s"])
    settings = {"patch": p, "center": center, "steps": steps, "reduction": reduction, "variant": variant,
                "nms_radius": radius, "top_k": top_k, "batch_size": batch_size, **dataclasses.asdict(cas)}
    return ScreenResult(found, run.suspicion, run.slice_best, decision(best, calibration), work, settings)


def calibrate(scorer: Any, real_volumes: Sequence[Any], target_fpr: float = 0.1, **screen_kw: Any) -> calib.Calibration:
    """Scan-level calibration: screens each real volume (S, H, W) in [0, 1] and fits the threshold on
    their best finding scores, so that ``target_fpr`` is the fraction of *real scans* flagged.

    ``screen_kw`` (center, steps, reduction, variant, reference, cascade fields ...) must match later
    screening; they are stored in the calibration's meta (a variant's reference by its identity).
    """
    best: List[float] = []
    settings: Dict[str, Any] = {}
    for i, v in enumerate(real_volumes):
        res = screen_volume(scorer, v, name=f"real scan {i}", **screen_kw)
        if not res.findings:
            raise DataError(f"real scan {i}: no window was scored (all below the tissue threshold?)")
        best.append(res.findings[0]["score"])
        settings = res.settings
    if not best:
        raise DataError("calibrate: no real scans given")
    variant = screen_kw.get("variant", "btd")
    ref = window_score(scorer, variant, screen_kw.get("reference"), settings["steps"], settings["center"],
                       settings["reduction"]).reference
    return calib.fit(np.asarray(best), target_fpr=target_fpr, level="scan", variant=variant, reference=ref,
                     score={k: settings[k] for k in ("steps", "center", "reduction")},
                     screen={k: v for k, v in settings.items()
                             if k not in ("steps", "center", "reduction", "batch_size", "variant")})

"""Feeding training and validation patches to the mesh as global arrays.

The data order is a pure function of (seed, step): the global index stream is the concatenation of
per-epoch permutations ``default_rng((seed, epoch)).permutation(N)``, and step ``s`` takes positions
``[s * A * B, (s + 1) * A * B)`` of it. A resumed run therefore sees the same batches as an
uninterrupted one, and every process can compute its own rows without talking to the others: it
gathers only the rows its devices hold and hands them to ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from btd_jax import diffusion
from btd_jax.configs import Config
from btd_jax.data.errors import DataError
from btd_jax.parallel import data_sharding
from btd_jax.train.step import batch_sharding

__all__ = ["check_patches", "global_indices", "TrainFeed", "ValFeed", "prefetch"]


def check_patches(x, cfg: Config, what: str) -> np.ndarray:
    """Validates patches against ``cfg`` and returns them as float32 ``(N, H, W, C)``.

    Accepts ``(N, H, W)`` (single channel) or ``(N, H, W, C)`` in [0, 1]; raises ``DataError`` naming
    ``what`` for an empty set, a wrong patch size or channel count, NaNs or values outside [0, 1].
    """
    x = np.asarray(x)
    size, c = cfg.image_size, cfg.model.channels
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"{what}: expected patches shaped (N, H, W) or (N, H, W, C), got shape {x.shape}")
    if x.shape[0] == 0:
        raise DataError(f"{what}: the dataset is empty (0 patches)")
    if x.shape[1:3] != (size, size):
        raise DataError(f"{what}: patches are {x.shape[1]}x{x.shape[2]} but config {cfg.name!r} expects "
                        f"{size}x{size} (set diffusion.image_size or cut patches of that size)")
    if x.shape[3] != c:
        raise DataError(f"{what}: patches have {x.shape[3]} channels but the model expects {c}")
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{what}: patches must be floats in [0, 1], got dtype {x.dtype}")
    x = x.astype(np.float32, copy=False)
    lo, hi = float(np.min(x)), float(np.max(x))
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1e-6 or hi > 1 + 1e-6:
        raise DataError(f"{what}: patch values must lie in [0, 1] (window/normalise first), got [{lo:.4g}, {hi:.4g}]")
    return x


class _EpochPermutations:
    """``permutation(epoch)`` of N for a seed, caching the last couple of epochs."""

    def __init__(self, seed: int, n: int):
        self.seed, self.n, self._cache = int(seed), int(n), {}

    def __call__(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            if len(self._cache) >= 2:
                self._cache.pop(min(self._cache))
            self._cache[epoch] = np.random.default_rng((self.seed, int(epoch))).permutation(self.n)
        return self._cache[epoch]


def global_indices(seed: int, step: int, n_data: int, count: int,
                   perms: Optional[_EpochPermutations] = None) -> np.ndarray:
    """Dataset indices ``(count,)`` of the images of step ``step`` (pure function of its arguments)."""
    perms = perms or _EpochPermutations(seed, n_data)
    pos = int(step) * int(count) + np.arange(count, dtype=np.int64)
    epoch, within = np.divmod(pos, n_data)
    out = np.empty(count, np.int64)
    for e in np.unique(epoch):
        sel = epoch == e
        out[sel] = perms(int(e))[within[sel]]
    return out


def _local_block(sharding: NamedSharding, shape: Tuple[int, ...], axis: int) -> slice:
    """The contiguous range of ``axis`` that this process's devices hold under ``sharding``."""
    spans = {(s[axis].start or 0, shape[axis] if s[axis].stop is None else s[axis].stop)
             for s in sharding.addressable_devices_indices_map(shape).values()}
    lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
    if sum(b - a for a, b in spans) != hi - lo:
        raise ValueError("this process's devices do not hold a contiguous block of the batch; "
                         "build the mesh with the devices ordered by process (parallel.make_mesh does)")
    return slice(lo, hi)


class TrainFeed:
    """Global ``(grad_accum, batch_size, H, W, C)`` training batches for step ``s`` over ``mesh``."""

    def __init__(self, patches: np.ndarray, cfg: Config, mesh: Mesh, seed: Optional[int] = None):
        tc = cfg.train
        self.data = patches
        self.accum, self.batch = tc.grad_accum, tc.batch_size
        self.seed = tc.seed if seed is None else seed
        self.shape = (self.accum, self.batch) + patches.shape[1:]
        self.sharding = batch_sharding(mesh)
        self.rows = _local_block(self.sharding, self.shape, axis=1)
        self._perms = _EpochPermutations(self.seed, len(patches))

    def host_batch(self, step: int) -> np.ndarray:
        """This process's rows ``(A, b_local, H, W, C)`` of step ``step``."""
        idx = global_indices(self.seed, step, len(self.data), self.accum * self.batch, self._perms)
        idx = idx.reshape(self.accum, self.batch)[:, self.rows]
        # Sorted gathers read memory-mapped arrays sequentially; the order is restored afterwards.
        flat = idx.reshape(-1)
        order = np.argsort(flat, kind="stable")
        gathered = np.empty((flat.size,) + self.data.shape[1:], np.float32)
        gathered[order] = self.data[flat[order]]
        return gathered.reshape(idx.shape + self.data.shape[1:])

    def __call__(self, step: int) -> jax.Array:
        return jax.make_array_from_process_local_data(self.sharding, self.host_batch(step), self.shape)


class ValFeed:
    """Held-out patches with fixed timesteps and noise, so validation losses are comparable over time.

    t is drawn from the training distribution of ``cfg`` and the noise is standard normal, both with
    NumPy from ``(seed, 7919)`` so they do not depend on the device count. The set is padded to a
    multiple of the chunk size with zero weights.
    """

    def __init__(self, patches: np.ndarray, cfg: Config, mesh: Mesh, chunk: int, max_images: int = 2048):
        x = patches[:max_images]
        n = len(x)
        rng = np.random.default_rng((cfg.train.seed, 7919))
        tc = cfg.train
        probs = diffusion.timestep_probs(cfg.diffusion.timesteps, tc.t_sampling, tc.t_max, tc.mixture_uniform_frac)
        t = rng.choice(cfg.diffusion.timesteps, size=n, p=probs).astype(np.int32)
        noise = rng.standard_normal(x.shape, dtype=np.float32)
        pad = (-n) % chunk
        rep = lambda a: np.concatenate([a, np.repeat(a[-1:], pad, axis=0)]) if pad else a  # noqa: E731
        self.x, self.t, self.noise = rep(np.asarray(x, np.float32)), rep(t), rep(noise)
        self.w = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
        self.n, self.chunk = n, chunk
        self.sharding = data_sharding(mesh)

    def chunks(self) -> Iterator[Sequence[jax.Array]]:
        for lo in range(0, len(self.x), self.chunk):
            arrays = (self.x, self.t, self.noise, self.w)
            shapes = [(self.chunk,) + a.shape[1:] for a in arrays]
            rows = _local_block(self.sharding, shapes[0], axis=0)
            yield [jax.make_array_from_process_local_data(self.sharding, a[lo:lo + self.chunk][rows], s)
                   for a, s in zip(arrays, shapes)]

    def loss(self, eval_fn: Callable, params) -> float:
        """Mean validation loss of ``params`` under ``eval_fn`` (:func:`step.make_eval_step`)."""
        total = sum(eval_fn(params, *arrays) for arrays in self.chunks())
        return float(total) / self.n


def prefetch(make: Callable[[int], jax.Array], steps: Sequence[int], depth: int = 2) -> Iterator[jax.Array]:
    """Yields ``make(s)`` for ``s`` in ``steps``, built ``depth`` steps ahead on a background thread.

    Host gathering and the host-to-device copy overlap with the device computing earlier steps.
    Errors in ``make`` are re-raised in the caller.
    """
    q: "queue.Queue" = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def work():
        try:
            for s in steps:
                if stop.is_set():
                    return
                q.put((True, make(s)))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put((False, e))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        for _ in steps:
            ok, item = q.get()
            if not ok:
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)

"""Feeding training and validation patches to the mesh as global arrays.

The data order is a pure function of (seed, step): the global index stream is the concatenation of
per-epoch permutations ``default_rng((seed, epoch)).permutation(N)``, and step ``s`` takes positions
``[s * A * B, (s + 1) * A * B)`` of it. A resumed run therefore sees the same batches as an
uninterrupted one, and every process can compute its own rows without talking to the others: it
gathers only the rows its devices hold and hands them to ``jax.make_array_from_process_local_data``.

:class:`TrainFeed` serves fixed patches (an array, memory-mapped or not, optionally a subset of its
rows); :class:`CropFeed` cuts a fresh crop per batch position every step from slices (a slice store
or the authors' CT folder), in worker processes (grain) or a background thread.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from btd_jax import diffusion
from btd_jax.configs import Config
from btd_jax.data import validate
from btd_jax.data.crops import loader, sampling as crops_lib
from btd_jax.parallel import data_sharding
from btd_jax.runtime.prefetch import thread_prefetch
from btd_jax.train.step import batch_sharding

__all__ = ["check_patches", "global_indices", "TrainFeed", "CropFeed", "ValFeed"]

_CHECK_CHUNK = 4096  # patches per value check: memory-mapped inputs are never read whole


def check_patches(x, cfg: Config, what: str) -> np.ndarray:
    """Validates patches against ``cfg`` and returns them as ``(N, H, W, C)`` without copying.

    Accepts ``(N, H, W)`` (single channel) or ``(N, H, W, C)`` floats in [0, 1] (with
    ``diffusion.auto_normalize`` off: any finite values, data already in the model's units such as
    scaled latents); raises ``DataError`` naming ``what`` for an empty set, a wrong patch size or
    channel count, NaNs or values out of range. Values are checked ``_CHECK_CHUNK`` patches at a
    time, so a memory-mapped file is never read into memory whole; batches are converted to float32
    when gathered.
    """
    x = validate.check_shape(x, what, size=cfg.image_size, channels=cfg.model.channels,
                             owner=f"config {cfg.name!r}")
    tol = 1e-6 if cfg.diffusion.auto_normalize else np.inf  # an infinite tolerance: finiteness only
    for lo in range(0, len(x), _CHECK_CHUNK):  # chunks: bounded memory for memory-mapped files
        validate.check_values(x[lo:lo + _CHECK_CHUNK], what, offset=lo, tol=tol)
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
    """Global ``(grad_accum, batch_size, H, W, C)`` training batches for step ``s`` over ``mesh``.

    ``patches`` may be memory-mapped: each step gathers only this process's rows. ``rows`` (optional)
    restricts training to those indices of ``patches`` without copying them.
    """

    def __init__(self, patches: np.ndarray, cfg: Config, mesh: Mesh, seed: Optional[int] = None,
                 rows: Optional[np.ndarray] = None):
        tc = cfg.train
        self.data = patches
        self.index = None if rows is None else np.asarray(rows, np.int64)
        self.n = len(patches) if rows is None else len(self.index)
        self.accum, self.batch = tc.grad_accum, tc.batch_size
        self.seed = tc.seed if seed is None else seed
        self.shape = (self.accum, self.batch) + patches.shape[1:]
        self.sharding = batch_sharding(mesh)
        self.rows = _local_block(self.sharding, self.shape, axis=1)
        self._perms = _EpochPermutations(self.seed, self.n)

    def host_batch(self, step: int) -> np.ndarray:
        """This process's rows ``(A, b_local, H, W, C)`` of step ``step``."""
        idx = global_indices(self.seed, step, self.n, self.accum * self.batch, self._perms)
        idx = idx.reshape(self.accum, self.batch)[:, self.rows]
        if self.index is not None:
            idx = self.index[idx]
        # Sorted gathers read memory-mapped arrays sequentially; the order is restored afterwards.
        flat = idx.reshape(-1)
        order = np.argsort(flat, kind="stable")
        gathered = np.empty((flat.size,) + self.data.shape[1:], np.float32)
        gathered[order] = self.data[flat[order]]
        return gathered.reshape(idx.shape + self.data.shape[1:])

    def __call__(self, step: int) -> jax.Array:
        return jax.make_array_from_process_local_data(self.sharding, self.host_batch(step), self.shape)

    def batches(self, steps: range, depth: int = 2) -> Iterator[jax.Array]:
        """The global batches of ``steps``, gathered ``depth`` steps ahead on a thread."""
        return thread_prefetch(self, steps, depth)


class CropFeed:
    """Global ``(grad_accum, batch_size, S, S, 1)`` batches of fresh crops, cut every step.

    Position ``p`` of step ``s`` trains on a crop that is a pure function of ``(seed, s, p)``
    (:mod:`btd_jax.data.crops.sampling`): a resumed run sees the crops of an uninterrupted one, and each
    process cuts only the crops of its own devices. Crops of a float16 store travel as float16 and
    are cast to float32 on the devices (exact). ``workers > 0``: cut in that many grain worker
    processes; 0: on a background thread.
    """

    def __init__(self, data: crops_lib.SliceSet, cfg: Config, mesh: Mesh, seed: Optional[int] = None,
                 workers: int = 0, depth: int = 2):
        tc = cfg.train
        if cfg.model.channels != 1:
            raise ValueError(f"training from slices needs a one-channel model, {cfg.name!r} has "
                             f"{cfg.model.channels}")
        size = cfg.image_size
        self.shape = (tc.grad_accum, tc.batch_size, size, size, 1)
        self.sharding = batch_sharding(mesh)
        cols = _local_block(self.sharding, self.shape, axis=1)
        self.make = crops_lib.HostBatches(data.src, data.rows, tc.seed if seed is None else seed,
                                          tc.grad_accum, tc.batch_size, cols,
                                          crops_lib.CropSpec(size, hflip=tc.hflip))
        self.workers, self.depth = int(workers), int(depth)
        self._cast = jax.jit(lambda x: x.astype(jnp.float32), out_shardings=self.sharding)

    def to_device(self, host: np.ndarray) -> jax.Array:
        x = jax.make_array_from_process_local_data(self.sharding, host, self.shape)
        return x if x.dtype == jnp.float32 else self._cast(x)

    def __call__(self, step: int) -> jax.Array:
        return self.to_device(self.make(step))

    def batches(self, steps: range) -> Iterator[jax.Array]:
        """The global batches of ``steps``; host batches from the workers (or this thread) are
        moved to the devices one step ahead on a background thread."""
        if self.workers <= 0:
            return thread_prefetch(self, steps, self.depth)
        host = loader.host_batches(self.make, steps, self.workers, self.depth)

        def run():
            try:
                yield from thread_prefetch(lambda _step: self.to_device(next(host)), steps, self.depth)
            finally:
                host.close()  # stops the worker processes (the prefetch thread has ended)
        return run()


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

"""Host batches built ahead of the training step: in worker processes (grain) or a thread.

``make(step) -> np.ndarray`` is a pure function of the step (:class:`sampling.HostBatches`), so the
order of the output never depends on how many workers built it, and a resumed run starts the same
stream at its step. With ``workers > 0`` the batches are made by ``grain``'s worker processes
(``MapDataset.range(...).map(make)...mp_prefetch``); ``make`` must then pickle. With
``workers = 0`` one background thread keeps ``depth`` batches ready
(:func:`btd_jax.runtime.prefetch.thread_prefetch`).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from btd_jax.runtime.prefetch import thread_prefetch

__all__ = ["host_batches", "grain_available"]


def grain_available() -> bool:
    try:
        import grain  # noqa: F401
    except ImportError:
        return False
    return True


def _grain_batches(make: Callable[[int], np.ndarray], steps: range, workers: int,
                   depth: int) -> Iterator[np.ndarray]:
    try:
        import grain
    except ImportError:
        raise ImportError("data loading in worker processes needs grain: pip install "
                          "'btd_jax[grain]' (or use 0 workers)") from None
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain reads its absl flags; outside an absl app use defaults
        flags.FLAGS.mark_as_parsed()
    ds = grain.MapDataset.range(steps.start, steps.stop, steps.step).map(make)
    it = iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=1))
              .mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                        per_worker_buffer_size=depth)))
    try:
        for batch in it:
            # A plain copy: grain's shared-memory block is released as soon as it is read.
            yield np.array(batch)
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def host_batches(make: Callable[[int], np.ndarray], steps: range, workers: int = 0,
                 depth: int = 2) -> Iterator[np.ndarray]:
    """``make(step)`` for every step of ``steps``, in order, made ahead of time.

    Args:
      make: picklable ``step -> batch`` (e.g. :class:`sampling.HostBatches`).
      steps: the steps to make.
      workers: grain worker processes (0: one background thread in this process).
      depth: batches kept ready (per worker with grain).
    """
    if workers > 0:
        return _grain_batches(make, steps, int(workers), depth)
    return thread_prefetch(make, steps, depth)

"""Wall and CPU time of a blocking call, the way every btd_jax benchmark reports it::

    times = timing.time_runs(lambda: fn(x).block_until_ready(), min_time=3.0)
    row = timing.throughput(times, batch=64)      # patches_per_s, cpu_s_per_patch, runs, ...

Standard library only, so a worker in an environment without JAX (the PyTorch reference of
``experiments/torch_reference.py``) measures in exactly the same way.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

__all__ = ["load_average", "time_runs", "throughput"]


def load_average() -> Optional[List[float]]:
    """The machine's 1/5/15-minute load averages (None where the OS has none): numbers on a shared
    machine move with it."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def time_runs(fn: Callable[[], object], min_time: float, min_iters: int = 2) -> List[Tuple[float, float]]:
    """Runs ``fn()`` (blocking) repeatedly for at least ``min_time`` s; returns per-run (wall, CPU) seconds.

    CPU = this process's user + system time over all threads: on a shared machine it shows the work
    done per item even when other processes take the cores (wall time is what users get)."""
    times = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < min_time:
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    return times


def throughput(times: List[Tuple[float, float]], batch: int) -> Dict[str, float]:
    """Median/best seconds per batch, patches per second and CPU seconds per patch of ``times``."""
    wall = [t for t, _ in times]
    med = statistics.median(wall)
    return dict(batch=batch, runs=len(times), sec_per_batch_median=med, sec_per_batch_best=min(wall),
                patches_per_s=batch / med, patches_per_s_best=batch / min(wall),
                cpu_s_per_patch=statistics.median(c for _, c in times) / batch)

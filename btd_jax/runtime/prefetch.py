"""Work made ahead of its use on one background thread (host batches, screening windows, device copies)."""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator, Sequence, TypeVar

__all__ = ["thread_prefetch"]

T = TypeVar("T")


def thread_prefetch(make: Callable[[int], T], steps: Sequence[int], depth: int = 2) -> Iterator[T]:
    """``make(s)`` for ``s`` in ``steps`` (a ``range`` or another sequence), in order, built ``depth`` ahead
    on a background thread; errors in ``make`` are re-raised in the caller. Numpy releases the GIL while
    copying, so on small hosts this overlaps host work with device steps; closing the iterator stops the
    thread."""
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
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

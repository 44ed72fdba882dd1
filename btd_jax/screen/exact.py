"""The exact stage as a stream of work: which windows to score next, given the scores so far.

Windows are keys ``(slice, grid row index, grid col index)`` on the exact grid. Per slice, the
shortlist is scored first (when it is longer than ``per_slice``), its best ``per_slice`` become the
heads; each head's neighbourhood (within ``refine`` grid steps) is scored, and with ``climb`` the head
moves to its best neighbour until it is a local maximum (at most ``max_climb`` moves).

:class:`ExactSearch` never waits for a whole round: a slice's next windows are queued as soon as the
scores they depend on are delivered, so one fixed-size batch can carry windows of many slices at
different stages. A head's path depends only on the scores of its own neighbourhoods, which do not
depend on batching, so the windows scored are the same as in round-by-round search (:func:`search`).
"""

from __future__ import annotations

import collections
from typing import Callable, Dict, Iterable, List, Sequence, Tuple

import numpy as np

from btd_jax.screen.cascade import Cascade

__all__ = ["Key", "hood", "ExactSearch", "search"]

Key = Tuple[int, int, int]


def hood(key: Key, n_rows: int, n_cols: int, refine: int) -> List[Key]:
    """(slice, i, j) and its grid neighbours within ``refine`` steps, itself first, then row-major."""
    s, i, j = key
    return [key] + [(s, a, b) for a in range(max(i - refine, 0), min(i + refine, n_rows - 1) + 1)
                    for b in range(max(j - refine, 0), min(j + refine, n_cols - 1) + 1) if (a, b) != (i, j)]


class ExactSearch:
    """Exact-stage bookkeeping: :meth:`add_slice` candidates, :meth:`take` keys to score,
    :meth:`deliver` their scores; ``done`` maps every scored key to its score."""

    def __init__(self, cas: Cascade, n_rows: int, n_cols: int):
        self.cas, self.n_rows, self.n_cols = cas, n_rows, n_cols
        self.done: Dict[Key, float] = {}
        self._queue: collections.deque = collections.deque()
        self._asked: set = set()  # queued, in flight or done
        self._waiting: Dict[Key, List[List]] = {}  # key -> [missing count, callback] records
        self._walked: Dict[Key, int] = {}  # head position -> most rounds a walk from it had left

    @property
    def queued(self) -> int:
        """Keys waiting to be taken."""
        return len(self._queue)

    def take(self, n: int) -> List[Key]:
        """Up to ``n`` keys to score, oldest first."""
        return [self._queue.popleft() for _ in range(min(n, len(self._queue)))]

    def add_slice(self, s: int, cells: Sequence[Tuple[int, int]]) -> None:
        """A slice's candidates (grid row, col index), best first by the approximate score."""
        heads = [(s, int(i), int(j)) for i, j in cells]
        if not heads:
            return
        if (self.cas.shortlist or self.cas.per_slice) > self.cas.per_slice:
            def rerank():
                best = sorted(heads, key=lambda k: -self.done[k])[:self.cas.per_slice]
                for h in best:
                    self._walk(h, self.cas.rounds)
            self._need(heads, rerank)
        else:
            for h in heads:
                self._walk(h, self.cas.rounds)

    def deliver(self, keys: Iterable[Key], scores: Iterable[float]) -> None:
        """Scores of taken keys; queues whatever they unlock."""
        ready = []
        for k, v in zip(keys, scores):
            self.done[k] = float(v)
            for rec in self._waiting.pop(k, ()):
                rec[0] -= 1
                if rec[0] == 0:
                    ready.append(rec[1])
        for fn in ready:
            fn()

    def _need(self, keys: Sequence[Key], then: Callable[[], None]) -> None:
        missing = [k for k in dict.fromkeys(keys) if k not in self.done]
        if not missing:
            then()
            return
        rec = [len(missing), then]
        for k in missing:
            if k not in self._asked:
                self._asked.add(k)
                self._queue.append(k)
            self._waiting.setdefault(k, []).append(rec)

    def _walk(self, head: Key, rounds: int) -> None:
        if self._walked.get(head, 0) >= rounds:  # the same path was (or is being) walked with as many moves
            return
        self._walked[head] = rounds
        near = hood(head, self.n_rows, self.n_cols, self.cas.refine)

        def move():
            best = max(near, key=self.done.__getitem__)
            if best != head and rounds > 1:
                self._walk(best, rounds - 1)

        self._need(near, move)


def search(score_fn: Callable[[List[Key]], np.ndarray], cands: Sequence[Tuple[int, int, int, float]],
           grid: Tuple[np.ndarray, np.ndarray], cas: Cascade) -> Dict[Key, float]:
    """Round by round: ``score_fn`` gets every queued key at once. ``cands``: (slice, i, j, approx)
    best first; ``grid``: the exact grid's row and col starts -> {key: exact score}."""
    ex = ExactSearch(cas, len(grid[0]), len(grid[1]))
    by_slice: Dict[int, List[Tuple[int, int]]] = {}
    for s, i, j, _ in cands:
        by_slice.setdefault(s, []).append((i, j))
    for s, cells in by_slice.items():
        ex.add_slice(s, cells)
    while ex.queued:
        keys = ex.take(ex.queued)
        ex.deliver(keys, score_fn(keys))
    return ex.done

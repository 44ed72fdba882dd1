"""Residual poolings, one registry: the grammar, validation, help text and both implementations.

A reduction turns the squared residuals of a window, flattened to ``(N, M)``, into ``(N,)`` scores.
Its name is ``'kind'`` or ``'kind:ARG'`` (``'percentile:99'``). Every implementation is written
once against an array namespace ``xp`` (``numpy`` on the host, ``jax.numpy`` on device), so the two
cannot drift apart. To add one, call :func:`register` in this module and test it in
``tests/configs/test_reductions.py``; the config validation, ``--reduction`` help of every command,
evaluation column names and the reference table of the docs read it from here::

    register(Reduction("median", lambda xp, flat, arg: xp.median(flat, axis=-1), "median of the window"))
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

__all__ = ["Reduction", "REDUCTIONS", "register", "parse", "parse_reduction", "apply", "label", "grammar",
           "markdown_table"]

# (xp, flat (N, M), arg) -> (N,)
PoolFn = Callable[[Any, Any, float], Any]


@dataclasses.dataclass(frozen=True)
class Reduction:
    """One pooling: ``fn(xp, flat, arg)``; ``arg_range`` is the closed range of ``ARG`` (None: no ARG).

    ``short``: the suffix of evaluation columns (``'p'`` gives ``center32_p99``); ``''`` for the
    paper's default, whose columns carry no suffix.
    """

    name: str
    fn: PoolFn
    help: str
    arg_range: Optional[Tuple[float, float]] = None
    short: Optional[str] = None

    def spelling(self) -> str:
        return f"{self.name}:Q" if self.arg_range else self.name


REDUCTIONS: Dict[str, Reduction] = {}


def register(reduction: Reduction) -> Reduction:
    """Adds ``reduction`` to :data:`REDUCTIONS` (a name may be registered once)."""
    if reduction.name in REDUCTIONS or ":" in reduction.name:
        raise ValueError(f"reduction name {reduction.name!r} is taken or contains ':'")
    REDUCTIONS[reduction.name] = reduction
    return reduction


def grammar() -> str:
    """Human-readable list of valid spellings, for help texts and error messages."""
    parts = []
    for r in REDUCTIONS.values():
        rng = f" ({r.arg_range[0]:g} <= Q <= {r.arg_range[1]:g})" if r.arg_range else ""
        parts.append(f"'{r.spelling()}'{rng}")
    return ", ".join(parts[:-1]) + f" or {parts[-1]}" if len(parts) > 1 else parts[0]


def parse(reduction: str) -> Tuple[Reduction, float]:
    """``'percentile:99'`` -> (its :class:`Reduction`, 99.0); ValueError naming the grammar otherwise."""
    kind, sep, arg = str(reduction).partition(":")
    r = REDUCTIONS.get(kind)
    if r is not None and r.arg_range is None and not sep:
        return r, 0.0
    if r is not None and r.arg_range is not None and sep:
        try:
            q = float(arg)
        except ValueError:
            q = float("nan")
        if r.arg_range[0] <= q <= r.arg_range[1]:
            return r, q
    raise ValueError(f"unknown reduction {reduction!r}; use {grammar()}")


def parse_reduction(reduction: str) -> Tuple[str, float]:
    """``'percentile:99'`` -> ``('percentile', 99.0)``; ``'mean'`` -> ``('mean', 0.0)``."""
    r, q = parse(reduction)
    return r.name, q


def apply(flat, reduction: str = "mean", xp: Any = None):
    """(N, M) values -> (N,) pooled with ``reduction``, in ``xp`` (default NumPy)."""
    r, q = parse(reduction)
    return r.fn(np if xp is None else xp, flat, q)


def label(reduction: str) -> str:
    """Column suffix of ``reduction``: '' for 'mean', 'max', 'p99' for 'percentile:99'."""
    r, q = parse(reduction)
    short = r.name if r.short is None else r.short
    if not short:
        return ""
    return f"{short}{q:g}" if r.arg_range else short


def markdown_table() -> str:
    """The registry as a Markdown table (spelling | what it does), for the docs."""
    rows = ["| `--reduction` | pools the (central) window's squared residuals by |", "|---|---|"]
    rows += [f"| `{r.spelling()}` | {r.help} |" for r in REDUCTIONS.values()]
    return "\n".join(rows) + "\n"


register(Reduction("mean", lambda xp, flat, _: flat.mean(axis=-1), "their mean (the paper)", short=""))
register(Reduction("max", lambda xp, flat, _: flat.max(axis=-1),
                   "their maximum: a small tampered region moves the top long before the mean"))
register(Reduction("percentile", lambda xp, flat, q: xp.percentile(flat, q, axis=-1),
                   "their Q-th percentile (linear interpolation, as `numpy.percentile`)", (0.0, 100.0), short="p"))

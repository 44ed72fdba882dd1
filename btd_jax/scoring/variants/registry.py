"""The registry of score variants: each is one :class:`Variant` entry in its own module.

A variant turns images into ``(N,)`` scores (higher = more likely fake) under the resolved
:class:`~btd_jax.configs.ScoreConfig`. One that needs statistics of real patches has a ``fit``
(real images -> a reference object with ``to_dict()``) and a ``decode`` (the saved record -> that
object); the reference file format is :mod:`.reference`. ``Scorer.score(variant=...)``, ``btd-jax
score --variant`` (choices and help), ``evaluate``, ``screen`` and the docs all read this table.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np

from btd_jax.configs import ScoreConfig

__all__ = ["Call", "Variant", "VARIANTS", "register", "get", "names", "markdown_table"]


@dataclasses.dataclass(frozen=True)
class Call:
    """What one scoring call adds to the settings.

    ``key``: PRNG key (needed when a step adds noise); ``start_ts``: start times of multi-time
    variants; ``reference``: a fitted reference (decoded); ``progress``: called with patches done;
    ``options``: variant-specific fitting options (e.g. two_sided's ``base``).
    """

    key: Any = None
    start_ts: Optional[Tuple[int, ...]] = None
    reference: Any = None
    progress: Optional[Callable[[float], None]] = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


ScoreFn = Callable[[Any, Any, ScoreConfig, Call], np.ndarray]
FitFn = Callable[[Any, Any, ScoreConfig, Call], Any]
MapsFn = Callable[[np.ndarray, np.ndarray, ScoreConfig, Any], np.ndarray]


@dataclasses.dataclass(frozen=True)
class Variant:
    """One score variant: ``score(model, images, settings, call) -> (N,)``; with a reference,
    ``fit(model, real_images, settings, call) -> reference``, ``decode(record) -> reference`` and the
    ``reference_file`` name it has in a workdir. ``from_maps(images, maps, settings, reference) -> (N,)``
    scores windows from their images (N, H, W[, C]) and one residual map each (N, H, W, made with
    ``settings``), so that screening can score exact and proxy maps alike; None where a variant
    needs more than one map per window."""

    name: str
    help: str
    score: ScoreFn
    fit: Optional[FitFn] = None
    decode: Optional[Callable[[Dict[str, Any]], Any]] = None
    reference_file: str = "score_reference.json"  # its file in a workdir, found there by default
    from_maps: Optional[MapsFn] = None

    @property
    def needs_reference(self) -> bool:
        return self.fit is not None


VARIANTS: Dict[str, Variant] = {}


def register(variant: Variant) -> Variant:
    """Adds ``variant`` to :data:`VARIANTS` (a name may be registered once)."""
    if variant.name in VARIANTS:
        raise ValueError(f"score variant {variant.name!r} is already registered")
    if (variant.fit is None) != (variant.decode is None):
        raise ValueError(f"score variant {variant.name!r}: give both fit and decode, or neither")
    VARIANTS[variant.name] = variant
    return variant


def names() -> Tuple[str, ...]:
    return tuple(VARIANTS)


def get(name: str) -> Variant:
    """The variant called ``name``; ValueError naming the valid ones otherwise."""
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown score variant {name!r}; valid ones are {', '.join(VARIANTS)}") from None


def markdown_table() -> str:
    """The registry as a Markdown table, for the docs."""
    rows = ["| `--variant` | score | reference | screening |", "|---|---|---|---|"]
    rows += [f"| `{v.name}` | {v.help} | {'fitted on real patches' if v.needs_reference else '-'} | "
             f"{'yes' if v.from_maps is not None else '-'} |" for v in VARIANTS.values()]
    return "\n".join(rows) + "\n"

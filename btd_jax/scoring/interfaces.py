"""The types scoring hands out and accepts (no JAX import): ``ScoreResult`` and ``ResidualModel``."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Protocol, runtime_checkable

import numpy as np

__all__ = ["ScoreResult", "ResidualModel"]


class ScoreResult(NamedTuple):
    """Scores (N,) float32 and, when asked for, residual maps (N, H, W) float32 (else None)."""

    scores: np.ndarray
    maps: Optional[np.ndarray]


@runtime_checkable
class ResidualModel(Protocol):
    """Anything that gives squared residual maps: ``residual_map(images, **kw) -> (N, H, W)``.

    A ``Scorer`` is one; localisation, evaluation and the score variants accept any.
    """

    def residual_map(self, images: Any, **kw: Any) -> np.ndarray: ...

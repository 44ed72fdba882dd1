"""``btd``: the paper's score, the residual at ``start_t`` pooled over the (central) window."""

from __future__ import annotations

import numpy as np

from btd_jax.configs import ScoreConfig
from btd_jax.scoring.variants.maps import energy_maps, map_options, pool_maps
from btd_jax.scoring.variants.registry import Call, Variant, register

__all__ = ["score", "from_maps"]


def score(model, images, s: ScoreConfig, call: Call) -> np.ndarray:
    """(N,) float64 pooled residual energies of one start time."""
    maps = energy_maps(model, images, base="btd", key=call.key, steps=s.steps, start_t=s.start_t,
                       batch_size=s.batch_size, progress=call.progress, **map_options(s))
    return pool_maps(maps, s.center, s.reduction)


def from_maps(images, maps, s: ScoreConfig, reference=None) -> np.ndarray:
    """Windows' residual maps (N, H, W) -> (N,) pooled like :func:`score`."""
    return pool_maps(maps, s.center, s.reduction)


register(Variant("btd", "the paper: the residual of d reverse steps from the image, pooled by --reduction", score,
                 from_maps=from_maps))

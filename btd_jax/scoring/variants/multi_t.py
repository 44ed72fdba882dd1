"""``multi_t``: the residual map averaged over several small start times, then pooled.

The t = 0 step alone sees only the finest noise scale; one reverse step from each of a few start
times (t > 0 adds the posterior noise, so a key is needed) gives a less noisy, multi-scale estimate
of how far from the manifold of real patches the patch is.
"""

from __future__ import annotations

import numpy as np

from btd_jax.configs import ScoreConfig
from btd_jax.scoring.variants.maps import DEFAULT_START_TS, map_options, multi_t_maps, pool_maps
from btd_jax.scoring.variants.registry import Call, Variant, register

__all__ = ["score"]


def score(model, images, s: ScoreConfig, call: Call) -> np.ndarray:
    """(N,) float64: the maps of ``call.start_ts`` (default 0..3) averaged, then pooled."""
    maps = multi_t_maps(model, images, start_ts=call.start_ts or DEFAULT_START_TS, key=call.key, steps=s.steps,
                        batch_size=s.batch_size, progress=call.progress, **map_options(s))
    return pool_maps(maps, s.center, s.reduction)


register(Variant("multi_t", "the residual averaged over --start_ts (default 0 1 2 3), then pooled", score))

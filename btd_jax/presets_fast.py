"""Fast-training presets (issue 9): the paper's models trained for the regime BTD scores in.

BTD scores with one reverse step at t = 0, yet the paper draws training t uniformly from 1000 steps,
so ~1% of its updates teach that regime. ``<base>-fast`` presets keep the base preset's model,
diffusion, optimiser and score settings and change only the training timestep law to the one that
won ``experiments/training_schedule.py`` (see ``experiments/results/training_schedule*.json``), and,
the residual pooling that won ``experiments/score_variants.py`` (``score.reduction``: the 99th
percentile of the residual map instead of its mean):

    cfg = btd_jax.configs.get("ct-fast")    # == ct with train.t_sampling / t_max below

Measured on the offline demo benchmark (16 px CT patches, dim-8 U-Net, 3 seeds): at 2000 steps the
truncated law beats uniform on every tamper style and seed (+0.02 to +0.22 AUC), and at 400 steps it
already exceeds uniform's 2000-step AUC on every style (3-seed means). The ``truncated`` law never trains t >= t_max: use
``mixture`` (``train.t_sampling='mixture'``) if you score with d > 1 or start_t >= t_max.

This module does not import :mod:`btd_jax.configs` (which calls :func:`fast_presets` while building
its preset table); it only derives new frozen configs from the ones it is given.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping

__all__ = ["FAST_TRAIN", "FAST_SCORE", "FAST_BASES", "fast_presets"]

# The measured winner (experiments/results/training_schedule.json); see the README section
# "Training for the score you use".
FAST_TRAIN: Dict[str, Any] = {"t_sampling": "truncated", "t_max": 10}
FAST_SCORE: Dict[str, Any] = {"reduction": "percentile:99"}
FAST_BASES = ("ct", "mri", "ct8")


def fast_presets(base: Mapping[str, Any]) -> Dict[str, Any]:
    """``{'<name>-fast': config}`` for every name of :data:`FAST_BASES` present in ``base``.

    Args:
      base: preset name -> :class:`btd_jax.configs.Config` (the table being built in ``configs``).
    Returns:
      new configs, equal to their base except ``name`` and the fields in :data:`FAST_TRAIN` (``train``)
      and :data:`FAST_SCORE` (``score``).
    """
    out = {}
    for name in FAST_BASES:
        if name in base:
            cfg = base[name]
            score = dataclasses.replace(cfg.score, **FAST_SCORE)
            out[f"{name}-fast"] = dataclasses.replace(cfg, name=f"{name}-fast", score=score,
                                                      train=dataclasses.replace(cfg.train, **FAST_TRAIN))
    return out

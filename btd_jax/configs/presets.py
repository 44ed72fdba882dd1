"""The named presets, in one table: the paper's models, a tiny test model, the demo, and ``-fast``.

* ``ct`` / ``mri``: the authors' U-Nets (dim 32, 96 px CT, 128 px MRI) and lucidrains ``Trainer``
  recipe; ``ct8``: the ct layout at dim 8.
* ``tiny``: 16 px, dim 8, 100 timesteps; what the tests train.
* ``demo``: what ``btd-jax demo`` trains (32 px, dim 8, low-t training for 800 steps on 2 CPU
  cores); ``demo-quick``: its 16 px pipeline check.
* ``<base>-fast`` (ct, mri, ct8): BTD scores with one reverse step at t = 0, yet the paper draws
  training t uniformly from 1000 steps, so ~1% of its updates teach that regime. The fast presets
  keep the base's model, diffusion, optimiser and scoring and change only the training timestep law
  (:data:`FAST_TRAIN`, the winner of ``experiments/training_schedule.py``) and the residual pooling
  (:data:`FAST_SCORE`, the 99th percentile, the winner of ``experiments/score_variants.py``). The
  ``truncated`` law never trains t >= t_max: use ``train.t_sampling='mixture'`` to score with d > 1
  or start_t >= t_max.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Tuple

from btd_jax.configs.schema import Config, DiffusionConfig, ModelConfig, ScoreConfig, TrainConfig, from_json

__all__ = ["NAMES", "FAST_TRAIN", "FAST_SCORE", "FAST_BASES", "get", "load"]

FAST_TRAIN: Dict[str, Any] = {"t_sampling": "truncated", "t_max": 10}
FAST_SCORE: Dict[str, Any] = {"reduction": "percentile:99"}
FAST_BASES = ("ct", "mri", "ct8")


def _paper() -> Dict[str, Config]:
    ct = Config("ct", "CT", ModelConfig(dim=32), DiffusionConfig(image_size=96))
    return {
        "ct": ct,
        "mri": Config("mri", "MRI", ModelConfig(dim=32), DiffusionConfig(image_size=128)),
        "ct8": dataclasses.replace(ct, name="ct8", model=ModelConfig(dim=8)),
    }


def _tiny() -> Config:
    return Config("tiny", "CT", ModelConfig(dim=8, dim_mults=(1, 2), attn_heads=2, attn_dim_head=8),
                  DiffusionConfig(image_size=16, timesteps=100, sampling_timesteps=10),
                  TrainConfig(batch_size=8, grad_accum=1, learning_rate=1e-3, ema_update_after_step=0,
                              num_steps=20, log_every=5, eval_every=10, checkpoint_every=10),
                  ScoreConfig(batch_size=16))


def _demo() -> Dict[str, Config]:
    model = ModelConfig(dim=8, dim_mults=(1, 2, 4), full_attn=(False, False, True), attn_heads=2, attn_dim_head=16)
    diffusion = DiffusionConfig(image_size=32, timesteps=1000, sampling_timesteps=250)
    train = TrainConfig(learning_rate=2e-3, batch_size=16, grad_accum=1, num_steps=800, warmup_steps=50,
                        lr_schedule="cosine", ema_decay=0.995, ema_update_every=1, ema_update_after_step=0,
                        t_sampling="lowt", t_max=10, log_every=50, eval_every=10 ** 9, checkpoint_every=10 ** 9,
                        keep_checkpoints=1)
    quick_model = ModelConfig(dim=8, dim_mults=(1, 2), full_attn=(False, True), attn_heads=2, attn_dim_head=8)
    return {
        "demo": Config("demo", "CT", model, diffusion, train, ScoreConfig(steps=1, center=16)),
        "demo-quick": Config("demo-quick", "CT", quick_model, dataclasses.replace(diffusion, image_size=16),
                             dataclasses.replace(train, num_steps=4, batch_size=8, warmup_steps=0, log_every=2),
                             ScoreConfig(steps=1, center=8)),
    }


def _fast(cfg: Config) -> Config:
    """``cfg`` renamed ``<name>-fast`` with :data:`FAST_TRAIN` and :data:`FAST_SCORE` applied."""
    return dataclasses.replace(cfg, name=f"{cfg.name}-fast", train=dataclasses.replace(cfg.train, **FAST_TRAIN),
                               score=dataclasses.replace(cfg.score, **FAST_SCORE))


_PRESETS: Dict[str, Config] = {**_paper(), "tiny": _tiny(), **_demo()}
_PRESETS.update({f"{name}-fast": _fast(_PRESETS[name]) for name in FAST_BASES})
NAMES: Tuple[str, ...] = tuple(_PRESETS)


def get(name: str) -> Config:
    """Returns the preset called ``name``; raises ``KeyError`` naming the valid presets otherwise."""
    try:
        return _PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown config {name!r}; valid names are {', '.join(NAMES)}") from None


def load(name_or_path: str) -> Config:
    """A preset by name, or the config in a JSON file (e.g. a workdir's ``config.json``).

    Raises KeyError for a name that is neither a preset nor an existing file, ValueError for a file
    that is not a valid config.
    """
    name_or_path = str(name_or_path)
    if name_or_path in _PRESETS or not os.path.isfile(name_or_path):
        try:
            return get(name_or_path)
        except KeyError:
            raise KeyError(f"unknown config {name_or_path!r}: not a preset nor a JSON config file; "
                           f"valid names are {', '.join(NAMES)}") from None
    with open(name_or_path) as f:
        text = f.read()
    try:
        return from_json(text)
    except (ValueError, TypeError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ValueError(f"{name_or_path}: not a valid btd-jax config ({msg})") from None

"""Configuration: frozen dataclasses (:mod:`.schema`) and the named presets (:mod:`.presets`).

    from btd_jax import configs
    cfg = configs.get("ct")                                  # a preset; configs.NAMES lists them
    cfg = configs.load("runs/ct/config.json")                # a preset name or a JSON config file
    cfg = configs.override(cfg, {"train.batch_size": "32"})  # strings parsed by the field's type
"""

from btd_jax.configs import reductions
from btd_jax.configs.presets import FAST_BASES, FAST_SCORE, FAST_TRAIN, NAMES, get, load
from btd_jax.configs.schema import (ARCH_VERSIONS, BETA_SCHEDULES, DTYPES, LR_SCHEDULES, MODALITIES, OBJECTIVES,
                                    SAMPLERS, SECTIONS, T_SAMPLINGS, Config, DiffusionConfig, ModelConfig,
                                    ScoreConfig, TrainConfig, field_type, from_dict, from_json, override,
                                    parse_assignments, parse_reduction, parse_value, to_dict, to_json)

__all__ = [
    "ModelConfig", "DiffusionConfig", "TrainConfig", "ScoreConfig", "Config", "SAMPLERS", "parse_reduction",
    "NAMES", "get", "load", "override", "parse_assignments", "parse_value", "to_dict", "from_dict", "to_json",
    "from_json", "reductions",
]

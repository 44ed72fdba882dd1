"""The configuration schema: frozen dataclasses, the lists of valid names, overrides and JSON.

Configuration is read at the entry points (CLI, experiments, ``Scorer``) only; the maths
(``models``, ``diffusion``, ``scoring``) takes explicit arguments. Change a config with
``dataclasses.replace`` or :func:`override`, whose string values are parsed by each field's declared
type (so command lines can pass them)::

    cfg = override(cfg, {"train.batch_size": 32, "model.dtype": "bfloat16", "model.dim_mults": "1,2,4"})
"""

from __future__ import annotations

import dataclasses
import json
import numbers
import typing
from typing import Any, ClassVar, Dict, Mapping, Optional, Sequence, Tuple, Union

from btd_jax.configs import reductions
from btd_jax.configs.reductions import parse_reduction
from btd_jax.configs.values import TypeMismatch, convert, type_name

__all__ = [
    "ModelConfig", "DiffusionConfig", "TrainConfig", "ScoreConfig", "Config", "SECTIONS",
    "ARCH_VERSIONS", "OBJECTIVES", "BETA_SCHEDULES", "T_SAMPLINGS", "LR_SCHEDULES", "DTYPES", "SAMPLERS",
    "MODALITIES", "parse_reduction", "field_type", "parse_value", "parse_assignments", "override",
    "to_dict", "from_dict", "to_json", "from_json",
]

# The valid names, defined here once; schedules, diffusion, scoring and training import them.
ARCH_VERSIONS = ("v1", "v2")
OBJECTIVES = ("pred_noise", "pred_x0", "pred_v")
BETA_SCHEDULES = ("linear", "cosine", "sigmoid")
T_SAMPLINGS = ("uniform", "truncated", "mixture", "lowt")
LR_SCHEDULES = ("constant", "cosine")
DTYPES = ("float32", "bfloat16")
SAMPLERS = ("ddpm", "ddim")
MODALITIES = ("CT", "MRI")


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """lucidrains ``Unet`` arguments; ``version`` picks the 1.8.x ('v1') or 2.x ('v2') generation."""

    dim: int = 32
    init_dim: Optional[int] = None
    out_dim: Optional[int] = None
    dim_mults: Tuple[int, ...] = (1, 2, 4, 8)
    channels: int = 1
    self_condition: bool = False
    resnet_block_groups: int = 8
    learned_variance: bool = False
    learned_sinusoidal_cond: bool = False
    random_fourier_features: bool = False
    learned_sinusoidal_dim: int = 16
    sinusoidal_pos_emb_theta: int = 10000
    attn_dim_head: int = 32
    attn_heads: int = 4
    # None = lucidrains default: full attention in the last stage only (and always in the middle).
    full_attn: Optional[Tuple[bool, ...]] = None
    num_mem_kv: int = 4  # v2 only
    version: str = "v1"
    dtype: str = "float32"  # compute dtype; parameters stay float32

    def __post_init__(self):
        _check(self.version in ARCH_VERSIONS, f"model.version must be one of {ARCH_VERSIONS}, got {self.version!r}")
        _check(self.dtype in DTYPES, f"model.dtype must be one of {DTYPES}, got {self.dtype!r}")
        _check(self.dim > 0 and self.channels > 0, "model.dim and model.channels must be positive")
        _check(len(self.dim_mults) >= 1, "model.dim_mults must not be empty")
        if self.full_attn is not None:
            _check(len(self.full_attn) == len(self.dim_mults),
                   f"model.full_attn has {len(self.full_attn)} entries but dim_mults has {len(self.dim_mults)}")

    @property
    def num_stages(self) -> int:
        return len(self.dim_mults)

    @property
    def full_attn_per_stage(self) -> Tuple[bool, ...]:
        if self.full_attn is None:
            return (False,) * (self.num_stages - 1) + (True,)
        return tuple(bool(a) for a in self.full_attn)


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    """lucidrains ``GaussianDiffusion`` arguments (1.8.3 defaults except where the paper differs)."""

    image_size: int = 96
    timesteps: int = 1000
    sampling_timesteps: int = 250
    objective: str = "pred_noise"
    beta_schedule: str = "sigmoid"
    # Extra keyword arguments of the schedule function, e.g. (("start", -3.0), ("tau", 1.0)).
    schedule_kwargs: Tuple[Tuple[str, float], ...] = ()
    ddim_sampling_eta: float = 0.0
    auto_normalize: bool = True
    offset_noise_strength: float = 0.0
    min_snr_loss_weight: bool = False
    min_snr_gamma: float = 5.0

    def __post_init__(self):
        _check(self.objective in OBJECTIVES, f"diffusion.objective must be one of {OBJECTIVES}, got {self.objective!r}")
        _check(self.beta_schedule in BETA_SCHEDULES,
               f"diffusion.beta_schedule must be one of {BETA_SCHEDULES}, got {self.beta_schedule!r}")
        _check(self.timesteps >= 1, "diffusion.timesteps must be >= 1")
        _check(1 <= self.sampling_timesteps <= self.timesteps,
               "diffusion.sampling_timesteps must be in [1, timesteps]")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The authors' recipe: lucidrains ``Trainer`` with lr 8e-6, batch 64, accumulation 2, EMA 0.995/10."""

    learning_rate: float = 8e-6
    adam_betas: Tuple[float, float] = (0.9, 0.99)
    batch_size: int = 64  # per optimiser micro-step, global over all devices
    grad_accum: int = 2
    max_grad_norm: float = 1.0
    ema_decay: float = 0.995
    ema_update_every: int = 10
    ema_update_after_step: int = 100  # ema_pytorch default
    ema_inv_gamma: float = 1.0  # ema_pytorch warm-up: decay = 1 - (1 + k / inv_gamma) ** -power
    ema_power: float = 2.0 / 3.0
    num_steps: int = 700_000
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # or "cosine"
    hflip: bool = False
    # Timestep distribution for training; 'uniform' is the paper.
    t_sampling: str = "uniform"
    t_max: int = 10
    mixture_uniform_frac: float = 0.25
    seed: int = 0
    log_every: int = 100
    eval_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3

    def __post_init__(self):
        _check(self.batch_size >= 1 and self.grad_accum >= 1, "train.batch_size and train.grad_accum must be >= 1")
        _check(self.t_sampling in T_SAMPLINGS,
               f"train.t_sampling must be one of {T_SAMPLINGS}, got {self.t_sampling!r}")
        _check(self.lr_schedule in LR_SCHEDULES,
               f"train.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        _check(0 < self.learning_rate < float("inf"), f"train.learning_rate must be > 0, got {self.learning_rate!r}")
        _check(all(0 <= b < 1 for b in self.adam_betas), f"train.adam_betas must be in [0, 1), got {self.adam_betas!r}")
        _check(self.max_grad_norm >= 0, f"train.max_grad_norm must be >= 0 (0: off), got {self.max_grad_norm!r}")
        _check(0 <= self.ema_decay <= 1, f"train.ema_decay must be in [0, 1], got {self.ema_decay!r}")
        _check(self.ema_inv_gamma > 0 and self.ema_power > 0, "train.ema_inv_gamma and train.ema_power must be > 0")
        _check(self.ema_update_after_step >= 0, "train.ema_update_after_step must be >= 0")
        _check(self.num_steps >= 0 and self.warmup_steps >= 0, "train.num_steps and train.warmup_steps must be >= 0")
        _check(self.t_max >= 1, f"train.t_max must be >= 1, got {self.t_max!r}")
        _check(0 <= self.mixture_uniform_frac <= 1,
               f"train.mixture_uniform_frac must be in [0, 1], got {self.mixture_uniform_frac!r}")
        for name in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "ema_update_every"):
            _check(getattr(self, name) >= 1, f"train.{name} must be >= 1, got {getattr(self, name)!r}")


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    """BTD scoring settings (the paper: d = 1 at t = 0; centre window 32 for injection, whole patch for removal).

    Attributes:
      steps: reverse steps d.
      center: k of the central window (None: whole patch).
      clip_denoised: clip the x0 prediction to [-1, 1] (lucidrains).
      start_t: lowest timestep.
      batch_size: patches per device chunk; changes no score.
      reduction: pooling of the residual map, a spelling of :mod:`btd_jax.configs.reductions` ('mean',
        the paper).
      clip_inputs: clip inputs to [0, 1] instead of refusing them.
      sampler: 'ddpm' (lucidrains p_sample) or 'ddim'.
      micro_batch: rows per U-Net pass on each device ('auto': 1 on CPU, all elsewhere; None: all);
        changes no score.
    """

    steps: int = 1
    center: Optional[int] = None
    clip_denoised: bool = True
    start_t: int = 0
    batch_size: int = 256
    reduction: str = "mean"
    clip_inputs: bool = False
    sampler: str = "ddpm"
    micro_batch: Union[int, str, None] = "auto"
    # These change only the speed; every other field can change a score.
    SPEED_FIELDS: ClassVar[Tuple[str, ...]] = ("batch_size", "micro_batch")

    def __post_init__(self):
        _check(self.steps >= 1, "score.steps must be >= 1")
        _check(self.start_t >= 0, "score.start_t must be >= 0")
        _check(self.center is None or self.center >= 1, f"score.center must be None or >= 1, got {self.center!r}")
        _check(self.batch_size >= 1, f"score.batch_size must be >= 1, got {self.batch_size!r}")
        _check(self.sampler in SAMPLERS, f"score.sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        _check(self.micro_batch in (None, "auto") or (isinstance(self.micro_batch, numbers.Integral)
                                                      and not isinstance(self.micro_batch, bool) and self.micro_batch >= 1),
               f"score.micro_batch must be >= 1, 'auto' or None, got {self.micro_batch!r}")
        _check(_valid_reduction(self.reduction),
               f"score.reduction must be {reductions.grammar()}, got {self.reduction!r}")

    def scoring_dict(self) -> Dict[str, Any]:
        """The fields that decide a score (all but :attr:`SPEED_FIELDS`): what calibrations store."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.SPEED_FIELDS}


def _valid_reduction(reduction: str) -> bool:
    try:
        parse_reduction(reduction)
        return True
    except ValueError:
        return False


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    modality: str  # 'CT' or 'MRI'
    model: ModelConfig
    diffusion: DiffusionConfig
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    score: ScoreConfig = dataclasses.field(default_factory=ScoreConfig)

    def __post_init__(self):
        _check(self.modality in MODALITIES, f"modality must be 'CT' or 'MRI', got {self.modality!r}")

    @property
    def image_size(self) -> int:
        return self.diffusion.image_size



SECTIONS = {"model": ModelConfig, "diffusion": DiffusionConfig, "train": TrainConfig, "score": ScoreConfig}
_TOP_FIELDS = {"name": str, "modality": str}

def field_type(key: str) -> Any:
    """The declared type of a dotted config key (``"train.batch_size"`` -> ``int``).

    Raises KeyError naming the valid sections or fields for an unknown key.
    """
    section, _, name = key.partition(".")
    if not name:
        if key not in _TOP_FIELDS:
            raise KeyError(f"unknown config key {key!r}")
        return _TOP_FIELDS[key]
    if section not in SECTIONS:
        raise KeyError(f"unknown config section {section!r} in {key!r}; sections are {', '.join(SECTIONS)}")
    hints = typing.get_type_hints(SECTIONS[section])
    fields = [f.name for f in dataclasses.fields(SECTIONS[section])]
    if name not in fields:
        raise KeyError(f"unknown config key {key!r}; {section} has {', '.join(fields)}")
    return hints[name]


def parse_value(key: str, value: Any) -> Any:
    """``value`` converted to the declared type of ``key``; ValueError ``"KEY=VALUE: expected TYPE"`` otherwise.

    Strings are parsed (``"8"`` -> 8, ``"true"`` -> True, ``"none"`` -> None where allowed,
    ``"1,2,4"`` -> (1, 2, 4)); other values are checked (a float is refused for an int field) and
    lists become tuples.
    """
    tp = field_type(key)
    try:
        return convert(value, tp)
    except TypeMismatch:
        raise ValueError(f"{key}={value}: expected {type_name(tp)}") from None


def parse_assignments(items: Sequence[str], flag: str = "--set") -> Dict[str, Any]:
    """Command-line ``KEY=VALUE`` strings -> ``{key: typed value}``, in order.

    Errors name the flag: ``"--set train.batch_size=abc: expected int"``.
    """
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep:
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = parse_value(key.strip(), value.strip())
        except ValueError as e:
            raise ValueError(f"{flag} {e}") from None
    return out


def override(cfg: Config, updates: Mapping[str, Any]) -> Config:
    """Returns ``cfg`` with dotted-key updates applied, e.g. ``{"train.batch_size": 8}``.

    Each value is parsed or checked by the field's declared type (:func:`parse_value`); unknown keys
    raise KeyError, values of the wrong type ValueError.
    """
    sections: Dict[str, Any] = {k: getattr(cfg, k) for k in SECTIONS}
    top = {}
    for key, value in updates.items():
        value = parse_value(key, value)
        section, _, name = key.partition(".")
        if not name:
            top[key] = value
        else:
            sections[section] = dataclasses.replace(sections[section], **{name: value})
    return dataclasses.replace(cfg, **top, **sections)


# ----------------------------------------------------------------------------- dict / JSON

def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: Mapping[str, Any]) -> Config:
    """Inverse of :func:`to_dict`; unknown keys are refused so that a config from a newer version is noticed.

    Missing fields take their defaults (a config written before a field existed still loads).
    """
    if not isinstance(d, Mapping) or not set(d) & set(SECTIONS) or set(d) - set(SECTIONS) - set(_TOP_FIELDS):
        found = sorted(d) if isinstance(d, Mapping) else type(d).__name__
        raise ValueError(f"not a btd_jax config: expected the sections {', '.join(SECTIONS)} and "
                         f"{', '.join(_TOP_FIELDS)}, found {found}")
    kwargs = {}
    for section, cls in SECTIONS.items():
        raw = dict(d.get(section, {}))
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = set(raw) - set(names)
        if unknown:
            raise ValueError(f"config section {section!r} has unknown keys {sorted(unknown)}")
        kwargs[section] = cls(**{k: parse_value(f"{section}.{k}", v) for k, v in raw.items()})
    return Config(name=d.get("name", "custom"), modality=d.get("modality", "CT"), **kwargs)


def to_json(cfg: Config) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=True)


def from_json(text: str) -> Config:
    return from_dict(json.loads(text))

"""The one interface every baseline follows, and its checkpoint format.

A baseline is a :class:`Baseline` record of two pure functions and a config class::

    b = btd_jax.baselines.get("ae")
    state = b.fit(train_patches, b.config(), key)   # (N,H,W) float in [0,1], real patches only
    scores = b.score(state, patches)                 # (M,) float64, higher = more anomalous
    b.save(state, "ae.npz"); state = b.load("ae.npz")

``state`` is a :class:`State`: the baseline's name, its frozen config dataclass and a nested dict
of arrays (network parameters, fitted statistics). ``save`` writes one ``.npz`` holding the
flattened arrays plus the config as JSON, so no pickle is involved and a checkpoint of another
baseline is refused by name.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from typing import Any, Callable, Mapping, Optional, Tuple

import numpy as np

from btd_jax.data import validate
from btd_jax.data.errors import DataError
from btd_jax.runtime.atomic import save_npz
from btd_jax.scoring.pooling import center_window

__all__ = ["State", "Baseline", "Setting", "NEEDS", "check_patches", "window_mean", "config_to_dict",
           "config_from_dict", "save_state", "load_state"]

_SEP = "/"
_META = "__baseline__"


@dataclasses.dataclass(frozen=True)
class State:
    """A fitted baseline: ``name`` (registry key), ``config`` (frozen dataclass), ``arrays`` (nested dict)."""

    name: str
    config: Any
    arrays: Mapping[str, Any]


# What a baseline can need from a comparison besides its training patches (:attr:`Baseline.needs`):
# "window": it is fitted for the scoring window (its config takes it, see ``configure``);
# "ddpm": it reuses BTD's own DDPM when there is one (config via ``configure``, ``fit(..., params=)``).
NEEDS = ("window", "ddpm")


@dataclasses.dataclass(frozen=True)
class Setting:
    """What a comparison offers a baseline: the patch ``side``, the scoring window ``center`` (None: the
    whole patch) and BTD's model ``ddpm`` (a :class:`~btd_jax.score.Scorer`; None without one)."""

    side: int
    center: Optional[int] = None
    ddpm: Any = None


@dataclasses.dataclass(frozen=True)
class Baseline:
    """Registry entry. ``fit(train, cfg=None, key=None) -> State``; ``score(state, x, **kw) -> (N,)``.

    ``display_name``: as printed in the paper's Table 1; ``needs``: of :data:`NEEDS`; ``configure(cfg,
    setting) -> cfg``: the config a comparison fits it with, given a :class:`Setting` (None: as it is).
    """

    name: str
    config: type
    tiny: Any
    fit: Callable[..., State]
    score: Callable[..., np.ndarray]
    description: str = ""
    display_name: str = ""
    needs: Tuple[str, ...] = ()
    configure: Optional[Callable[[Any, Setting], Any]] = None

    def __post_init__(self):
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"baseline {self.name!r}: unknown needs {sorted(unknown)}; valid ones are {NEEDS}")

    def save(self, state: State, path: str) -> str:
        if state.name != self.name:
            raise ValueError(f"cannot save a {state.name!r} state with the {self.name!r} baseline")
        return save_state(state, path)

    def load(self, path: str) -> State:
        return load_state(path, self.name, self.config)


def check_patches(patches: Any, what: str = "patches", side: Optional[int] = None) -> np.ndarray:
    """Validates a stack of patches: returns float32 (N,H,W); accepts (N,H,W,1). Raises ``DataError``.

    ``side``: the square patch side the fitted model expects (``None``: any square side).
    """
    x = validate.check_patches(patches, what, size=side, owner="the fitted baseline", allow_int=True, tol=1e-3)
    return x[..., 0]


def window_mean(err: Any, center: Optional[int]) -> Any:
    """Mean of ``err`` (N,H,W) over the whole patch (``center=None``) or its central ``center`` window -> (N,)."""
    return center_window(err, center).mean(axis=(1, 2))


# ---------------------------------------------------------------------------------------------
# Config (de)serialisation: frozen dataclasses, possibly nested (OOD-DDPM holds Model/DiffusionConfig).

def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _coerce(tp: Any, value: Any) -> Any:
    if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
        return config_from_dict(tp, value)
    if isinstance(value, list):
        return tuple(_coerce(None, v) for v in value)
    return value


def config_from_dict(cls: type, d: Mapping[str, Any]) -> Any:
    """Inverse of :func:`config_to_dict`; unknown keys are refused (a config from another version)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {sorted(unknown)}")
    return cls(**{k: _coerce(hints.get(k), v) for k, v in d.items()})


# ---------------------------------------------------------------------------------------------
# Checkpoints: one .npz of flattened arrays + the config as JSON.

def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict:
    flat = {}
    for k, v in tree.items():
        if _SEP in str(k):
            raise ValueError(f"array key {k!r} must not contain {_SEP!r}")
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            if not v:
                raise ValueError(f"empty sub-dict {key!r} cannot be stored")
            flat.update(_flatten(v, key + _SEP))
        else:
            flat[key] = np.asarray(v)
    return flat


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict:
    tree: dict = {}
    for key, v in flat.items():
        node = tree
        *parents, leaf = key.split(_SEP)
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def save_state(state: State, path: str) -> str:
    """Writes ``state`` to ``path`` (``.npz`` appended if missing); returns the path written."""
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    meta = json.dumps({"name": state.name, "config": config_to_dict(state.config)})
    flat = _flatten(state.arrays)
    if _META in flat:
        raise ValueError(f"array key {_META!r} is reserved")
    return save_npz(path, compressed=False, **flat, **{_META: np.array(meta)})  # whole or absent


def load_state(path: str, name: str, config_cls: type) -> State:
    """Reads a checkpoint written by :func:`save_state`; refuses one of another baseline."""
    path = os.fspath(path)
    if not os.path.exists(path) and os.path.exists(path + ".npz"):
        path += ".npz"
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such baseline checkpoint")
    try:
        flat = validate.load_npz(path)
    except DataError as e:
        raise DataError(f"{path}: not a baseline checkpoint (.npz): {str(e).removeprefix(path + ': ')}") from None
    if _META not in flat:
        raise DataError(f"{path}: not a baseline checkpoint (no {_META!r} entry)")
    meta = json.loads(str(flat.pop(_META)))
    if meta["name"] != name:
        raise DataError(f"{path}: checkpoint of baseline {meta['name']!r}, not {name!r}")
    return State(name=name, config=config_from_dict(config_cls, meta["config"]), arrays=_unflatten(flat))

"""btd_jax: Back-in-Time Diffusion (Grabovski et al., 2024) deepfake detection for CT and MRI in JAX.

The names most code needs sit at the top; everything else is in its submodule. All of them load
on first use, so ``import btd_jax`` stays cheap (no JAX until a name that needs it is touched)::

    import btd_jax
    cfg = btd_jax.get_config("ct")
    btd_jax.train_and_evaluate(cfg, "runs/ct", patches)
    scorer = btd_jax.Scorer.load("runs/ct")
    scores = scorer.score(images)                    # (N,) higher = more likely fake
    calib = btd_jax.Calibration.load("runs/ct/calibration.json")
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any, List

__version__ = "0.1.0"

# Public name -> (module, attribute).
_NAMES = {
    "Scorer": ("btd_jax.score", "Scorer"),
    "get_config": ("btd_jax.configs", "get"),
    "override": ("btd_jax.configs", "override"),
    "train_and_evaluate": ("btd_jax.train", "train_and_evaluate"),
    "load_params": ("btd_jax.checkpoints", "load_params"),
    "Calibration": ("btd_jax.calibration", "Calibration"),
}
_SUBMODULES = (
    "configs", "schedules", "diffusion", "models", "parallel", "keys", "checkpoints", "scoring", "score",
    "train", "data", "metrics", "calibration", "evaluate", "eval_io", "plots", "localize", "screen",
    "clinical_io", "attacks", "baselines", "convert", "export", "demo",
)
__all__ = ["__version__", *_NAMES, *_SUBMODULES]

if TYPE_CHECKING:  # what static type checkers see; at run time the names below load lazily
    from btd_jax.calibration import Calibration
    from btd_jax.checkpoints import load_params
    from btd_jax.configs import get as get_config
    from btd_jax.configs import override
    from btd_jax.score import Scorer
    from btd_jax.train import train_and_evaluate


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        module, attr = _NAMES[name]
        value = getattr(importlib.import_module(module), attr)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    return sorted(__all__)

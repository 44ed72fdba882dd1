"""btd_jax: Back-in-Time Diffusion (Grabovski et al., 2024) deepfake detection for CT and MRI in JAX.

Submodules load on first use, so ``import btd_jax`` stays cheap and optional pieces (plots, torch
conversion) cost nothing until asked for::

    import btd_jax
    cfg = btd_jax.configs.get("ct")
    scores = btd_jax.score.btd_score(params, images, cfg, steps=1, center=32)
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = (
    "configs", "models", "diffusion", "score", "train", "parallel", "data", "metrics",
    "baselines", "convert", "evaluate", "calibration", "localize",
)
__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name):
    if name in _SUBMODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)

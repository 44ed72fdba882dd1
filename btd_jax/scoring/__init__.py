"""BTD scoring: residual maths, streaming over the local devices, the ``Scorer``, variants and poolings.

* :mod:`~btd_jax.scoring.interfaces` -- ``ScoreResult`` and the ``ResidualModel`` protocol (no JAX);
* :mod:`~btd_jax.scoring.pooling` -- the central window and NumPy poolings (no JAX import);
* :mod:`~btd_jax.scoring.residual` -- pure maths: reverse steps from the image, residual, pooling;
* :mod:`~btd_jax.scoring.stream` -- validation, fixed-shape chunks, ``shard_map``, compile cache;
* :mod:`~btd_jax.scoring.variants` -- the score-variant registry (btd, multi_t, two_sided, oneclass);
* :mod:`~btd_jax.scoring.scorer` -- ``Scorer`` (defaults from ``cfg.score``), ``ScoreResult``;
* :mod:`~btd_jax.scoring.inputs` -- ``score_input``: any input on disk -> scores CSV (``btd-jax score``).

``btd_jax.score`` re-exports the public names. Submodules load on first use, so that the NumPy
poolings stay importable without JAX.
"""

import importlib

_LAZY = {"Scorer": "scorer", "ScoreResult": "interfaces", "ResidualModel": "interfaces", "btd_score": "scorer",
         "residual_map": "scorer", "as_scorer": "scorer", "score_input": "inputs", "Scored": "inputs",
         "reference_path": "inputs"}
__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

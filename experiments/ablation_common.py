"""Shared input handling for the ablation scripts (ablation_steps.py, ablation_size.py).

A dataset is either a test-set root in the authors' layout (``btd_jax.data.datasets.load_testset``)
or a ``.npz`` with ``patches`` (N,H,W) in [0,1] and ``labels`` (N,) plus optional metadata arrays
(``scanner``, ``method``, ``size``, ...). ``subsample`` keeps the runs small enough for a CPU.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

from btd_jax import evaluate


def load_dataset(path: str, modality: str, attack: str, size: Optional[int] = None
                 ) -> Tuple[np.ndarray, np.ndarray, Dict[str, np.ndarray]]:
    """-> (patches (N,H,W) float32, labels (N,) int8, metadata {column: (N,)}); see evaluate.load_eval_set."""
    return evaluate.load_eval_set(path, modality, attack, size=size)


def subsample(labels: np.ndarray, max_per_class: Optional[int], seed: int = 0,
              strata: Optional[np.ndarray] = None) -> np.ndarray:
    """Sorted indices keeping at most ``max_per_class`` random samples per class (and per stratum,
    e.g. the tamper method, so no dataset vanishes); ``None``/0 keeps all."""
    if not max_per_class:
        return np.arange(labels.size)
    rng = np.random.default_rng(seed)
    strata = np.zeros(labels.size, np.int8) if strata is None else np.asarray(strata).astype(str)
    keep = []
    for c in (0, 1):
        for s in np.unique(strata):
            idx = np.flatnonzero((labels == c) & (strata == s))
            keep.append(idx if idx.size <= max_per_class else rng.choice(idx, max_per_class, replace=False))
    return np.sort(np.concatenate(keep))

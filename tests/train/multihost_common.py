"""Config and data shared by ``test_multihost.py`` and its worker processes."""

import numpy as np

from btd_jax import configs

CFG = configs.override(configs.get("tiny"), {
    "train.batch_size": 8, "train.grad_accum": 2, "train.num_steps": 3, "train.log_every": 1,
    "train.checkpoint_every": 3, "train.hflip": True, "train.ema_update_every": 1})


def data(n: int = 20) -> np.ndarray:
    base = np.random.default_rng(5).random((n, 4, 4), dtype=np.float32)
    return np.kron(base, np.ones((4, 4), np.float32))

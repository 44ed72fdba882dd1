"""AE: a convolutional autoencoder trained on real patches; score = reconstruction MSE.

Reference: the "basic AE" of the BTD paper's baselines (Grabovski et al. 2024, section 4), after the
reconstruction-based detectors surveyed by Yang et al. 2021 (arXiv:2109.13157) and Zhou &
Paffenroth 2017 (KDD, robust deep autoencoders).

What differs: the paper gives no architecture; this one is a plain stride-2 conv encoder, a dense
bottleneck (``latent``) and a mirrored decoder with a sigmoid output, trained with MSE and Adam.
The robust-AE sparse/low-rank split of Zhou & Paffenroth is not used (the paper calls it a basic AE).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from btd_jax.baselines import base
from btd_jax.baselines._nets import ConvDecoder, ConvEncoder, check_side, squared_error
from btd_jax.baselines._training import as_key, fit_reconstruction, reconstruction_scorer

__all__ = ["Config", "TINY", "AutoEncoder", "fit", "score", "BASELINE"]


@dataclasses.dataclass(frozen=True)
class Config:
    features: Tuple[int, ...] = (32, 64, 128)
    latent: int = 128
    steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 1e-3


TINY = Config(features=(8, 16), latent=16, steps=80, batch_size=32, learning_rate=3e-3)


class AutoEncoder(nn.Module):
    features: Tuple[int, ...]
    latent: int
    side: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        return ConvDecoder(self.features, self.side)(ConvEncoder(self.features, self.latent)(x))


def _model(cfg: Config, side: int) -> AutoEncoder:
    check_side(side, len(cfg.features))
    return AutoEncoder(tuple(cfg.features), cfg.latent, side)


def fit(train_patches: np.ndarray, cfg: Optional[Config] = None, key=None) -> base.State:
    """Trains on real patches (N,H,W) in [0,1]; returns the fitted :class:`~btd_jax.baselines.base.State`."""
    cfg = cfg or Config()
    x = base.check_patches(train_patches, "train_patches")
    model = _model(cfg, x.shape[1])
    init_key, train_key = jax.random.split(as_key(key))
    params = model.init(init_key, jnp.zeros((1, *x.shape[1:], 1)))["params"]

    def loss_fn(p, batch, _key):
        return jnp.mean(squared_error(model.apply({"params": p}, batch), batch))

    params, _ = fit_reconstruction(loss_fn, params, x, steps=cfg.steps, batch_size=cfg.batch_size,
                                   learning_rate=cfg.learning_rate, key=train_key)
    return base.State("ae", cfg, {"params": jax.device_get(params), "side": np.int32(x.shape[1])})


# Mean squared reconstruction error over the patch or its central ``center`` window -> (N,).
score = reconstruction_scorer(_model)


BASELINE = base.Baseline("ae", Config, TINY, fit, score,
                         "convolutional autoencoder, reconstruction MSE",
                         display_name="AE")

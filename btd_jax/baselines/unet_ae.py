"""Unet-AE: a U-Net (Ronneberger et al. 2015) trained to reconstruct real patches; score = reconstruction MSE.

Reference: the "U-net" autoencoder of the BTD paper's baselines (Grabovski et al. 2024, section 4),
built on O. Ronneberger, P. Fischer, T. Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015.

What differs: a U-Net with every skip connection can learn the identity, which reconstructs fakes
as well as real patches. Two documented choices prevent that here: (1) it is trained as a
*denoising* autoencoder (input = patch + N(0, ``noise_std``), target = the clean patch), and
(2) the full-resolution skip is dropped (``top_skip=False``), so the finest detail must pass
through at least one down-sampling. At scoring time the clean patch is fed in. Convolutions are
3x3 with GroupNorm-free LeakyReLU blocks, stride-2 down-sampling instead of max-pooling, "same"
padding instead of the original's valid convolutions and crops, and a sigmoid output in [0,1].
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from btd_jax.baselines import base
from btd_jax.baselines._nets import check_side, squared_error
from btd_jax.baselines._training import as_key, fit_reconstruction, reconstruction_scorer

__all__ = ["Config", "TINY", "UNetAE", "fit", "score", "BASELINE"]


@dataclasses.dataclass(frozen=True)
class Config:
    features: Tuple[int, ...] = (32, 64, 128)
    noise_std: float = 0.1  # denoising input noise, in [0,1] image units
    top_skip: bool = False  # the full-resolution skip; True lets the net copy its input
    steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 1e-3


TINY = Config(features=(8, 16), steps=80, batch_size=32, learning_rate=3e-3)


def _block(x: jax.Array, f: int) -> jax.Array:
    x = nn.leaky_relu(nn.Conv(f, (3, 3))(x), 0.2)
    return nn.leaky_relu(nn.Conv(f, (3, 3))(x), 0.2)


class UNetAE(nn.Module):
    """(N,H,W,1) -> (N,H,W,1) in [0,1]; ``len(features) - 1`` down-samplings."""

    features: Tuple[int, ...]
    top_skip: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        skips = []
        for f in self.features[:-1]:
            x = _block(x, f)
            skips.append(x)
            x = nn.Conv(f, (3, 3), strides=(2, 2))(x)
        x = _block(x, self.features[-1])
        for level, f in reversed(list(enumerate(self.features[:-1]))):
            x = nn.ConvTranspose(f, (2, 2), strides=(2, 2))(x)
            if level > 0 or self.top_skip:
                x = jnp.concatenate([x, skips[level]], axis=-1)
            x = _block(x, f)
        return jax.nn.sigmoid(nn.Conv(1, (1, 1))(x))


def _model(cfg: Config, side: int) -> UNetAE:
    if len(cfg.features) < 2:
        raise ValueError("unet_ae needs at least two feature levels")
    check_side(side, len(cfg.features) - 1)
    return UNetAE(tuple(cfg.features), cfg.top_skip)


def fit(train_patches: np.ndarray, cfg: Optional[Config] = None, key=None) -> base.State:
    """Trains the denoising U-Net on real patches (N,H,W) in [0,1]."""
    cfg = cfg or Config()
    x = base.check_patches(train_patches, "train_patches")
    model = _model(cfg, x.shape[1])
    init_key, train_key = jax.random.split(as_key(key))
    params = model.init(init_key, jnp.zeros((1, *x.shape[1:], 1)))["params"]

    def loss_fn(p, batch, k):
        noisy = batch + cfg.noise_std * jax.random.normal(k, batch.shape)
        return jnp.mean(squared_error(model.apply({"params": p}, noisy), batch))

    params, _ = fit_reconstruction(loss_fn, params, x, steps=cfg.steps, batch_size=cfg.batch_size,
                                   learning_rate=cfg.learning_rate, key=train_key)
    return base.State("unet_ae", cfg, {"params": jax.device_get(params), "side": np.int32(x.shape[1])})


# Mean squared error between the clean patch and its reconstruction (patch or central window) -> (N,).
score = reconstruction_scorer(_model)


BASELINE = base.Baseline("unet_ae", Config, TINY, fit, score,
                         "denoising U-Net autoencoder, reconstruction MSE",
                         display_name="Unet-AE")

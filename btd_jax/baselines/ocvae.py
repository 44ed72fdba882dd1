"""OC-VAE: a one-class variational autoencoder trained on real patches; score = reconstruction error.

Reference: H. Khalid, S. S. Woo, "OC-FakeDect: Classifying Deepfakes Using One-class Variational
Autoencoder", CVPR Workshops 2020 (the OC-VAE of the BTD paper's baselines, section 4). OC-FakeDect-1
trains a VAE on real images only and thresholds the RMSE between an image and its reconstruction.

What differs: this package's small conv encoder/decoder (the original uses a deeper VAE on 100x100
face crops); the loss is per-pixel MSE plus ``beta`` times the KL divergence per pixel (a Gaussian
decoder with fixed variance); at scoring time the posterior mean is decoded (no sampling, so scores
are deterministic), and the score is the mean squared error (monotone in RMSE, so the AUC is the
same). ``score_kl=True`` adds the per-pixel KL term, the negative-ELBO variant. The
OC-FakeDect-2 latent-distance variant is not implemented.
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
from btd_jax.baselines._training import as_key, batched_apply, fit_reconstruction

__all__ = ["Config", "TINY", "VAE", "fit", "score", "BASELINE"]


@dataclasses.dataclass(frozen=True)
class Config:
    features: Tuple[int, ...] = (32, 64, 128)
    latent: int = 128
    beta: float = 1.0  # KL weight (per pixel) in the training loss
    score_kl: bool = False  # add the KL term to the score (negative ELBO)
    steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 1e-3


TINY = Config(features=(8, 16), latent=16, steps=80, batch_size=32, learning_rate=3e-3)


class VAE(nn.Module):
    """(N,H,W,1) -> (reconstruction (N,H,W,1), mu (N,L), logvar (N,L)); samples z iff ``key`` is given."""

    features: Tuple[int, ...]
    latent: int
    side: int

    @nn.compact
    def __call__(self, x: jax.Array, key: Optional[jax.Array] = None):
        h = ConvEncoder(self.features, 2 * self.latent)(x)
        mu, logvar = jnp.split(h, 2, axis=-1)
        logvar = jnp.clip(logvar, -10.0, 10.0)
        z = mu if key is None else mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape)
        return ConvDecoder(self.features, self.side)(z), mu, logvar


def _kl_per_pixel(mu: jax.Array, logvar: jax.Array, pixels: int) -> jax.Array:
    """(N,) KL(q(z|x) || N(0, I)) divided by the number of pixels."""
    return 0.5 * jnp.sum(jnp.exp(logvar) + mu ** 2 - 1.0 - logvar, axis=-1) / pixels


def _model(cfg: Config, side: int) -> VAE:
    check_side(side, len(cfg.features))
    return VAE(tuple(cfg.features), cfg.latent, side)


def fit(train_patches: np.ndarray, cfg: Optional[Config] = None, key=None) -> base.State:
    """Trains the VAE on real patches (N,H,W) in [0,1]."""
    cfg = cfg or Config()
    x = base.check_patches(train_patches, "train_patches")
    side = x.shape[1]
    model = _model(cfg, side)
    init_key, train_key = jax.random.split(as_key(key))
    params = model.init(init_key, jnp.zeros((1, side, side, 1)))["params"]

    def loss_fn(p, batch, k):
        recon, mu, logvar = model.apply({"params": p}, batch, k)
        rec = squared_error(recon, batch).mean(axis=(1, 2))
        return jnp.mean(rec + cfg.beta * _kl_per_pixel(mu, logvar, side * side))

    params, _ = fit_reconstruction(loss_fn, params, x, steps=cfg.steps, batch_size=cfg.batch_size,
                                   learning_rate=cfg.learning_rate, key=train_key)
    return base.State("ocvae", cfg, {"params": jax.device_get(params), "side": np.int32(side)})


def score(state: base.State, patches: np.ndarray, center: Optional[int] = None, batch_size: int = 256) -> np.ndarray:
    """Reconstruction MSE of the posterior mean (patch or central window), plus the KL if ``score_kl`` -> (N,)."""
    cfg, side = state.config, int(state.arrays["side"])
    x = base.check_patches(patches, side=side)
    model = _model(cfg, side)
    params = state.arrays["params"]

    def fn(batch, _index):
        recon, mu, logvar = model.apply({"params": params}, batch)
        s = base.window_mean(squared_error(recon, batch), center)
        return s + _kl_per_pixel(mu, logvar, side * side) if cfg.score_kl else s

    return batched_apply(fn, x, batch_size).astype(np.float64)


BASELINE = base.Baseline("ocvae", Config, TINY, fit, score,
                         "one-class VAE (OC-FakeDect-1), reconstruction error",
                         display_name="OC-VAE")

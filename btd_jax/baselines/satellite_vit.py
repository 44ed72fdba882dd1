"""Satellite-ViT-style detector: a small vision-transformer autoencoder; score = reconstruction MSE.

Reference: J. Horváth, S. Baireddy, H. Hao, D. Mas Montserrat, E. J. Delp, "Manipulation Detection
in Satellite Images Using Vision Transformer", CVPR Workshops 2021, built on the ViT of Dosovitskiy
et al., "An Image is Worth 16x16 Words", ICLR 2021 (the "Satellite ViT" of the BTD paper's
baselines, section 4). The original trains a ViT-based reconstruction model on pristine images
only and localises forgeries from its reconstruction error.

What differs: a much smaller model (default 8x8 tokens, width 64, 3+1 blocks), trained with plain
MSE (the original's auxiliary losses and its satellite-specific input bands are not used). To keep
the model from copying its input, every token passes a linear bottleneck of ``token_latent``
numbers (< pixels per token) between encoder and decoder. Pre-LayerNorm blocks, learned position
embeddings, sigmoid output in [0,1]. The score is the mean squared error over the patch or a
central window.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from btd_jax.baselines import base
from btd_jax.baselines._nets import squared_error
from btd_jax.baselines._training import as_key, fit_reconstruction, reconstruction_scorer

__all__ = ["Config", "TINY", "ViTAE", "fit", "score", "BASELINE"]


@dataclasses.dataclass(frozen=True)
class Config:
    patch: int = 8  # token side in pixels
    width: int = 64
    depth: int = 3  # encoder blocks
    decoder_depth: int = 1
    heads: int = 4
    token_latent: int = 16  # bottleneck per token (< patch * patch)
    steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 5e-4


TINY = Config(patch=4, width=32, depth=1, decoder_depth=1, heads=2, token_latent=4, steps=80,
              batch_size=32, learning_rate=2e-3)


class _Block(nn.Module):
    width: int
    heads: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + nn.MultiHeadDotProductAttention(self.heads)(nn.LayerNorm()(x))
        h = nn.Dense(2 * self.width)(nn.LayerNorm()(x))
        return x + nn.Dense(self.width)(nn.gelu(h, approximate=False))


def patchify(x: jax.Array, p: int) -> jax.Array:
    """(N,H,W,1) -> (N, (H/p)*(W/p), p*p)."""
    n, h, w, _ = x.shape
    x = x.reshape(n, h // p, p, w // p, p).transpose(0, 1, 3, 2, 4)
    return x.reshape(n, (h // p) * (w // p), p * p)


def unpatchify(t: jax.Array, p: int, side: int) -> jax.Array:
    """Inverse of :func:`patchify` for square images of side ``side``."""
    n, g = t.shape[0], side // p
    return t.reshape(n, g, g, p, p).transpose(0, 1, 3, 2, 4).reshape(n, side, side, 1)


class ViTAE(nn.Module):
    cfg: Config
    side: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.cfg
        tokens = nn.Dense(c.width)(patchify(x, c.patch))
        pos = self.param("pos_embedding", nn.initializers.normal(0.02), (1, tokens.shape[1], c.width))
        h = tokens + pos
        for _ in range(c.depth):
            h = _Block(c.width, c.heads)(h)
        h = nn.Dense(c.width)(nn.Dense(c.token_latent)(nn.LayerNorm()(h)))  # per-token bottleneck
        h = h + self.param("dec_pos_embedding", nn.initializers.normal(0.02), (1, tokens.shape[1], c.width))
        for _ in range(c.decoder_depth):
            h = _Block(c.width, c.heads)(h)
        return jax.nn.sigmoid(unpatchify(nn.Dense(c.patch * c.patch)(nn.LayerNorm()(h)), c.patch, self.side))


def _model(cfg: Config, side: int) -> ViTAE:
    if side % cfg.patch:
        raise ValueError(f"patch side {side} must be divisible by the token size {cfg.patch}")
    if cfg.width % cfg.heads:
        raise ValueError(f"width {cfg.width} must be divisible by heads {cfg.heads}")
    return ViTAE(cfg, side)


def fit(train_patches: np.ndarray, cfg: Optional[Config] = None, key=None) -> base.State:
    """Trains the ViT autoencoder on real patches (N,H,W) in [0,1]."""
    cfg = cfg or Config()
    x = base.check_patches(train_patches, "train_patches")
    side = x.shape[1]
    model = _model(cfg, side)
    init_key, train_key = jax.random.split(as_key(key))
    params = model.init(init_key, jnp.zeros((1, side, side, 1)))["params"]

    def loss_fn(p, batch, _key):
        return jnp.mean(squared_error(model.apply({"params": p}, batch), batch))

    params, _ = fit_reconstruction(loss_fn, params, x, steps=cfg.steps, batch_size=cfg.batch_size,
                                   learning_rate=cfg.learning_rate, key=train_key)
    return base.State("satellite_vit", cfg, {"params": jax.device_get(params), "side": np.int32(side)})


# Mean squared reconstruction error over the patch or its central window -> (N,).
score = reconstruction_scorer(_model)


BASELINE = base.Baseline("satellite_vit", Config, TINY, fit, score,
                         "ViT autoencoder, reconstruction MSE",
                         display_name="Satellite ViT")

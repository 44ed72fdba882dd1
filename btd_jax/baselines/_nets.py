"""Small Flax building blocks shared by the convolutional autoencoder baselines (AE, In-Paint AE, OC-VAE).

Images are NHWC in [0,1]; every stride-2 stage halves the side, so the side must divide by
``2 ** len(features)``.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["ConvEncoder", "ConvDecoder", "check_side", "squared_error"]


def check_side(side: int, stages: int) -> None:
    if side % (2 ** stages):
        raise ValueError(f"patch side {side} must be divisible by 2**{stages} = {2 ** stages} "
                         f"(one halving per entry of features)")


class ConvEncoder(nn.Module):
    """(N,H,W,1) -> (N,latent): stride-2 convolutions then a dense bottleneck."""

    features: Sequence[int]
    latent: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for f in self.features:
            x = nn.leaky_relu(nn.Conv(f, (3, 3), strides=(2, 2))(x), 0.2)
            x = nn.leaky_relu(nn.Conv(f, (3, 3))(x), 0.2)
        return nn.Dense(self.latent)(x.reshape(x.shape[0], -1))


class ConvDecoder(nn.Module):
    """(N,latent) -> (N,H,W,1) in [0,1]: dense, then stride-2 transposed convolutions (mirror of the encoder)."""

    features: Sequence[int]
    side: int

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        s = self.side // 2 ** len(self.features)
        x = nn.Dense(s * s * self.features[-1])(z).reshape(z.shape[0], s, s, self.features[-1])
        for f in reversed(self.features):
            x = nn.leaky_relu(nn.ConvTranspose(f, (3, 3), strides=(2, 2))(x), 0.2)
            x = nn.leaky_relu(nn.Conv(f, (3, 3))(x), 0.2)
        return jax.nn.sigmoid(nn.Conv(1, (3, 3))(x))


def squared_error(recon: jax.Array, x: jax.Array) -> jax.Array:
    """(N,H,W,1) pair -> (N,H,W) squared error."""
    return jnp.square(recon - x)[..., 0]

"""In-Paint AE: reconstruct a masked patch centre from its surroundings; score = error in the centre.

Reference: M. Haselmann, D. P. Gruber, P. Tabatabai, "Anomaly detection using deep learning based
image completion", ICMLA 2018 (the "in-painting AE" of the BTD paper's baselines, section 4).
The original blanks a centre square of each training patch, trains a fully convolutional
completion network on defect-free images to fill it in, and reads anomalies off the completion
error in the hole.

What differs: the network is this package's small conv encoder / dense bottleneck / decoder
(no dilated convolutions), trained with MSE on the hole only; the hole is filled with zeros and a
second input channel marks it. The hole is a centred square of side ``round(mask_fraction * H)``
(1/3 by default: 32 px of a 96 px CT patch, the paper's injection window). The score is the mean
squared completion error inside the hole; the ``center`` argument of :func:`score` is accepted for
interface uniformity and ignored, since the hole is fixed at training time.
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

__all__ = ["Config", "TINY", "InpaintAE", "hole_mask", "fit", "score", "BASELINE"]


@dataclasses.dataclass(frozen=True)
class Config:
    features: Tuple[int, ...] = (32, 64, 128)
    latent: int = 128
    mask_fraction: float = 1 / 3
    steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 1e-3


TINY = Config(features=(8, 16), latent=16, mask_fraction=0.5, steps=80, batch_size=32, learning_rate=3e-3)


def hole_mask(side: int, fraction: float) -> np.ndarray:
    """(side, side) float32, 1 inside the centred square hole of side ``round(fraction * side)``."""
    k = int(round(fraction * side))
    if not 0 < k < side:
        raise ValueError(f"mask_fraction={fraction} gives a hole of {k} px in a {side} px patch")
    m = np.zeros((side, side), np.float32)
    lo = (side - k) // 2
    m[lo:lo + k, lo:lo + k] = 1
    return m


class InpaintAE(nn.Module):
    """(N,H,W,1) image and (H,W) hole -> (N,H,W,1) completion in [0,1]."""

    features: Tuple[int, ...]
    latent: int
    side: int

    @nn.compact
    def __call__(self, x: jax.Array, hole: jax.Array) -> jax.Array:
        h = jnp.broadcast_to(hole[None, :, :, None], x.shape)
        inp = jnp.concatenate([x * (1 - h), h], axis=-1)
        return ConvDecoder(self.features, self.side)(ConvEncoder(self.features, self.latent)(inp))


def _hole_error(model, params, batch, hole) -> jax.Array:
    """(N,) mean squared completion error inside the hole."""
    err = squared_error(model.apply({"params": params}, batch, hole), batch)
    return (err * hole).sum(axis=(1, 2)) / hole.sum()


def _model(cfg: Config, side: int) -> InpaintAE:
    check_side(side, len(cfg.features))
    return InpaintAE(tuple(cfg.features), cfg.latent, side)


def fit(train_patches: np.ndarray, cfg: Optional[Config] = None, key=None) -> base.State:
    """Trains the completion network on real patches (N,H,W) in [0,1]."""
    cfg = cfg or Config()
    x = base.check_patches(train_patches, "train_patches")
    side = x.shape[1]
    model = _model(cfg, side)
    hole = jnp.asarray(hole_mask(side, cfg.mask_fraction))
    init_key, train_key = jax.random.split(as_key(key))
    params = model.init(init_key, jnp.zeros((1, side, side, 1)), hole)["params"]

    def loss_fn(p, batch, _key):
        return jnp.mean(_hole_error(model, p, batch, hole))

    params, _ = fit_reconstruction(loss_fn, params, x, steps=cfg.steps, batch_size=cfg.batch_size,
                                   learning_rate=cfg.learning_rate, key=train_key)
    return base.State("inpaint_ae", cfg, {"params": jax.device_get(params), "side": np.int32(side)})


def score(state: base.State, patches: np.ndarray, center: Optional[int] = None, batch_size: int = 256) -> np.ndarray:
    """Mean squared completion error in the hole -> (N,). ``center`` is ignored (the hole is fixed)."""
    del center
    side = int(state.arrays["side"])
    x = base.check_patches(patches, side=side)
    model = _model(state.config, side)
    hole = jnp.asarray(hole_mask(side, state.config.mask_fraction))
    params = state.arrays["params"]
    return batched_apply(lambda b, _i: _hole_error(model, params, b, hole), x, batch_size).astype(np.float64)


def _configure(cfg: Config, setting: base.Setting) -> Config:
    """The hole covers the scoring window."""
    if setting.center is None:
        return cfg
    return dataclasses.replace(cfg, mask_fraction=setting.center / setting.side)


BASELINE = base.Baseline("inpaint_ae", Config, TINY, fit, score,
                         "centre in-painting AE, completion error",
                         display_name="In-Paint AE", needs=("window",), configure=_configure)

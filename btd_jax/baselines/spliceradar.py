"""SpliceRadar-style detector: a learned noise-residual extractor, then per-image clustering of its features.

Reference: A. Ghosh, Z. Zhong, T. E. Boult, M. Singh, "SpliceRadar: A Learned Method For Blind
Image Forensics", CVPR Workshops 2019 (the "Splice Radar" of the BTD paper's baselines, section 4).
The original learns a noise-residual feature extractor -- a constrained first convolution
(Bayar & Stamm: centre tap -1, the others summing to 1, i.e. a learned prediction-error filter)
followed by a CNN -- with camera-model supervision plus auxiliary losses, then clusters the
per-pixel features of a test image with a GMM to segment the spliced region.

What differs: ``fit`` receives real patches only (no camera/scanner labels), so the extractor is
trained on a *self-supervised noise-consistency* task instead: a random rectangle of each real
patch gets a different noise "source" (extra Gaussian noise at 0.5-3x the training noise level,
or a 3x3 blur that removes noise; half of the batch is left intact) and a 1x1-conv head on the
features predicts, per pixel, which pixels are inconsistent (binary cross-entropy). At test time
only the features are used, as in the original: per image, the feature vectors on a grid of
stride ``stride`` are clustered with a 2-component diagonal GMM (scikit-learn) and the score is
the centre-vs-surroundings log-likelihood-ratio contrast shared with the SpliceBuster-style
baseline (:func:`btd_jax.baselines.splicebuster.llr_contrast`). The network is small (two 3x3
layers after the constrained 5x5 layer).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from threadpoolctl import threadpool_limits

from btd_jax.baselines import base
from btd_jax.baselines._training import as_key, batched_apply, fit_reconstruction
from btd_jax.baselines.splicebuster import llr_contrast, residuals

__all__ = ["Config", "TINY", "ConstrainedConv", "ResidualNet", "tamper", "fit", "score", "BASELINE"]


@dataclasses.dataclass(frozen=True)
class Config:
    constrained_filters: int = 3
    widths: Tuple[int, ...] = (16, 16)
    feature_dim: int = 8
    stride: int = 4  # grid of feature vectors clustered per image
    center_fraction: float = 1 / 3
    steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 1e-3
    seed: int = 0


TINY = Config(widths=(8, 8), feature_dim=4, stride=1, center_fraction=0.5, steps=80, batch_size=32,
              learning_rate=3e-3)


def _reflect(x: jax.Array, p: int) -> jax.Array:
    """Reflect-pads H and W: zero padding would make border pixels look like a noise inconsistency."""
    return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")


class ConstrainedConv(nn.Module):
    """Bayar-Stamm constrained 5x5 conv: per filter the centre tap is -1 and the others sum to 1."""

    filters: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.param("kernel", nn.initializers.uniform(1.0), (5, 5, x.shape[-1], self.filters))
        centre = jnp.zeros((5, 5, 1, 1)).at[2, 2].set(1.0)
        k = k * (1 - centre)
        k = k / (jnp.sum(k, axis=(0, 1), keepdims=True) + 1e-8) - centre
        x = _reflect(x, 2)
        return jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


class ResidualNet(nn.Module):
    """(N,H,W,1) -> per-pixel features (N,H,W,feature_dim) and inconsistency logits (N,H,W)."""

    cfg: Config

    @nn.compact
    def __call__(self, x: jax.Array):
        h = ConstrainedConv(self.cfg.constrained_filters)(x * 255.0)  # residuals in 8-bit-like units
        for w in self.cfg.widths:
            h = nn.leaky_relu(nn.Conv(w, (3, 3), padding="VALID")(_reflect(h, 1)), 0.2)
        feats = nn.Conv(self.cfg.feature_dim, (1, 1))(h)
        return feats, nn.Conv(1, (1, 1))(nn.leaky_relu(feats, 0.2))[..., 0]


def tamper(batch: jax.Array, key: jax.Array, noise_std: float) -> Tuple[jax.Array, jax.Array]:
    """Synthetic noise inconsistency: (B,H,W,1) -> (tampered batch, (B,H,W) float mask of changed pixels)."""
    b, h, w, _ = batch.shape
    k_size, k_pos, k_kind, k_amp, k_noise, k_on = jax.random.split(key, 6)
    size = jax.random.randint(k_size, (b, 2), h // 4, max(h // 4 + 1, (3 * h) // 5))
    top = jax.random.randint(k_pos, (b, 2), 0, h) % (jnp.array([h, w]) - size + 1)
    rows, cols = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
    mask = ((rows >= top[:, 0, None, None]) & (rows < (top[:, 0] + size[:, 0])[:, None, None])
            & (cols >= top[:, 1, None, None]) & (cols < (top[:, 1] + size[:, 1])[:, None, None]))
    mask = mask & jax.random.bernoulli(k_on, 0.5, (b, 1, 1))
    amp = jax.random.uniform(k_amp, (b, 1, 1, 1), minval=0.5, maxval=3.0) * noise_std
    noisy = batch + amp * jax.random.normal(k_noise, batch.shape)
    blurred = jax.lax.reduce_window(jnp.pad(batch, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge"), 0.0,
                                    jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), "VALID") / 9.0
    alt = jnp.where(jax.random.bernoulli(k_kind, 0.7, (b, 1, 1, 1)), noisy, blurred)
    out = jnp.clip(jnp.where(mask[..., None], alt, batch), 0.0, 1.0)
    return out, mask.astype(jnp.float32)


def _noise_std(x: np.ndarray) -> float:
    """Noise level estimate: RMS of the third-order residual / sqrt(20) (its gain on white noise)."""
    rh, rv = residuals(x[:512].astype(np.float64))
    return float(np.sqrt(np.mean(np.concatenate([rh.ravel(), rv.ravel()]) ** 2) / 20.0)) + 1e-6


def fit(train_patches: np.ndarray, cfg: Optional[Config] = None, key=None) -> base.State:
    """Trains the residual extractor on synthetic noise inconsistencies in real patches (N,H,W)."""
    cfg = cfg or Config()
    x = base.check_patches(train_patches, "train_patches")
    model = ResidualNet(cfg)
    noise_std = _noise_std(x)
    init_key, train_key = jax.random.split(as_key(key))
    params = model.init(init_key, jnp.zeros((1, *x.shape[1:], 1)))["params"]

    def loss_fn(p, batch, k):
        tampered, mask = tamper(batch, k, noise_std)
        _, logits = model.apply({"params": p}, tampered)
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, mask))

    params, _ = fit_reconstruction(loss_fn, params, x, steps=cfg.steps, batch_size=cfg.batch_size,
                                   learning_rate=cfg.learning_rate, key=train_key)
    return base.State("spliceradar", cfg, {"params": jax.device_get(params), "noise_std": np.float64(noise_std),
                                           "side": np.int32(x.shape[1])})


def score(state: base.State, patches: np.ndarray, center: Optional[int] = None, batch_size: int = 256) -> np.ndarray:
    """Per-image GMM clustering of the learned features; centre-vs-surroundings LLR contrast -> (N,) >= 0."""
    cfg, side = state.config, int(state.arrays["side"])
    x = base.check_patches(patches, side=side)
    center = int(round(cfg.center_fraction * side)) if center is None else center
    grid = np.arange(cfg.stride // 2, side, cfg.stride)
    lo, hi = (side - center) / 2, (side + center) / 2
    inside = (grid + 0.5 > lo) & (grid + 0.5 < hi)  # pixel centres
    centre = (inside[:, None] & inside[None, :]).ravel()
    if centre.all() or not centre.any():
        raise ValueError(f"center={center} leaves no grid points inside or outside the centre (stride {cfg.stride})")
    model, params = ResidualNet(cfg), state.arrays["params"]
    idx = jnp.asarray(grid)

    def fn(batch, _index):
        feats = model.apply({"params": params}, batch)[0]
        return feats[:, idx][:, :, idx].reshape(batch.shape[0], -1, cfg.feature_dim)

    feats = batched_apply(fn, x, batch_size).astype(np.float64)
    with threadpool_limits(1):  # many tiny EM fits: BLAS threads only contend
        return np.array([llr_contrast(f, centre, cfg.seed) for f in feats])


BASELINE = base.Baseline("spliceradar", Config, TINY, fit, score,
                         "learned constrained-conv noise residual + per-image GMM clustering",
                         display_name="Splice Radar")

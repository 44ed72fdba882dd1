"""A small KL autoencoder, the first stage of a latent diffusion model (Rombach et al. 2022), in Flax linen.

The encoder maps a (S, S, 1) patch in [-1, 1] to the mean and log variance of a diagonal Gaussian
over a (S/f, S/f, C) latent: a 3x3 convolution, then per halving a ResNet block (GroupNorm, SiLU,
3x3 convolutions) and a stride-2 convolution, a ResNet block at the latent size, and a 3x3
convolution to 2C channels. The decoder mirrors it with nearest-neighbour upsampling. As LDM's
``AutoencoderKL`` the loss is a per-image *sum* of the reconstruction error plus ``kl_weight``
(1e-6, LDM's) times the KL divergence to N(0, I), averaged over the batch; the reconstruction
error is L1 + L2, with neither LDM's perceptual network (which would need downloaded weights) nor
its discriminator.

    params, info = autoencoder.train(patches01, AutoencoderConfig(), jax.random.key(0))
    z = autoencoder.encode(params, cfg, patches01)            # (N, S/f, S/f, C): the posterior means
    back = autoencoder.decode(params, cfg, z)                 # (N, S, S) in [0, 1]

Encoding and decoding are jitted with the batch sharded over the local devices; ``encode`` with a
key draws posterior samples, item i from ``fold_in(key, i)``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from btd_jax import keys, parallel
from btd_jax.data.errors import DataError

__all__ = ["AutoencoderConfig", "Autoencoder", "init", "check_params", "loss", "train", "encode", "decode"]


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
    """Sizes and training recipe. ``factor`` f: the latent side is ``image_size / f`` (a power of 2);
    ``latent_channels`` C; widths ``features`` at full size, twice that below."""

    image_size: int = 32
    factor: int = 4
    latent_channels: int = 4
    features: int = 32
    kl_weight: float = 1e-6
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    batch_size: int = 32
    num_steps: int = 1500

    def __post_init__(self):
        f = self.factor
        if f < 1 or f & (f - 1):
            raise DataError(f"autoencoder factor must be a power of 2, got {f}")
        if self.image_size < f or self.image_size % f:
            raise DataError(f"autoencoder image_size {self.image_size} must be a multiple of the factor {f}")
        if self.latent_channels < 1 or self.features < 8 or self.features % 8:
            raise DataError(f"autoencoder latent_channels must be >= 1 and features a multiple of 8, got "
                            f"{self.latent_channels}, {self.features}")
        if self.batch_size < 1 or self.num_steps < 0:
            raise DataError("autoencoder batch_size must be >= 1 and num_steps >= 0")

    @property
    def latent_size(self) -> int:
        return self.image_size // self.factor

    @property
    def widths(self) -> Tuple[int, ...]:
        """Channel width per level, full size first (``log2(f) + 1`` levels)."""
        return tuple(self.features * min(2 ** i, 2) for i in range(int(math.log2(self.factor)) + 1))


def _norm(x):
    return nn.GroupNorm(num_groups=max(1, min(32, x.shape[-1] // 4)))(x)  # LDM's 4 channels per group


class _ResBlock(nn.Module):
    features: int

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(self.features, (3, 3))(nn.silu(_norm(x)))
        h = nn.Conv(self.features, (3, 3))(nn.silu(_norm(h)))
        skip = x if x.shape[-1] == self.features else nn.Conv(self.features, (1, 1))(x)
        return skip + h


class Autoencoder(nn.Module):
    """``encode(x (N,S,S,1)) -> (mean, logvar)`` each (N,S/f,S/f,C); ``decode(z) -> (N,S,S,1)``;
    ``__call__(x, eps)`` reconstructs from the sample ``mean + exp(logvar / 2) eps``."""

    cfg: AutoencoderConfig

    def setup(self):
        w = self.cfg.widths
        self.enc_in = nn.Conv(w[0], (3, 3))
        self.enc_blocks = [_ResBlock(c) for c in w[:-1]]
        self.enc_down = [nn.Conv(c, (3, 3), strides=(2, 2)) for c in w[1:]]
        self.enc_mid = _ResBlock(w[-1])
        self.enc_out = nn.Conv(2 * self.cfg.latent_channels, (3, 3))
        self.dec_in = nn.Conv(w[-1], (3, 3))
        self.dec_mid = _ResBlock(w[-1])
        self.dec_up = [nn.Conv(c, (3, 3)) for c in reversed(w[:-1])]
        self.dec_blocks = [_ResBlock(c) for c in reversed(w[:-1])]
        self.dec_out = nn.Conv(1, (3, 3))

    def encode(self, x):
        h = self.enc_in(x)
        for block, down in zip(self.enc_blocks, self.enc_down):
            h = down(block(h))
        h = self.enc_out(nn.silu(self.enc_mid(h)))
        mean, logvar = jnp.split(h, 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)  # LDM's clamp: exp() stays finite

    def decode(self, z):
        h = self.dec_mid(self.dec_in(z))
        for up, block in zip(self.dec_up, self.dec_blocks):
            h = block(up(jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)))
        return self.dec_out(nn.silu(h))

    def __call__(self, x, eps):
        mean, logvar = self.encode(x)
        return self.decode(mean + jnp.exp(0.5 * logvar) * eps), mean, logvar


def init(cfg: AutoencoderConfig, key: jax.Array) -> Dict[str, Any]:
    s, c = cfg.image_size, cfg.latent_channels
    x = jnp.zeros((1, s, s, 1))
    eps = jnp.zeros((1, cfg.latent_size, cfg.latent_size, c))
    return Autoencoder(cfg).init(key, x, eps)["params"]


def check_params(params, cfg: AutoencoderConfig, what: str = "autoencoder") -> None:
    """Raises :class:`DataError` when ``params`` do not have the shapes of ``cfg``'s autoencoder."""
    want = traverse_util.flatten_dict(dict(jax.eval_shape(lambda k: init(cfg, k), jax.random.PRNGKey(0))), sep="/")
    have = traverse_util.flatten_dict(dict(params), sep="/")
    bad = sorted(set(want) ^ set(have)) or [k for k in sorted(want) if tuple(np.shape(have[k])) != want[k].shape]
    if bad:
        k = bad[0]
        detail = (f"{k} has shape {tuple(np.shape(have[k]))}, the config expects {want[k].shape}"
                  if k in want and k in have else f"parameter {k} is {'missing' if k in want else 'unexpected'}")
        raise DataError(f"{what}: parameters do not fit the config (a model of another size?): {detail}")


def loss(params, cfg: AutoencoderConfig, x: jax.Array, eps: jax.Array) -> Tuple[jax.Array, Dict[str, jax.Array]]:
    """x (N,S,S,1) in [-1, 1], eps (N,S/f,S/f,C) standard normal -> (loss, {'l1', 'l2', 'kl'} per pixel/latent)."""
    rec, mean, logvar = Autoencoder(cfg).apply({"params": params}, x, eps)
    err = rec - x
    l1, l2 = jnp.mean(jnp.abs(err)), jnp.mean(jnp.square(err))
    kl = 0.5 * jnp.mean(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
    per_image = (l1 + l2) * (x.size // x.shape[0]) + cfg.kl_weight * kl * (mean.size // mean.shape[0])
    return per_image, {"l1": l1, "l2": l2, "kl": kl}


def _make_step(cfg: AutoencoderConfig, tx: optax.GradientTransformation):
    def step(params, opt_state, x01, eps):
        (value, parts), grads = jax.value_and_grad(loss, has_aux=True)(params, cfg, x01 * 2.0 - 1.0, eps)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, {"loss": value, **parts}

    return jax.jit(step, donate_argnums=(0, 1))


def _check_patches(patches01, cfg: AutoencoderConfig, what: str) -> np.ndarray:
    x = np.asarray(patches01, np.float32)
    x = x[..., 0] if x.ndim == 4 and x.shape[-1] == 1 else x
    s = cfg.image_size
    if x.ndim != 3 or x.shape[0] == 0 or x.shape[1:] != (s, s):
        raise DataError(f"{what}: expected (N, {s}, {s}) patches for this autoencoder, got shape {x.shape} "
                        "(a model of another size?)")
    if not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0:
        raise DataError(f"{what}: values must be finite and in [0, 1] (window CT with window_ct first)")
    return x


def train(patches01, cfg: AutoencoderConfig, key: jax.Array, progress: Optional[Callable[[int, Dict], None]] = None,
          budget_s: Optional[float] = None, mesh=None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Fit the autoencoder to real (N, S, S) patches in [0, 1] with Adam (warm-up, cosine decay).

    Batches are epoch-wise permutations drawn from ``key``; the batch is sharded over ``mesh``
    (default: the local devices). ``budget_s`` stops early (the info says so). Returns (params, info: steps, seconds,
    stopped_early, losses [[step, loss, l1, l2, kl], ...] every 50 steps).
    """
    x = _check_patches(patches01, cfg, "autoencoder training patches")
    mesh = parallel.make_mesh(jax.local_devices()) if mesh is None else mesh
    n_dev = mesh.devices.size
    batch = -(-min(cfg.batch_size, len(x)) // n_dev) * n_dev
    key, k_init = jax.random.split(key)
    lr = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, min(cfg.warmup_steps, max(cfg.num_steps - 1, 0)),
                                            max(cfg.num_steps, 1), cfg.learning_rate * 0.05)
    tx = optax.adam(lr)
    rep = parallel.replicated(mesh)
    params = jax.device_put(init(cfg, k_init), rep)
    opt_state = jax.device_put(tx.init(params), rep)
    step = _make_step(cfg, tx)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    latent = (cfg.latent_size, cfg.latent_size, cfg.latent_channels)
    t0, losses, done, order = time.perf_counter(), [], 0, np.zeros(0, np.int64)
    for i in range(cfg.num_steps):
        if len(order) < batch:
            order = np.concatenate([order, rng.permutation(len(x))])
        idx, order = order[:batch], order[batch:]
        eps = rng.standard_normal((batch,) + latent).astype(np.float32)
        params, opt_state, m = step(params, opt_state, parallel.shard_batch(x[idx][..., None], mesh),
                                    parallel.shard_batch(eps, mesh))
        done = i + 1
        if i % 50 == 0 or done == cfg.num_steps:
            m = jax.device_get(m)
            losses.append([done] + [float(m[k]) for k in ("loss", "l1", "l2", "kl")])
            if not np.isfinite(losses[-1][1]):
                raise DataError(f"autoencoder training diverged at step {done} (loss {losses[-1][1]}); "
                                "lower the learning rate")
            if progress is not None:
                progress(done, dict(zip(("loss", "l1", "l2", "kl"), losses[-1][1:])))
        if budget_s is not None and time.perf_counter() - t0 > budget_s:
            break
    info = {"steps": done, "planned_steps": cfg.num_steps, "seconds": time.perf_counter() - t0,
            "stopped_early": done < cfg.num_steps, "losses": losses}
    return jax.device_get(params), info


# ----------------------------------------------------------------------------- apply

@functools.lru_cache(maxsize=16)
def _compiled(mesh, cfg: AutoencoderConfig, what: str) -> Callable:
    model = Autoencoder(cfg)

    def enc(params, x01, idx, key):
        mean, logvar = model.apply({"params": params}, x01 * 2.0 - 1.0, method=Autoencoder.encode)
        if what == "mean":
            return mean
        eps = jax.vmap(lambda k: jax.random.normal(k, mean.shape[1:]))(keys.item_keys(key, idx))
        return mean + jnp.exp(0.5 * logvar) * eps

    def dec(params, z, idx, key):
        return jnp.clip((model.apply({"params": params}, z, method=Autoencoder.decode) + 1.0) * 0.5, 0.0, 1.0)

    r, d = parallel.replicated(mesh), parallel.data_sharding(mesh)
    return jax.jit(dec if what == "decode" else enc, in_shardings=(r, d, d, r), out_shardings=d)


def _map(params, cfg: AutoencoderConfig, what: str, x: np.ndarray, key: jax.Array, batch_size: int,
         mesh) -> np.ndarray:
    """The jitted ``what`` ('mean' | 'sample' | 'decode') over every row of ``x``, in padded sharded chunks."""
    mesh = parallel.make_mesh(jax.local_devices()) if mesh is None else mesh
    fn = _compiled(mesh, cfg, what)
    p = jax.device_put(params, parallel.replicated(mesh))
    n_dev = mesh.devices.size
    chunk = -(-min(batch_size, len(x)) // n_dev) * n_dev
    out = []
    for s in range(0, len(x), chunk):
        xb, nv = parallel.pad_to_multiple(x[s:s + chunk], chunk)
        idx = np.arange(s, s + chunk, dtype=np.int32)
        out.append(np.asarray(fn(p, parallel.shard_batch(xb, mesh), parallel.shard_batch(idx, mesh), key))[:nv])
    return np.concatenate(out).astype(np.float32)


def encode(params, cfg: AutoencoderConfig, images01, *, key: Optional[jax.Array] = None, batch_size: int = 256,
           mesh=None) -> np.ndarray:
    """(N, S, S) patches in [0, 1] -> latents (N, S/f, S/f, C): the posterior means, or with ``key``
    posterior samples (item i from ``fold_in(key, i)``). Unscaled (multiply by the LDM's scale)."""
    check_params(params, cfg)
    x = _check_patches(images01, cfg, "images")[..., None]
    return _map(params, cfg, "mean" if key is None else "sample", x, jax.random.key(0) if key is None else key,
                batch_size, mesh)


def decode(params, cfg: AutoencoderConfig, latents, *, batch_size: int = 256, mesh=None) -> np.ndarray:
    """Latents (N, S/f, S/f, C) -> (N, S, S) float32 images in [0, 1] (clipped)."""
    check_params(params, cfg)
    z = np.asarray(latents, np.float32)
    want = (cfg.latent_size, cfg.latent_size, cfg.latent_channels)
    if z.ndim != 4 or z.shape[0] == 0 or z.shape[1:] != want:
        raise DataError(f"latents: expected (N, {want[0]}, {want[1]}, {want[2]}), got shape {z.shape}")
    if not np.isfinite(z).all():
        raise DataError("latents: contain NaN or inf")
    return _map(params, cfg, "decode", z, jax.random.key(0), batch_size, mesh)[..., 0]

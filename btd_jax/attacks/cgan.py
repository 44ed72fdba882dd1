"""A CT-GAN-style conditional in-painting GAN (Mirsky et al. 2019) in Flax, for injection and removal.

As CT-GAN (a pix2pix GAN: U-Net generator, PatchGAN discriminator, L1 + adversarial loss) the
generator in-paints the centre of a patch from its surroundings; here one generator serves both
attacks through a condition channel. Its input is (masked patch, mask, condition) with condition
+1 = inject, -1 = remove, plus an optional noise channel (``noise_std`` > 0; off by default: as
pix2pix found, a short training learns to paint the noise rather than to ignore it); its
transposed-convolution decoder is what a real GAN uses (and what leaves its upsampling traces).

Training targets, from real patches of the attacker's own slices:
* remove: the real patch itself (healthy tissue behind the hole);
* inject: the real patch with a nodule added in HU (``contrast`` times a lobulated opacity on top of
  the real pixels, so the target keeps the scanner's noise).

Small enough to train at demo scale on a CPU in a minute or two; every item's noise comes from
``fold_in(key, global index)``; outside the hole the output is the input bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization, traverse_util

from btd_jax import keys, parallel
from btd_jax.attacks import tamper
from btd_jax.attacks.sdedit import CONTRAST_HU, RADIUS_PX
from btd_jax.data import preprocess
from btd_jax.data.errors import DataError

__all__ = ["CONDITIONS", "GanConfig", "Generator", "Discriminator", "hole_mask", "init", "make_targets",
           "train", "generate", "save", "load"]

CONDITIONS = {"inject": 1.0, "injection": 1.0, "remove": -1.0, "removal": -1.0}
PARAMS_FILE, CONFIG_FILE = "cgan_params.msgpack", "cgan.json"
_HU_SCALE = preprocess.CT_HI - preprocess.CT_LO  # window_ct is linear: 1 HU = 1 / 2700 in [0, 1]


@dataclasses.dataclass(frozen=True)
class GanConfig:
    """Sizes and the pix2pix recipe (Adam 2e-4, beta1 0.5, L1 weight 100), scaled down for a CPU."""

    image_size: int = 32
    hole: int = 16  # side of the in-painted centre square (CT-GAN in-paints the centre of its cube)
    features: int = 16
    disc_features: int = 16
    l1_weight: float = 100.0
    learning_rate: float = 2e-4
    beta1: float = 0.5
    batch_size: int = 32
    num_steps: int = 600
    radius: Tuple[float, float] = RADIUS_PX
    contrast_hu: Tuple[float, float] = CONTRAST_HU  # injected contrast: HU for CT, [0, 1] units for MRI
    noise_std: float = 0.0  # > 0: a noise channel of this std (item i draws from fold_in(key, i))
    modality: str = "CT"  # of the patches it was trained on

    @property
    def in_channels(self) -> int:
        return 3 + int(self.noise_std > 0)

    def __post_init__(self):
        if self.image_size % 8 or self.image_size < 8:
            raise DataError(f"cGAN image_size must be a multiple of 8, got {self.image_size}")
        if not 2 <= self.hole < self.image_size:
            raise DataError(f"cGAN hole must be in [2, image_size), got {self.hole}")


def _norm(x):
    return nn.GroupNorm(num_groups=min(8, x.shape[-1]))(x)


class Generator(nn.Module):
    """pix2pix U-Net, 3 levels: (N,S,S,4) -> (N,S,S,1) in [-1, 1]."""

    features: int = 16

    @nn.compact
    def __call__(self, x):
        f = self.features
        e1 = nn.leaky_relu(nn.Conv(f, (4, 4), (2, 2), name="enc1")(x), 0.2)
        e2 = nn.leaky_relu(_norm(nn.Conv(2 * f, (4, 4), (2, 2), name="enc2")(e1)), 0.2)
        e3 = nn.leaky_relu(_norm(nn.Conv(4 * f, (4, 4), (2, 2), name="enc3")(e2)), 0.2)
        d3 = nn.relu(_norm(nn.ConvTranspose(2 * f, (4, 4), (2, 2), name="dec3")(e3)))
        d2 = nn.relu(_norm(nn.ConvTranspose(f, (4, 4), (2, 2), name="dec2")(jnp.concatenate([d3, e2], -1))))
        return jnp.tanh(nn.ConvTranspose(1, (4, 4), (2, 2), name="dec1")(jnp.concatenate([d2, e1], -1)))


class Discriminator(nn.Module):
    """PatchGAN: (N,S,S,C) -> (N,S/4,S/4) real/fake logits, one per overlapping patch."""

    features: int = 16

    @nn.compact
    def __call__(self, x):
        f = self.features
        x = nn.leaky_relu(nn.Conv(f, (4, 4), (2, 2), name="conv1")(x), 0.2)
        x = nn.leaky_relu(_norm(nn.Conv(2 * f, (4, 4), (2, 2), name="conv2")(x)), 0.2)
        x = nn.leaky_relu(_norm(nn.Conv(2 * f, (3, 3), name="conv3")(x)), 0.2)
        return nn.Conv(1, (3, 3), name="logits")(x)[..., 0]


def hole_mask(cfg: GanConfig) -> np.ndarray:
    """(S, S) float32: 1 on the centre ``hole`` x ``hole`` square (rows/cols [(S-h)//2, (S-h)//2 + h))."""
    m = np.zeros((cfg.image_size, cfg.image_size), np.float32)
    a = (cfg.image_size - cfg.hole) // 2
    m[a:a + cfg.hole, a:a + cfg.hole] = 1.0
    return m


def _gen_input(x01, mask, cond, z, noise_std: float = 0.0):
    """(N,S,S,1) patch, (S,S) mask, (N,) condition, (N,S,S,1) noise -> (N,S,S,3 or 4) generator input."""
    x = (x01 * 2.0 - 1.0) * (1.0 - mask[..., None])
    m = jnp.broadcast_to(mask[None, ..., None], x.shape)
    c = jnp.broadcast_to(cond[:, None, None, None], x.shape)
    return jnp.concatenate([x, m, c] + ([noise_std * z] if noise_std > 0 else []), axis=-1)


def init(cfg: GanConfig, key: jax.Array) -> Dict[str, Any]:
    """{'gen': ..., 'disc': ...} parameters."""
    kg, kd = jax.random.split(key)
    s = cfg.image_size
    c = cfg.in_channels
    return {"gen": Generator(cfg.features).init(kg, jnp.zeros((1, s, s, c)))["params"],
            "disc": Discriminator(cfg.disc_features).init(kd, jnp.zeros((1, s, s, c + 1)))["params"]}


def make_targets(patches01: np.ndarray, cond: np.ndarray, cfg: GanConfig, rng: np.random.Generator) -> np.ndarray:
    """Training targets (N,S,S) in [0, 1]: the patch (remove) or the patch plus a nodule (inject).

    A nodule of radius ``cfg.radius`` (capped to fit the hole) and contrast ``cfg.contrast_hu`` is
    added at a random point of the hole (kept inside it), in HU for CT (linear window: HU / 2700) and
    in [0, 1] units for MRI.
    """
    scale = _HU_SCALE if preprocess.canonical_modality(cfg.modality) == "CT" else 1.0
    out = np.array(patches01, np.float32, copy=True)
    s, a = cfg.image_size, (cfg.image_size - cfg.hole) // 2
    hole = hole_mask(cfg)  # the generator only writes there: cut the blob's soft tail at the hole's edge
    for i in np.flatnonzero(np.asarray(cond) > 0):
        r = rng.uniform(cfg.radius[0], min(cfg.radius[1], cfg.hole / 2.0 - 1.0))
        cy, cx = rng.uniform(a + r, a + cfg.hole - 1 - r, size=2) if cfg.hole - 1 > 2 * r else (s / 2, s / 2)
        alpha = tamper.nodule_alpha((s, s), cy, cx, r, rng) * hole
        out[i] = np.clip(out[i] + rng.uniform(*cfg.contrast_hu) / scale * alpha, 0.0, 1.0)
    return out


def _bce(logits, target: float):
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target)))


def _make_step(cfg: GanConfig, tx: optax.GradientTransformation):
    """Jitted simultaneous G and D update: G minimises adversarial + l1_weight x L1 (hole pixels), D
    the PatchGAN cross-entropy on (input, target) vs (input, frozen G output)."""
    m = jnp.asarray(hole_mask(cfg))
    gen, disc = Generator(cfg.features), Discriminator(cfg.disc_features)

    def step(params, opt_state, x01, target, cond, z):
        gin = _gen_input(x01, m, cond, z, cfg.noise_std)
        t = target * 2.0 - 1.0

        def g_fn(gp):
            fake = m[..., None] * gen.apply({"params": gp}, gin) + (1.0 - m[..., None]) * t
            l1 = jnp.sum(jnp.abs(fake - t)) / (jnp.sum(m) * x01.shape[0])
            adv = _bce(disc.apply({"params": params["disc"]}, jnp.concatenate([gin, fake], -1)), 1.0)
            return adv + cfg.l1_weight * l1, (fake, l1)

        (g_loss, (fake, l1)), g_grads = jax.value_and_grad(g_fn, has_aux=True)(params["gen"])
        fake = jax.lax.stop_gradient(fake)

        def d_fn(dp):
            real_logits = disc.apply({"params": dp}, jnp.concatenate([gin, t], -1))
            fake_logits = disc.apply({"params": dp}, jnp.concatenate([gin, fake], -1))
            return 0.5 * (_bce(real_logits, 1.0) + _bce(fake_logits, 0.0))

        d_loss, d_grads = jax.value_and_grad(d_fn)(params["disc"])
        updates, opt_state = tx.update({"gen": g_grads, "disc": d_grads}, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, jnp.stack([g_loss, d_loss, l1])

    return jax.jit(step)


def train(patches01: np.ndarray, cfg: GanConfig, key: jax.Array, progress: Optional[Callable[[int, Dict], None]] = None,
          budget_s: Optional[float] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Train on real (N, S, S) patches in [0, 1]; half of every batch inject, half remove.

    ``budget_s`` stops early (and says so in the info) when the steps would not fit.
    Returns (params, info with losses, steps, seconds, stopped_early).
    """
    x = np.asarray(patches01, np.float32)
    if x.ndim != 3 or x.shape[1:] != (cfg.image_size, cfg.image_size):
        raise DataError(f"cGAN training patches must be (N, {cfg.image_size}, {cfg.image_size}), got {x.shape}")
    mesh = parallel.make_mesh(jax.local_devices())
    n_dev = mesh.devices.size
    batch = -(-cfg.batch_size // n_dev) * n_dev
    key, k_init = jax.random.split(key)
    params = init(cfg, k_init)
    tx = optax.adam(cfg.learning_rate, b1=cfg.beta1, b2=0.999)
    rep = parallel.replicated(mesh)
    params = jax.device_put(params, rep)
    opt_state = jax.device_put(tx.init(params), rep)
    step = _make_step(cfg, tx)
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
    t0, losses, done = time.perf_counter(), [], 0
    for i in range(cfg.num_steps):
        idx = rng.integers(0, len(x), batch)
        xb = np.stack([np.rot90(p[:, ::-1] if a >= 4 else p, a % 4) for p, a in zip(x[idx], rng.integers(0, 8, batch))])
        cond = np.where(np.arange(batch) % 2 == 0, 1.0, -1.0).astype(np.float32)
        target = make_targets(xb, cond, cfg, rng)
        z = rng.standard_normal(xb.shape + (1,)).astype(np.float32)
        params, opt_state, loss = step(params, opt_state, *(parallel.shard_batch(a, mesh) for a in
                                                            (xb[..., None], target[..., None], cond, z)))
        done = i + 1
        if i % 50 == 0 or done == cfg.num_steps:
            losses.append([done, *np.asarray(loss).tolist()])
            if progress is not None:
                progress(done, {"g_loss": losses[-1][1], "d_loss": losses[-1][2], "l1": losses[-1][3]})
        if budget_s is not None and time.perf_counter() - t0 > budget_s:
            break
    info = {"steps": done, "planned_steps": cfg.num_steps, "seconds": time.perf_counter() - t0,
            "stopped_early": done < cfg.num_steps, "losses": losses}
    return jax.device_get(params), info


# ----------------------------------------------------------------------------- apply

def _generate_local(gen_params, x01, cond, idx, key, *, cfg: GanConfig):
    z = jax.vmap(lambda k: jax.random.normal(k, x01.shape[1:]))(keys.item_keys(key, idx))
    m = jnp.asarray(hole_mask(cfg))
    g = Generator(cfg.features).apply({"params": gen_params}, _gen_input(x01, m, cond, z, cfg.noise_std))
    return jnp.clip((g + 1.0) * 0.5, 0.0, 1.0)


@functools.lru_cache(maxsize=16)
def _compiled(mesh, cfg: GanConfig) -> Callable:
    ax = mesh.axis_names[0]
    rep, data = jax.sharding.PartitionSpec(), jax.sharding.PartitionSpec(ax)
    local = jax.shard_map(functools.partial(_generate_local, cfg=cfg), mesh=mesh,
                          in_specs=(rep, data, data, data, rep), out_specs=data)
    r, d = parallel.replicated(mesh), parallel.data_sharding(mesh)
    return jax.jit(local, in_shardings=(r, d, d, d, r), out_shardings=d)


def _check_gen_params(gen_params, cfg: GanConfig) -> None:
    want = jax.eval_shape(lambda: Generator(cfg.features).init(
        jax.random.PRNGKey(0), jnp.zeros((1, cfg.image_size, cfg.image_size, cfg.in_channels)))["params"])
    want = traverse_util.flatten_dict(dict(want), sep="/")
    have = traverse_util.flatten_dict(dict(gen_params), sep="/")
    bad = sorted(set(want) ^ set(have)) or [k for k in sorted(want) if tuple(np.shape(have[k])) != want[k].shape]
    if bad:
        raise DataError(f"cGAN generator parameters do not fit its config (features {cfg.features}): "
                        f"first mismatch at {bad[0]}")


def generate(params: Dict[str, Any], cfg: GanConfig, images01, attack: str, key: jax.Array, *,
             batch_size: int = 256, mesh=None) -> Tuple[np.ndarray, np.ndarray]:
    """In-paint the centre hole of every (N, S, S) patch in [0, 1] for ``attack`` ('inject'/'remove').

    Returns (tampered (N, S, S) float32 in [0, 1], equal to the input outside the hole; the hole
    mask (N, S, S) bool). Item i draws its noise from ``fold_in(key, i)``.
    """
    if str(attack).lower() not in CONDITIONS:
        raise DataError(f"unknown attack {attack!r}; expected one of {', '.join(CONDITIONS)}")
    gen = params["gen"] if "gen" in params else params
    _check_gen_params(gen, cfg)
    x = np.asarray(images01, np.float32)
    if x.ndim != 3 or x.shape[1:] != (cfg.image_size, cfg.image_size):
        raise DataError(f"images: expected (N, {cfg.image_size}, {cfg.image_size}) patches for this cGAN, "
                        f"got shape {x.shape} (a model of the wrong size?)")
    if not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0:
        raise DataError("images: values must be finite and in [0, 1] (window CT with window_ct first)")
    mesh = parallel.make_mesh(jax.local_devices()) if mesh is None else mesh
    fn = _compiled(mesh, cfg)
    g = jax.device_put(gen, parallel.replicated(mesh))
    n_dev = mesh.devices.size
    chunk = -(-min(batch_size, len(x)) // n_dev) * n_dev
    cond_value = np.float32(CONDITIONS[str(attack).lower()])
    out = np.empty_like(x)
    for s in range(0, len(x), chunk):
        xb, nv = parallel.pad_to_multiple(x[s:s + chunk], chunk)
        idx = np.arange(s, s + chunk, dtype=np.int32)
        y = fn(g, *(parallel.shard_batch(a, mesh) for a in (xb[..., None], np.full(chunk, cond_value), idx)), key)
        out[s:s + nv] = np.asarray(y)[:nv, ..., 0]
    mask = np.broadcast_to(hole_mask(cfg) > 0, x.shape)
    return np.where(mask, out, x).astype(np.float32), mask.copy()


# ----------------------------------------------------------------------------- files

def save(directory: str | Path, params: Dict[str, Any], cfg: GanConfig, info: Optional[Dict] = None) -> Path:
    """Writes ``cgan_params.msgpack`` and ``cgan.json`` (config + training info) under ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / PARAMS_FILE).write_bytes(serialization.to_bytes(jax.device_get(params)))
    (d / CONFIG_FILE).write_text(json.dumps({"config": dataclasses.asdict(cfg), "info": info or {}}, indent=2))
    return d


def load(directory: str | Path) -> Tuple[Dict[str, Any], GanConfig]:
    """(params, config) saved by :func:`save`; one DataError for a missing or mismatched model."""
    d = Path(directory)
    if not (d / PARAMS_FILE).is_file() or not (d / CONFIG_FILE).is_file():
        raise DataError(f"{d}: no cGAN attacker here (expected {PARAMS_FILE} and {CONFIG_FILE}; "
                        "train one with --train_attacker)")
    raw = json.loads((d / CONFIG_FILE).read_text())["config"]
    cfg = GanConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
    template = jax.eval_shape(lambda k: init(cfg, k), jax.random.PRNGKey(0))
    try:
        params = serialization.from_bytes(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template),
                                          (d / PARAMS_FILE).read_bytes())
    except (ValueError, KeyError) as e:
        raise DataError(f"{d / PARAMS_FILE}: does not fit its config {raw}: {e}") from None
    _check_gen_params(params["gen"], cfg)
    return params, cfg

"""Diffusion in-painting (RePaint, Lugmayr et al. 2022) with any btd_jax DDPM, on every local device.

Pixels where ``mask`` is 1 are generated; the rest are *known*. At every reverse step the unknown
pixels follow the DDPM and the known ones are re-noised from the original with ``q_sample`` to the
same noise level, and the two are merged. After every ``jump_length`` reverse steps the merged
image is diffused forward again by ``jump_length`` steps, ``resamplings - 1`` times (RePaint's
"jumps"), so that the generated region harmonises with its context.

Sampling runs on a respaced grid of ``steps`` timesteps from ``t_start`` down to 0 (the respacing
of improved-diffusion: the grid's betas are ``1 - abar[tau_i] / abar[tau_{i-1}]``), with the
``'ddpm'`` posterior (RePaint's sampler) or the faster deterministic ``'ddim'`` update. ``t_start``
= T - 1 regenerates the region from noise; a smaller ``t_start`` with an ``init`` image is SDEdit.

Every item draws its noise from ``fold_in(key, global index)``, so results do not depend on batch
size, padding or device count. The returned images equal the input exactly outside the mask::

    out = repaint.inpaint(params, cfg, images01, masks, jax.random.key(0))   # (N, H, W) in [0, 1]
    z = repaint.inpaint_model_space(params, cfg, latents, masks, key)       # (N, h, w, C), model units

:func:`inpaint_model_space` is the same sampler on arrays already in the model's units (e.g. the
scaled latents of a latent diffusion model, whose DDPM has ``auto_normalize`` off): no [0, 1]
mapping, no clipping of the result, any channel count.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from btd_jax import diffusion, keys, parallel
from btd_jax.configs import SAMPLERS, Config, ModelConfig
from btd_jax.data.errors import DataError
from btd_jax.models.unet import Unet, abstract_params

__all__ = ["RePaintOptions", "REMOVAL", "INJECTION", "REMOVAL_FULL", "INJECTION_FULL", "PRESETS", "DEFAULT_PRESET",
           "preset_options", "time_grid", "respaced_schedule", "jump_schedule", "check_params",
           "check_inputs", "check_model_inputs", "inpaint", "inpaint_model_space"]


@dataclasses.dataclass(frozen=True)
class RePaintOptions:
    """Static sampling settings (hashable: one compiled function per distinct value).

    ``steps``: grid size (None: every timestep of [0, t_start], the full grid); ``t_start``: the grid's
    top timestep (None: T - 1, i.e. from noise);
    ``jump_length`` / ``resamplings``: RePaint's j and r (r = 1: no resampling); ``eta``: DDIM noise.
    """

    sampler: str = "ddim"
    steps: Optional[int] = 25
    t_start: Optional[int] = None
    jump_length: int = 5
    resamplings: int = 2
    eta: float = 0.0
    clip_denoised: bool = True

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise DataError(f"unknown sampler {self.sampler!r}; expected one of {', '.join(SAMPLERS)}")
        if (self.steps is not None and self.steps < 1) or self.jump_length < 1 or self.resamplings < 1:
            raise DataError(f"steps, jump_length and resamplings must be >= 1, got {self.steps}, "
                            f"{self.jump_length}, {self.resamplings}")


# Defaults measured on the demo's attacker: RePaint from noise needs the stochastic sampler and a few
# resamplings to harmonise with its context (DDIM with r = 2 left bright, unrelated blobs); SDEdit
# needs DDIM, whose deterministic path keeps the painted nodule (the DDPM posterior noise erased it).
REMOVAL = RePaintOptions(sampler="ddpm", steps=30, jump_length=5, resamplings=3)
INJECTION = RePaintOptions(sampler="ddim", steps=15, jump_length=5, resamplings=2)
# As published. RePaint (Lugmayr et al. 2022): the ancestral (DDPM) sampler on 250 respaced steps,
# jump length j = 10, r = 10 resamplings (2410 model calls per fake). SDEdit (Meng et al. 2022): the
# ancestral sampler over every timestep from t* down to 0, no resampling (t* + 1 model calls).
REMOVAL_FULL = RePaintOptions(sampler="ddpm", steps=250, jump_length=10, resamplings=10)
INJECTION_FULL = RePaintOptions(sampler="ddpm", steps=None, jump_length=10, resamplings=1)
# Named settings per method: "full" (as published, the default for new sets) and "fast" (the demo's
# budget: ~30x fewer model calls, smoother fakes than the full chain).
PRESETS = {"full": {"repaint": REMOVAL_FULL, "sdedit": INJECTION_FULL},
           "fast": {"repaint": REMOVAL, "sdedit": INJECTION}}
DEFAULT_PRESET = "full"


def preset_options(preset: str, method: str) -> RePaintOptions:
    """The sampler settings of ``preset`` ('full' | 'fast') for ``method`` ('repaint' | 'sdedit')."""
    if preset not in PRESETS:
        raise DataError(f"unknown sampling preset {preset!r}; expected one of {', '.join(PRESETS)}")
    if method not in PRESETS[preset]:
        raise DataError(f"method {method!r} has no sampling preset; expected one of {', '.join(PRESETS[preset])}")
    return PRESETS[preset][method]


def time_grid(num_timesteps: int, steps: Optional[int], t_start: Optional[int] = None) -> np.ndarray:
    """Ascending int32 timesteps ``(S,)``: ``steps`` points evenly from 0 to ``t_start`` (default T - 1;
    improved-diffusion's respacing); ``steps`` None: every timestep."""
    top = num_timesteps - 1 if t_start is None else int(t_start)
    if not 0 <= top < num_timesteps:
        raise DataError(f"t_start must be in [0, {num_timesteps}), got {t_start}")
    steps = top + 1 if steps is None else steps
    if not 1 <= steps <= top + 1:
        raise DataError(f"steps must be in [1, t_start + 1 = {top + 1}], got {steps}")
    return np.unique(np.round(np.linspace(0, top, steps)).astype(np.int32))


def respaced_schedule(cfg: Config, taus: np.ndarray) -> diffusion.Schedule:
    """The DDPM on the sub-grid ``taus``: same abar at every grid point, betas recomputed (float64)."""
    d = cfg.diffusion
    betas = diffusion.beta_schedule(d.beta_schedule, d.timesteps, **dict(d.schedule_kwargs))
    abar = np.cumprod(1.0 - betas)[np.asarray(taus)]
    prev = np.concatenate([[1.0], abar[:-1]])
    return diffusion.Schedule.from_betas(1.0 - abar / prev, d.objective)


def jump_schedule(steps: int, jump_length: int, resamplings: int) -> np.ndarray:
    """RePaint's time path over grid indices, ``(K, 2)`` int32 pairs (from, to).

    Starts at ``steps - 1`` and ends at -1 (the clean image). ``to = from - 1`` is a reverse step,
    ``to = from + 1`` a forward (re-noising) step; after reaching each multiple of ``jump_length``
    the path climbs back ``jump_length`` steps, ``resamplings - 1`` times (Lugmayr's schedule).
    """
    jumps = {j: resamplings - 1 for j in range(0, steps - jump_length, jump_length)}
    i, path = steps - 1, [steps - 1]
    while i >= 0:
        i -= 1
        path.append(i)
        if jumps.get(i, 0) > 0:
            jumps[i] -= 1
            for _ in range(jump_length):
                i += 1
                path.append(i)
    p = np.asarray(path, np.int32)
    return np.stack([p[:-1], p[1:]], axis=1)


# ----------------------------------------------------------------------------- validation

def check_params(params, model_cfg: ModelConfig, what: str = "model") -> None:
    """Raises :class:`DataError` when ``params`` do not have the shapes of ``model_cfg``'s U-Net."""
    want = traverse_util.flatten_dict(dict(abstract_params(model_cfg)), sep="/")
    have = traverse_util.flatten_dict(dict(params), sep="/")
    bad = sorted(set(want) ^ set(have)) or [k for k in sorted(want) if tuple(np.shape(have[k])) != want[k].shape]
    if bad:
        k = bad[0]
        detail = (f"{k} has shape {tuple(np.shape(have[k]))}, the config expects {want[k].shape}"
                  if k in want and k in have else f"parameter {k} is {'missing' if k in want else 'unexpected'}")
        raise DataError(f"{what}: parameters do not fit the config (a model of another size?): {detail}")


def check_inputs(images, masks, image_size: int, init=None) -> tuple:
    """-> (images (N,S,S,1) float32, masks (N,S,S,1) float32, init or images); one DataError if wrong."""
    x = np.asarray(images, np.float32)
    x = x[..., 0] if x.ndim == 4 and x.shape[-1] == 1 else x
    if x.ndim != 3 or x.shape[0] == 0:
        raise DataError(f"images: expected (N, H, W) patches, got shape {x.shape}")
    if x.shape[1:] != (image_size, image_size):
        raise DataError(f"images are {x.shape[1]}x{x.shape[2]} but the model expects {image_size}x{image_size} "
                        "(a model of the wrong size for these patches)")
    m = np.asarray(masks)
    m = m[..., 0] if m.ndim == 4 and m.shape[-1] == 1 else m
    if m.shape != x.shape:
        raise DataError(f"masks: shape {m.shape} does not match the images {x.shape}")
    m = (m > 0.5).astype(np.float32)
    if not np.all(m.reshape(len(m), -1).any(axis=1)):
        raise DataError(f"masks: item {int(np.argmin(m.reshape(len(m), -1).any(axis=1)))} selects no pixel")
    init = x if init is None else np.asarray(init, np.float32).reshape(x.shape)
    for name, a in (("images", x), ("init", init)):
        if not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0:
            raise DataError(f"{name}: values must be finite and in [0, 1] (window CT with window_ct first)")
    return x[..., None], m[..., None], init[..., None]


def check_model_inputs(x, masks, cfg: Config, init=None) -> tuple:
    """Model-unit arrays -> (x (N,h,w,C), masks (N,h,w,1), init or x), float32; one DataError if wrong.

    ``x``/``init``: (N, h, w, C) with h = w = ``cfg.image_size`` and C = ``cfg.model.channels``, finite;
    ``masks``: (N, h, w) or (N, h, w, 1), > 0.5 = generate (one mask for every channel).
    """
    want = (cfg.image_size, cfg.image_size, cfg.model.channels)
    x = np.asarray(x, np.float32)
    if x.ndim != 4 or x.shape[0] == 0 or x.shape[1:] != want:
        raise DataError(f"model-space inputs: expected (N, {want[0]}, {want[1]}, {want[2]}) for {cfg.name!r}, got "
                        f"shape {x.shape} (a model of another size?)")
    m = np.asarray(masks)
    m = m[..., 0] if m.ndim == 4 and m.shape[-1] == 1 else m
    if m.shape != x.shape[:3]:
        raise DataError(f"masks: shape {m.shape} does not match the inputs' {x.shape[:3]}")
    m = (m > 0.5).astype(np.float32)
    if not np.all(m.reshape(len(m), -1).any(axis=1)):
        raise DataError(f"masks: item {int(np.argmin(m.reshape(len(m), -1).any(axis=1)))} selects no position")
    init = x if init is None else np.asarray(init, np.float32)
    if init.shape != x.shape:
        raise DataError(f"init: shape {init.shape} does not match the inputs' {x.shape}")
    for name, a in (("inputs", x), ("init", init)):
        if not np.isfinite(a).all():
            raise DataError(f"{name}: contains NaN or inf")
    return x, m[..., None], init


# ----------------------------------------------------------------------------- the sampler

def _item_noise(item_keys: jax.Array, k: jax.Array, shape) -> jax.Array:
    """(N,) keys -> (N, *shape) standard normal drawn from fold_in(item_key, k)."""
    return jax.vmap(lambda ik: jax.random.normal(jax.random.fold_in(ik, k), shape))(item_keys)


def _reverse(opts: RePaintOptions, sched, model_fn, x, i, z):
    """One reverse step on the respaced grid from index i to i - 1 (i = 0 gives the clean image)."""
    if opts.sampler == "ddpm":
        return diffusion.p_sample(sched, model_fn, x, i, None, clip_denoised=opts.clip_denoised, noise=z)[0]
    return diffusion.ddim_step(sched, model_fn, x, i, i - 1, None, eta=opts.eta, clip_denoised=opts.clip_denoised,
                               noise=z)[0]


def _sample_local(params, sched, taus, pairs, x0, m, init, idx, key, *, opts: RePaintOptions,
                  model_cfg: ModelConfig):
    """One device's rows in the model's units: x0, init (B,h,w,C), m (B,h,w,1), idx (B,) -> (B,h,w,C)."""
    model = Unet.from_config(model_cfg)

    def model_fn(x, i):
        return model.apply({"params": params}, x, taus[i])

    per_item = keys.item_keys(key, idx)
    shape = x0.shape[1:]
    top = sched.num_timesteps - 1
    start = jnp.where(m > 0, init, x0)
    x = diffusion.q_sample(sched, start, top, _item_noise(per_item, 0, shape))

    def body(x, inp):
        k, (a, b) = inp
        z1, z2 = _item_noise(per_item, 2 * k + 1, shape), _item_noise(per_item, 2 * k + 2, shape)

        def down(x):
            gen = _reverse(opts, sched, model_fn, x, a, z1)
            known = jnp.where(b >= 0, diffusion.q_sample(sched, x0, jnp.maximum(b, 0), z2), x0)
            return m * gen + (1.0 - m) * known

        def up(x):
            beta = sched.betas[b]
            return jnp.sqrt(1.0 - beta) * x + jnp.sqrt(beta) * z1

        return jax.lax.cond(b < a, down, up, x), None

    x, _ = jax.lax.scan(body, x, (jnp.arange(pairs.shape[0], dtype=jnp.int32), (pairs[:, 0], pairs[:, 1])))
    return x


def _inpaint_local(params, sched, taus, pairs, x, m, init, idx, key, *, opts: RePaintOptions,
                   model_cfg: ModelConfig, pixel: bool):
    """``pixel``: x, init in [0, 1] -> [0, 1] (the DDPM works in [-1, 1]); else model units in and out."""
    if not pixel:
        return _sample_local(params, sched, taus, pairs, x, m, init, idx, key, opts=opts, model_cfg=model_cfg)
    y = _sample_local(params, sched, taus, pairs, diffusion.normalize(x), m, diffusion.normalize(init), idx, key,
                      opts=opts, model_cfg=model_cfg)
    return jnp.clip(diffusion.unnormalize(y), 0.0, 1.0)


@functools.lru_cache(maxsize=32)
def _compiled(mesh, opts: RePaintOptions, model_cfg: ModelConfig, pixel: bool = True) -> Callable:
    """One jitted function per (mesh, options, model, units); every device works on its own rows."""
    ax = mesh.axis_names[0]
    rep, data = jax.sharding.PartitionSpec(), jax.sharding.PartitionSpec(ax)
    local = jax.shard_map(functools.partial(_inpaint_local, opts=opts, model_cfg=model_cfg, pixel=pixel), mesh=mesh,
                          in_specs=(rep, rep, rep, rep, data, data, data, data, rep), out_specs=data)
    r, d = parallel.replicated(mesh), parallel.data_sharding(mesh)
    return jax.jit(local, in_shardings=(r, r, r, r, d, d, d, d, r), out_shardings=d)


def _run(params, cfg: Config, x: np.ndarray, m: np.ndarray, init: np.ndarray, key: jax.Array,
         options: RePaintOptions, batch_size: int, mesh, progress: Optional[Callable[[int], None]],
         pixel: bool) -> np.ndarray:
    """The sampler over every row of checked (N,h,w,C) inputs, in chunks sharded over ``mesh``."""
    taus = time_grid(cfg.diffusion.timesteps, options.steps, options.t_start)
    pairs = jump_schedule(len(taus), options.jump_length, options.resamplings)
    mesh = parallel.make_mesh(jax.local_devices()) if mesh is None else mesh
    rep = parallel.replicated(mesh)
    p, sched = jax.device_put(params, rep), jax.device_put(respaced_schedule(cfg, taus), rep)
    taus_d, pairs_d = jax.device_put(jnp.asarray(taus), rep), jax.device_put(jnp.asarray(pairs), rep)
    fn = _compiled(mesh, options, cfg.model, pixel)
    n_dev = mesh.devices.size
    chunk = -(-min(batch_size, len(x)) // n_dev) * n_dev
    out = np.empty(x.shape, np.float32)
    for s in range(0, len(x), chunk):
        parts = [parallel.pad_to_multiple(a[s:s + chunk], chunk)[0] for a in (x, m, init)]
        nv = min(chunk, len(x) - s)
        idx = np.arange(s, s + chunk, dtype=np.int32)
        y = fn(p, sched, taus_d, pairs_d, *(parallel.shard_batch(a, mesh) for a in parts),
               parallel.shard_batch(idx, mesh), key)
        out[s:s + nv] = np.asarray(y)[:nv]
        if progress is not None:
            progress(nv)
    return out


def inpaint(params, cfg: Config, images, masks, key: jax.Array, *, init=None,
            options: RePaintOptions = RePaintOptions(), batch_size: int = 64, mesh=None,
            progress: Optional[Callable[[int], None]] = None, composite: bool = True) -> np.ndarray:
    """RePaint ``images`` where ``masks`` is set.

    Args:
      params: the DDPM's parameters (shapes of ``cfg.model``); cfg: its config.
      images: (N, H, W) patches in [0, 1] of the model's size; masks: (N, H, W), > 0.5 = generate.
      key: PRNG key; item i uses ``fold_in(key, i)``.
      init: (N, H, W) in [0, 1] whose masked pixels seed the sampler at ``options.t_start`` (SDEdit);
        default the images themselves (irrelevant when starting from T - 1).
      batch_size: rows per compiled call (rounded up to the device count).
      composite: paste the result into ``images`` on the host (bit-exact outside the masks); False
        returns the sampler's own final image, whose known pixels match to float rounding.
    Returns:
      (N, H, W) float32 in [0, 1], equal to ``images`` outside the masks.
    """
    check_params(params, cfg.model, f"{cfg.name} DDPM")
    x, m, init = check_inputs(images, masks, cfg.image_size, init)
    out = _run(params, cfg, x, m, init, key, options, batch_size, mesh, progress, pixel=True)[..., 0]
    if not composite:
        return out
    # The last step already puts x0 in the known pixels; pasting on the host makes them bit-exact.
    return np.where(m[..., 0] > 0, out, x[..., 0]).astype(np.float32)


def inpaint_model_space(params, cfg: Config, x, masks, key: jax.Array, *, init=None,
                        options: RePaintOptions = RePaintOptions(clip_denoised=False), batch_size: int = 64,
                        mesh=None, progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
    """RePaint arrays already in the DDPM's units (e.g. scaled latents) where ``masks`` is set.

    Args:
      params: the DDPM's parameters.
      cfg: its config (``cfg.model.channels`` channels of ``cfg.image_size``).
      x: (N, h, w, C) float, finite; masks: (N, h, w), > 0.5 = generate (all channels of a position).
      key: PRNG key; item i uses ``fold_in(key, i)``.
      init: (N, h, w, C) whose masked positions seed the sampler at ``options.t_start`` (SDEdit).
      options: sampler settings; by default the x0 prediction is not clipped (latents are not in [-1, 1]).
    Returns:
      (N, h, w, C) float32, equal to ``x`` (bit for bit) at unmasked positions.
    """
    check_params(params, cfg.model, f"{cfg.name} DDPM")
    x, m, init = check_model_inputs(x, masks, cfg, init)
    out = _run(params, cfg, x, m, init, key, options, batch_size, mesh, progress, pixel=False)
    return np.where(m > 0, out, x).astype(np.float32)

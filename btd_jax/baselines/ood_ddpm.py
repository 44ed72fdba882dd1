"""OOD-DDPM: multi-level diffusion reconstruction errors, z-scored on validation data and averaged.

Reference: M. S. Graham, W. H. L. Pinaya, P.-D. Tudosi, P. Nachev, S. Ourselin, M. J. Cardoso,
"Denoising diffusion models for out-of-distribution detection", CVPR Workshops 2023 (the "OOD DDPM"
of the BTD paper's baselines, section 4). The method noises an input to several diffusion levels
t, reconstructs each back to t = 0 with the in-distribution DDPM, measures the reconstruction error
per level, z-scores every level's error with the mean/std of a held-out in-distribution
validation set, and averages the z-scores into one OOD score.

Here the DDPM is the same lucidrains U-Net and schedule as BTD (:mod:`btd_jax.models.unet`,
:mod:`btd_jax.diffusion`). ``fit(train, cfg, key, params=...)`` takes a trained BTD network (e.g.
``Scorer.load(workdir).params`` with ``cfg.model``/``cfg.diffusion`` set from the BTD config) and
only computes the validation statistics; without ``params`` it trains a DDPM of ``cfg.model`` on the
training split itself with the shared baseline training loop (plain Adam, no EMA).

What differs from the original: (1) reconstruction from each level uses deterministic DDIM
(eta = 0) with ``recon_steps`` evenly spaced steps down to t = 0 (``recon_steps=1`` is the one-step
x0 prediction) instead of PLMS with 100 steps; (2) only the MSE is used, since LPIPS needs
ImageNet-pretrained weights that are not available offline; (3) the levels are fractions of the
schedule length (default ten evenly spaced levels, as in the paper's sweep over t). The noise
for each patch is fixed by ``seed`` and the patch's index in the array scored, so scores are
reproducible and independent of the batch size.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from btd_jax import diffusion, keys
from btd_jax.baselines import base
from btd_jax.baselines._training import as_key, batched_apply, fit_reconstruction
from btd_jax.configs import DiffusionConfig, ModelConfig
from btd_jax.models import unet

__all__ = ["Config", "TINY", "level_timesteps", "ddim_paths", "level_noise", "recon_errors", "fit", "score", "BASELINE"]


@dataclasses.dataclass(frozen=True)
class Config:
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = dataclasses.field(default_factory=DiffusionConfig)
    levels: Tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # t / T
    recon_steps: int = 1  # DDIM steps from each level to t = 0 (1 = one-step x0 prediction)
    val_fraction: float = 0.1  # of the training patches, held out for the z-score statistics
    center: Optional[int] = None  # error window (None: whole patch); fixed at fit time with the statistics
    seed: int = 0  # noise of the forward (noising) process
    # Own-DDPM training (ignored when fit() is given pre-trained params).
    steps: int = 20000
    batch_size: int = 64
    learning_rate: float = 1e-4


TINY = Config(model=ModelConfig(dim=8, dim_mults=(1,), attn_heads=1, attn_dim_head=8),
              diffusion=DiffusionConfig(image_size=16, timesteps=100, sampling_timesteps=10),
              levels=(0.1, 0.3, 0.6), recon_steps=2, val_fraction=0.25, steps=30, batch_size=16,
              learning_rate=2e-3)


def level_timesteps(levels: Tuple[float, ...], num_timesteps: int, recon_steps: int = 1) -> np.ndarray:
    """Fractions of the schedule -> distinct int timesteps in [recon_steps, T-1] (ascending)."""
    if not levels or any(not 0 < f < 1 for f in levels):
        raise ValueError(f"levels must be fractions in (0, 1), got {levels}")
    if not 1 <= recon_steps < num_timesteps:
        raise ValueError(f"recon_steps must be in [1, {num_timesteps - 1}], got {recon_steps}")
    t = np.round(np.asarray(levels) * num_timesteps)
    return np.unique(np.clip(t, recon_steps, num_timesteps - 1).astype(np.int32))


def ddim_paths(timesteps: np.ndarray, recon_steps: int) -> np.ndarray:
    """(recon_steps + 1, L) int32 table of DDIM times; column l runs from ``timesteps[l]`` down to -1.

    Like lucidrains' ``ddim_time_pairs`` (linspace, truncation toward zero), per level; every level
    has exactly ``recon_steps`` distinct steps because ``timesteps >= recon_steps``.
    """
    ts = np.asarray(timesteps, np.float64)
    frac = np.linspace(1.0, 0.0, recon_steps + 1)[:, None]
    return np.trunc(-1 + frac * (ts[None, :] + 1)).astype(np.int32)


def level_noise(key: jax.Array, index: jax.Array, n_levels: int, shape: Tuple[int, ...]) -> jax.Array:
    """(L*N, *shape) standard normal noise, level-major; patch ``index[i]`` at level l uses
    ``normal(item_key(item_key(key, l), index[i]))`` so it does not depend on the batching."""
    def level(l):
        return jax.vmap(lambda k: jax.random.normal(k, shape))(keys.item_keys(keys.item_key(key, l), index))
    return jnp.concatenate([level(l) for l in range(n_levels)])


def recon_errors(apply_fn, sched: diffusion.Schedule, x01: jax.Array, noise: jax.Array, timesteps: np.ndarray,
                 recon_steps: int, center: Optional[int] = None) -> jax.Array:
    """Per-level reconstruction MSE (in [-1,1] units) -> (N, L).

    ``apply_fn(x, t_vec) -> model_out``; ``x01`` (N,H,W,1) in [0,1]; ``noise`` (L*N,H,W,1) level-major
    (see :func:`level_noise`). All L levels run as one batch of L*N images through a ``lax.scan``
    over the DDIM steps (one network trace).
    """
    n, n_lev = x01.shape[0], len(timesteps)
    x0 = diffusion.normalize(x01)
    x0_all = jnp.tile(x0, (n_lev, 1, 1, 1))  # level-major: rows l*n .. l*n+n-1 are level l
    times = jnp.asarray(np.repeat(ddim_paths(timesteps, recon_steps), n, axis=1))  # (k+1, L*N)
    x = diffusion.q_sample(sched, x0_all, times[0], noise)

    def step(x, ts):
        t, t_prev = ts
        return diffusion.ddim_step(sched, apply_fn, x, t, t_prev, None, eta=0.0, clip_denoised=True)[0], None

    x, _ = jax.lax.scan(step, x, (times[:-1], times[1:]))
    err = base.window_mean(jnp.square(x - x0_all)[..., 0], center)
    return err.reshape(n_lev, n).T


def _setup(cfg: Config):
    model = unet.Unet.from_config(cfg.model)
    sched = diffusion.make_schedule(cfg.diffusion)
    return model, sched, level_timesteps(cfg.levels, cfg.diffusion.timesteps, cfg.recon_steps)


def _errors(cfg: Config, params, x: np.ndarray, center: Optional[int], batch_size: int) -> np.ndarray:
    model, sched, ts = _setup(cfg)
    apply_fn = lambda xt, t: model.apply({"params": params}, xt, t)  # noqa: E731
    key = jax.random.PRNGKey(cfg.seed)

    def fn(batch, index):
        noise = level_noise(key, index, len(ts), batch.shape[1:])
        return recon_errors(apply_fn, sched, batch, noise, ts, cfg.recon_steps, center)

    return batched_apply(fn, x, batch_size)


def _train_ddpm(cfg: Config, x: np.ndarray, key: jax.Array) -> Any:
    model, sched, _ = _setup(cfg)
    init_key, train_key = jax.random.split(key)
    params = unet.init_params(cfg.model, x.shape[1], init_key)

    def loss_fn(p, batch, k):
        k_t, k_n = jax.random.split(k)
        x0 = diffusion.normalize(batch)
        t = jax.random.randint(k_t, (x0.shape[0],), 0, sched.num_timesteps)
        noise = jax.random.normal(k_n, x0.shape)
        out = model.apply({"params": p}, diffusion.q_sample(sched, x0, t, noise), t)
        return diffusion.loss(sched, out, x0, t, noise)

    params, _ = fit_reconstruction(loss_fn, params, x, steps=cfg.steps, batch_size=cfg.batch_size,
                                   learning_rate=cfg.learning_rate, key=train_key)
    return params


def fit(train_patches: np.ndarray, cfg: Optional[Config] = None, key=None, params: Any = None,
        batch_size: int = 256) -> base.State:
    """Fits the validation statistics (and, without ``params``, a DDPM) on real patches (N,H,W) in [0,1].

    ``val_fraction`` of the patches (at least 2) are held out for the per-level mean/std; pass
    ``params`` of a trained BTD U-Net matching ``cfg.model`` to reuse it ("the same DDPM").
    """
    cfg = cfg or Config()
    x = base.check_patches(train_patches, "train_patches")
    unet.check_input_shape((1, x.shape[1], x.shape[2], cfg.model.channels), cfg.model)
    split_key, train_key = jax.random.split(as_key(key))
    n_val = max(2, int(round(cfg.val_fraction * len(x))))
    if params is None and n_val >= len(x):
        raise ValueError(f"need more than {n_val} training patches to hold out a validation split")
    perm = np.asarray(jax.random.permutation(split_key, len(x)))
    val = x[perm[:n_val]]
    if params is None:
        params = _train_ddpm(cfg, x[perm[n_val:]], train_key)
    errs = _errors(cfg, params, val, cfg.center, batch_size)
    mean, std = errs.mean(axis=0), errs.std(axis=0) + 1e-12
    return base.State("ood_ddpm", cfg, {"params": jax.device_get(params), "val_mean": mean, "val_std": std,
                                         "side": np.int32(x.shape[1])})


def score(state: base.State, patches: np.ndarray, center: Optional[int] = None, batch_size: int = 256) -> np.ndarray:
    """Mean over levels of the z-scored reconstruction errors -> (N,).

    The error window is ``state.config.center``, fixed at fit time because the validation statistics
    belong to it; ``center`` may repeat that value or be ``None`` -- anything else is refused (refit
    with ``dataclasses.replace(cfg, center=k)``).
    """
    cfg = state.config
    if center is not None and center != cfg.center:
        raise ValueError(f"ood_ddpm was fitted with center={cfg.center}; its validation statistics do not "
                         f"apply to center={center} (refit with Config(center={center}))")
    x = base.check_patches(patches, side=int(state.arrays["side"]))
    errs = _errors(cfg, state.arrays["params"], x, cfg.center, batch_size)
    z = (errs - state.arrays["val_mean"]) / state.arrays["val_std"]
    return z.mean(axis=1).astype(np.float64)


def _configure(cfg: Config, setting: base.Setting) -> Config:
    """Errors over the scoring window; BTD's own DDPM (its model and diffusion) when there is one
    ("the same DDPM"), else one of the patch size."""
    if setting.ddpm is not None:
        return dataclasses.replace(cfg, center=setting.center, model=setting.ddpm.cfg.model,
                                   diffusion=setting.ddpm.cfg.diffusion)
    return dataclasses.replace(cfg, center=setting.center,
                               diffusion=dataclasses.replace(cfg.diffusion, image_size=setting.side))


BASELINE = base.Baseline("ood_ddpm", Config, TINY, fit, score,
                         "multi-level DDPM reconstruction errors, z-scored on validation data (Graham et al. 2023)",
                         display_name="OOD DDPM", needs=("window", "ddpm"), configure=_configure)

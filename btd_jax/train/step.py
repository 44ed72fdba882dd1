"""The jitted data-parallel training and validation steps.

One call of the train step is one optimiser update, like one iteration of lucidrains' ``Trainer``:
``grad_accum`` micro-batches are scanned, the gradient of ``loss / grad_accum`` is summed over them
(equal to the gradient of the mean loss of the whole ``grad_accum * batch_size`` images), then
clipped, applied with Adam and followed by one EMA update. Parameters are replicated over the mesh;
the batch axis of every micro-batch is sharded, so XLA all-reduces the gradients.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from btd_jax import diffusion
from btd_jax.configs import Config, ScoreConfig, TrainConfig
from btd_jax.models.unet import Unet
from btd_jax.parallel import data_sharding, make_mesh, replicated
from btd_jax.train.state import TrainState, compile_key, ema_update, learning_rate_schedule, make_optimizer

__all__ = ["batch_sharding", "make_train_step", "train_step", "make_eval_step", "step_noise", "accumulated_grads"]

StepFn = Callable[[TrainState, jax.Array], Tuple[TrainState, Dict[str, jax.Array]]]


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a stacked training batch ``(grad_accum, batch, H, W, C)``: axis 1 over the mesh."""
    return NamedSharding(mesh, PartitionSpec(None, mesh.axis_names[0]))


def step_noise(cfg: Config, key: jax.Array, accum: int, batch: int) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """The random inputs of one step: t ``(A, B)`` int32, noise ``(A, B, H, W, C)``, flip mask ``(A, B)``.

    They are drawn for the flat ``A * B`` images and then reshaped, so (accum 2, batch 4) and
    (accum 1, batch 8) see the same numbers; with JAX's partitionable threefry they do not depend on
    the device count either.
    """
    n, size, c = accum * batch, cfg.image_size, cfg.model.channels
    k_t, k_noise, k_flip = jax.random.split(key, 3)
    tc = cfg.train
    t = diffusion.sample_timesteps(k_t, n, cfg.diffusion.timesteps, tc.t_sampling, tc.t_max, tc.mixture_uniform_frac)
    noise = diffusion.sample_noise(k_noise, (n, size, size, c), cfg.diffusion.offset_noise_strength)
    flip = jax.random.bernoulli(k_flip, 0.5, (n,))
    return t.reshape(accum, batch), noise.reshape(accum, batch, size, size, c), flip.reshape(accum, batch)


def _loss_fn(model, sched, params, x0, t, noise):
    x_t = diffusion.q_sample(sched, x0, t, noise)
    out = model.apply({"params": params}, x_t, t)
    return diffusion.loss(sched, out, x0, t, noise)


def _prepare(cfg: Config, images: jax.Array) -> jax.Array:
    x = images.astype(jnp.float32)
    return diffusion.normalize(x) if cfg.diffusion.auto_normalize else x


# Micro-batch counts up to this are unrolled; more are scanned (one live micro-batch, smaller program).
_MAX_UNROLL = 4


def accumulated_grads(cfg: Config, params, x0: jax.Array, t: jax.Array, noise: jax.Array):
    """Mean loss and its gradient over ``A`` micro-batches, computed one micro-batch at a time.

    lucidrains' ``Trainer`` backpropagates ``loss / A`` for each of ``A`` micro-batches and lets the
    gradients add up; this is the same sum, as a ``lax.scan`` so only one micro-batch is live.

    Args:
      cfg: config (model and diffusion sections).
      params: U-Net parameters.
      x0: (A, B, H, W, C) clean images in the model's range ([-1, 1] with auto_normalize).
      t: (A, B) int32 timesteps.
      noise: (A, B, H, W, C).

    Returns:
      (loss, grads): the mean over micro-batches of the batch-mean loss, and its gradient.
    """
    grad_fn = jax.value_and_grad(functools.partial(_loss_fn, Unet.from_config(cfg.model),
                                                   diffusion.make_schedule(cfg.diffusion)))
    accum = x0.shape[0]

    def micro(carry, xs):
        loss_sum, grad_sum = carry
        loss, grads = grad_fn(params, *xs)
        return (loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

    if accum <= _MAX_UNROLL:
        # Unrolled: XLA:CPU runs convolutions inside loop bodies single-threaded and ~30x slower, and
        # the paper's accumulation is 2, so a straight-line program is the fast choice everywhere.
        loss_sum, grad_sum = grad_fn(params, x0[0], t[0], noise[0])
        for i in range(1, accum):
            (loss_sum, grad_sum), _ = micro((loss_sum, grad_sum), (x0[i], t[i], noise[i]))
    else:
        zeros = jax.tree.map(jnp.zeros_like, params)
        (loss_sum, grad_sum), _ = jax.lax.scan(micro, (jnp.zeros((), jnp.float32), zeros), (x0, t, noise))
    return loss_sum / accum, jax.tree.map(lambda g: g / accum, grad_sum)


def make_train_step(cfg: Config, mesh: Optional[Mesh] = None) -> StepFn:
    """A jitted ``step(state, images) -> (state, metrics)`` for ``cfg`` over ``mesh`` (default: all devices).

    ``images`` is ``(grad_accum, batch_size, H, W, C)`` in [0, 1] (global shape), best built with
    :func:`batch_sharding`; the shape sets the accumulation and batch size. The state is donated.
    ``metrics`` holds the mean ``loss`` over the ``grad_accum * batch_size`` images, the pre-clipping
    ``grad_norm`` and the ``lr`` used, as replicated scalars (fetch them only when logging, to keep
    the device queue full). Compiled functions are cached per (model/diffusion/optimiser config, mesh).
    """
    return _make_train_step(compile_key(cfg), mesh or make_mesh())


@functools.lru_cache(maxsize=16)
def _make_train_step(cfg: Config, mesh: Mesh) -> StepFn:
    tc = cfg.train
    tx = make_optimizer(tc)
    lr_fn = learning_rate_schedule(tc)
    data_spec = batch_sharding(mesh)

    def step(state: TrainState, images: jax.Array):
        accum, batch = images.shape[:2]
        t, noise, flip = step_noise(cfg, jax.random.fold_in(state.rng, state.step), accum, batch)
        x0 = _prepare(cfg, images)
        if tc.hflip:
            x0 = jnp.where(flip[..., None, None, None], x0[..., ::-1, :], x0)
        t, noise, x0 = (jax.lax.with_sharding_constraint(a, data_spec) for a in (t, noise, x0))
        loss, grads = accumulated_grads(cfg, state.params, x0, t, noise)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = ema_update(state.ema_params, params, state.step, tc)
        new_state = state.replace(params=params, ema_params=ema, opt_state=opt_state, step=state.step + 1)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   "lr": jnp.asarray(lr_fn(state.step), jnp.float32)}
        return new_state, metrics

    repl = replicated(mesh)
    return jax.jit(step, in_shardings=(repl, data_spec), out_shardings=(repl, repl), donate_argnums=(0,))


def train_step(state: TrainState, images: jax.Array, cfg: Config, mesh: Optional[Mesh] = None):
    """One optimiser update: ``make_train_step(cfg, mesh)(state, images)`` (the jitted function is cached)."""
    return make_train_step(cfg, mesh)(state, images)


def make_eval_step(cfg: Config, mesh: Optional[Mesh] = None) -> Callable:
    """A jitted ``eval(params, images, t, noise, weights) -> sum_i weights_i * loss_i`` (no gradient).

    ``images`` (N, H, W, C) in [0, 1], ``t`` (N,), ``noise`` like images, ``weights`` (N,) (0 for
    padding rows); N is sharded over the mesh. The result is a replicated float32 scalar, so every
    process can read it.
    """
    return _make_eval_step(dataclasses.replace(cfg, name="", train=TrainConfig(), score=ScoreConfig()),
                           mesh or make_mesh())


@functools.lru_cache(maxsize=16)
def _make_eval_step(cfg: Config, mesh: Mesh) -> Callable:
    model = Unet.from_config(cfg.model)
    sched = diffusion.make_schedule(cfg.diffusion)

    def evaluate(params, images, t, noise, weights):
        x0 = _prepare(cfg, images)
        out = model.apply({"params": params}, diffusion.q_sample(sched, x0, t, noise), t)
        return jnp.sum(diffusion.loss(sched, out, x0, t, noise, reduce=False) * weights)

    data, repl = data_sharding(mesh), replicated(mesh)
    return jax.jit(evaluate, in_shardings=(repl, data, data, data, data), out_shardings=repl)

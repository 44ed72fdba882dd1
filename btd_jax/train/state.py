"""Training state, optimiser and EMA: the lucidrains ``Trainer`` recipe as pure functions.

* Optimiser: ``clip_by_global_norm(max_grad_norm)`` then Adam(lr, betas) -- what ``Trainer`` does
  with ``accelerator.clip_grad_norm_`` followed by ``torch.optim.Adam`` (eps 1e-8 in both).
* EMA: ``ema_pytorch.EMA(beta, update_every, update_after_step, inv_gamma, power)`` called once after
  every optimiser step, reproduced step for step (see :func:`ema_update`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from btd_jax.configs import Config, ScoreConfig, TrainConfig
from btd_jax.models.unet import init_params
from btd_jax.parallel import replicated

__all__ = ["TrainState", "create_train_state", "make_optimizer", "learning_rate_schedule",
           "ema_decay", "ema_update", "abstract_train_state", "compile_key"]

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything a training run needs to continue bit-for-bit (a pytree; replicated over the mesh).

    Attributes:
      params: float32 U-Net parameters being optimised.
      ema_params: their exponential moving average (what scoring uses).
      opt_state: optax state of :func:`make_optimizer`.
      step: int32 scalar, optimiser updates done so far.
      rng: uint32 (2,) base PRNG key of the run; step ``s`` draws from ``fold_in(rng, s)``, so the
        randomness of a step depends on (seed, step) only and a resumed run repeats it exactly.
    """

    params: PyTree
    ema_params: PyTree
    opt_state: PyTree
    step: jax.Array
    rng: jax.Array


def learning_rate_schedule(tc: TrainConfig) -> optax.Schedule:
    """Constant ``learning_rate`` (the paper) or cosine decay to 0 at ``num_steps``; either after a
    linear warm-up of ``warmup_steps`` from 0."""
    lr, warm = float(tc.learning_rate), int(tc.warmup_steps)
    if tc.lr_schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, lr, warm, max(int(tc.num_steps), warm + 1), 0.0)
    if warm <= 0:
        return optax.constant_schedule(lr)
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warm), optax.constant_schedule(lr)], [warm])


def make_optimizer(tc: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping then Adam with the configured betas and schedule."""
    b1, b2 = tc.adam_betas
    clip = optax.clip_by_global_norm(tc.max_grad_norm) if tc.max_grad_norm and tc.max_grad_norm > 0 else optax.identity()
    return optax.chain(clip, optax.adam(learning_rate_schedule(tc), b1=b1, b2=b2, eps=1e-8))


def ema_decay(step: jax.Array, tc: TrainConfig) -> jax.Array:
    """``EMA.get_current_decay`` of ema_pytorch for the update made after optimiser step ``step + 1``.

    ``step`` is the number of earlier updates (= the EMA's own counter before ``update()``); the decay
    warms up as ``1 - (1 + e / inv_gamma) ** -power`` with ``e = step - update_after_step``, clamped to
    ``[0, ema_decay]``, and is 0 for ``e <= 0``. Computed in float32 like the torch buffers.
    """
    epoch = jnp.maximum(jnp.asarray(step, jnp.float32) - tc.ema_update_after_step, 0.0)
    value = 1.0 - (1.0 + epoch / jnp.float32(tc.ema_inv_gamma)) ** jnp.float32(-tc.ema_power)
    value = jnp.clip(value, 0.0, jnp.float32(tc.ema_decay))
    return jnp.where(epoch <= 0, jnp.float32(0.0), value)


def ema_update(ema: PyTree, params: PyTree, step: jax.Array, tc: TrainConfig) -> PyTree:
    """One ``EMA.update()`` of ema_pytorch, given the parameters after optimiser update ``step + 1``.

    ``step`` counts earlier updates. The first call (``step == 0``) copies the online weights; then
    only every ``ema_update_every`` calls: copy while ``step <= update_after_step``, else
    ``ema.lerp_(params, 1 - decay)``. Other calls leave the EMA untouched.
    """
    step = jnp.asarray(step, jnp.int32)
    due = (step % tc.ema_update_every) == 0
    copy = (step == 0) | (due & (step <= tc.ema_update_after_step))
    lerp = due & ~copy
    weight = 1.0 - ema_decay(step, tc)

    def _update(e, p):
        moved = e + weight.astype(e.dtype) * (p - e)  # torch.lerp_: tgt + w * (src - tgt)
        return jnp.where(copy, p, jnp.where(lerp, moved, e))

    # lax.cond skips the pass over the parameters on the 9 steps out of 10 without an update.
    return jax.lax.cond(copy | lerp, lambda: jax.tree.map(_update, ema, params), lambda: ema)


# Train settings that change neither the state nor the compiled step; normalised away so that runs which
# differ only in them (e.g. a resumed run with more steps) reuse one compilation.
_LOOP_ONLY = {"seed": 0, "log_every": 1, "eval_every": 1, "checkpoint_every": 1, "keep_checkpoints": 1,
              "batch_size": 1, "grad_accum": 1}


def compile_key(cfg: Config) -> Config:
    """``cfg`` reduced to the fields that shape the train state and step (a hashable cache key)."""
    loop_only = dict(_LOOP_ONLY)
    if cfg.train.lr_schedule == "constant":
        loop_only["num_steps"] = 1
    return dataclasses.replace(cfg, name="", score=ScoreConfig(), train=dataclasses.replace(cfg.train, **loop_only))


def _init_state(cfg: Config, key: jax.Array) -> TrainState:
    init_key, run_key = jax.random.split(key)
    params = init_params(cfg.model, cfg.image_size, init_key)
    opt_state = make_optimizer(cfg.train).init(params)
    # ema_pytorch deep-copies the model at construction, so the EMA starts equal to the weights.
    return TrainState(params=params, ema_params=jax.tree.map(jnp.copy, params), opt_state=opt_state,
                      step=jnp.zeros((), jnp.int32), rng=run_key)


def _check_trainable(cfg: Config) -> None:
    if cfg.model.self_condition:
        raise ValueError("training with model.self_condition=True is not supported (the paper does not use it)")
    if cfg.model.learned_variance:
        raise ValueError("training with model.learned_variance=True is not supported (needs the VLB loss)")


def create_train_state(cfg: Config, key: jax.Array, mesh: Optional[Mesh] = None) -> TrainState:
    """A fresh :class:`TrainState` for ``cfg``, replicated over ``mesh`` when given.

    Args:
      cfg: the run's config (model + train sections are used).
      key: a raw PRNG key (``jax.random.PRNGKey(seed)``); split into the init key and the run key.
      mesh: optional device mesh; the state is created directly with a replicated sharding (works
        across processes, every process passes the same key).
    """
    _check_trainable(cfg)
    return _init_fn(compile_key(cfg), mesh)(key)


@functools.lru_cache(maxsize=16)
def _init_fn(cfg: Config, mesh: Optional[Mesh]):
    if mesh is None:
        return jax.jit(functools.partial(_init_state, cfg))
    return jax.jit(functools.partial(_init_state, cfg), out_shardings=replicated(mesh))


def abstract_train_state(cfg: Config, mesh: Optional[Mesh] = None) -> TrainState:
    """Shapes/dtypes (and replicated shardings over ``mesh``) of the state, for restoring checkpoints."""
    shapes = jax.eval_shape(functools.partial(_init_state, cfg), jax.random.PRNGKey(0))
    if mesh is None:
        return shapes
    sharding = replicated(mesh)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)

"""Saving and restoring a whole :class:`TrainState` (params, EMA, optimiser state, step and run key).

Builds on :mod:`btd_jax.checkpoints` (config.json, the orbax manager, shape checks, params-only
checkpoints), which is re-exported here so training code needs one import.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from btd_jax.checkpoints import (CHECKPOINT_DIR, CONFIG_FILE, check_compatible, check_shapes, expected_param_shapes,
                                 latest_step, load_params, open_manager, read_config, read_meta,
                                 save_params_checkpoint, saved_tree, write_config)
from btd_jax.configs import Config
from btd_jax.train.state import TrainState, abstract_train_state, create_train_state

__all__ = ["CONFIG_FILE", "CHECKPOINT_DIR", "write_config", "read_config", "check_compatible", "open_manager",
           "save_state", "restore_state", "latest_step", "save_params_checkpoint", "load_params",
           "expected_param_shapes"]


def save_state(mngr: ocp.CheckpointManager, state: TrainState) -> None:
    """Saves a :class:`TrainState` at its step (asynchronously when the manager is async)."""
    step = int(jax.device_get(state.step))
    args = ocp.args.Composite(
        params=ocp.args.StandardSave(state.params), ema_params=ocp.args.StandardSave(state.ema_params),
        opt_state=ocp.args.StandardSave(state.opt_state),
        extra=ocp.args.StandardSave({"step": state.step, "rng": state.rng}),
        meta=ocp.args.JsonSave({"kind": "train", "step": step}))
    mngr.save(step, args=args)


def restore_state(mngr: ocp.CheckpointManager, cfg: Config, mesh: Optional[Mesh], step: Optional[int] = None,
                  where: str = "checkpoint") -> TrainState:
    """Restores a :class:`TrainState` (replicated over ``mesh``) from ``step`` (default: the latest).

    Params-only checkpoints get a fresh optimiser state and the run key of ``cfg.train.seed``.
    """
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{where}: no checkpoint to restore")
    abstract = abstract_train_state(cfg, mesh)
    check_shapes(saved_tree(mngr.item_metadata(step), "params"), abstract.params, f"{where} step {step}")
    meta = read_meta(mngr, step)
    if meta.get("kind") == "params":
        fresh = create_train_state(cfg, jax.random.PRNGKey(cfg.train.seed), mesh)
        got = mngr.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract.params), ema_params=ocp.args.StandardRestore(abstract.ema_params)))
        return fresh.replace(params=got["params"], ema_params=got["ema_params"],
                             step=fresh.step + jnp.asarray(int(meta.get("step", 0)), jnp.int32))
    extra = {"step": abstract.step, "rng": abstract.rng}
    got = mngr.restore(step, args=ocp.args.Composite(
        params=ocp.args.StandardRestore(abstract.params), ema_params=ocp.args.StandardRestore(abstract.ema_params),
        opt_state=ocp.args.StandardRestore(abstract.opt_state), extra=ocp.args.StandardRestore(extra)))
    return abstract.replace(params=got["params"], ema_params=got["ema_params"], opt_state=got["opt_state"],
                            step=got["extra"]["step"], rng=got["extra"]["rng"])

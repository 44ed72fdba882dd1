"""Saving and restoring a whole :class:`TrainState` (params, EMA, optimiser state, step and run key).

Builds on :mod:`btd_jax.checkpoints` (config.json, the orbax manager, shape checks, params-only
checkpoints), which is re-exported here so training code needs one import.
"""

from __future__ import annotations

import os
from typing import Optional

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from btd_jax.checkpoints import (CHECKPOINT_DIR, CONFIG_FILE, check_compatible, check_shapes, checksums,
                                 expected_param_shapes, latest_step, load_params, open_manager, read_config, read_meta,
                                 restore_newest_good, save_params_checkpoint, saved_tree, set_aside, verify_restored,
                                 write_config)
from btd_jax.configs import Config
from btd_jax.runtime.finite import NonFiniteError, all_finite, nonfinite_leaves
from btd_jax.train.state import TrainState, abstract_train_state, create_train_state

__all__ = ["CONFIG_FILE", "CHECKPOINT_DIR", "write_config", "read_config", "check_compatible", "open_manager",
           "save_state", "restore_state", "latest_step", "save_params_checkpoint", "load_params",
           "expected_param_shapes"]


def save_state(mngr: ocp.CheckpointManager, state: TrainState) -> None:
    """Saves a :class:`TrainState` at its step (asynchronously when the manager is async).

    Refuses (:class:`NonFiniteError`) a state holding NaN/inf, so a diverged run never replaces good
    checkpoints; the step's ``meta`` records a checksum of every item.
    """
    step = int(jax.device_get(state.step))
    items = {"params": state.params, "ema_params": state.ema_params, "opt_state": state.opt_state,
             "extra": {"step": state.step, "rng": state.rng}}
    if not bool(all_finite(items)):
        bad = [f"{k}/{p}" for k, v in items.items() for p in nonfinite_leaves(v)]
        raise NonFiniteError(f"training state at step {step} holds NaN/inf values (in {', '.join(bad[:3])}); "
                             "not saved")
    args = ocp.args.Composite(**{k: ocp.args.StandardSave(v) for k, v in items.items()},
                              meta=ocp.args.JsonSave({"kind": "train", "step": step, "checksums": checksums(items)}))
    mngr.save(step, args=args)


def restore_state(mngr: ocp.CheckpointManager, cfg: Config, mesh: Optional[Mesh], step: Optional[int] = None,
                  where: str = "checkpoint", set_aside_damaged: bool = False) -> TrainState:
    """Restores a :class:`TrainState` (replicated over ``mesh``) from ``step`` (default: the newest good one).

    Params-only checkpoints get a fresh optimiser state and the run key of ``cfg.train.seed``. What is
    restored is verified against the checksums saved with it; without ``step``, damaged newer steps are
    skipped with a warning, and with ``set_aside_damaged`` renamed to ``<step>.damaged`` so that
    training can save its next steps. Raises DamagedCheckpoint when no step verifies.
    """
    if not mngr.all_steps():
        raise FileNotFoundError(f"{where}: no checkpoint to restore")
    abstract = abstract_train_state(cfg, mesh)

    def restore(s: int) -> TrainState:
        check_shapes(saved_tree(mngr.item_metadata(s), "params"), abstract.params, f"{where} step {s}")
        meta = read_meta(mngr, s)
        names = ("params", "ema_params") if meta.get("kind") == "params" else ("params", "ema_params", "opt_state")
        targets = {k: getattr(abstract, k) for k in names}
        if len(names) == 3:
            targets["extra"] = {"step": abstract.step, "rng": abstract.rng}
        got = mngr.restore(s, args=ocp.args.Composite(**{k: ocp.args.StandardRestore(v) for k, v in targets.items()}))
        got = {k: got[k] for k in targets}
        verify_restored(got, meta, f"{where} step {s}")
        if len(names) == 2:
            fresh = create_train_state(cfg, jax.random.PRNGKey(cfg.train.seed), mesh)
            return fresh.replace(params=got["params"], ema_params=got["ema_params"],
                                 step=fresh.step + jnp.asarray(int(meta.get("step", 0)), jnp.int32))
        return abstract.replace(params=got["params"], ema_params=got["ema_params"], opt_state=got["opt_state"],
                                step=got["extra"]["step"], rng=got["extra"]["rng"])

    _, state, damaged = restore_newest_good(mngr, restore, where, step)
    if set_aside_damaged and damaged:
        workdir = os.path.dirname(os.path.normpath(str(mngr.directory)))
        for s in damaged:
            set_aside(workdir, s)
        mngr.reload()
    return state

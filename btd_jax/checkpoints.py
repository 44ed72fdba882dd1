"""Checkpoints of a workdir: orbax steps under ``workdir/checkpoints``, the config at ``workdir/config.json``.

Each step directory holds the items ``params``, ``ema_params`` and ``meta`` (JSON: kind and step);
training checkpoints add ``opt_state`` and ``extra`` (step counter and run key). A *params-only*
checkpoint (written by :func:`save_params_checkpoint`, e.g. for converted PyTorch weights) has no
optimiser state: training from it starts a fresh Adam state at its step.

Shapes are checked against the config before anything is restored, so a checkpoint that does not fit
its config fails with a message that names the parameter, not deep inside orbax.

Every step's ``meta`` also records a SHA-256 checksum of each array item. What is restored is checked
against it and for NaN/inf; a damaged step (truncated or altered files) is skipped with a warning
naming it, and the newest step that verifies is used instead.

This module reads and writes parameters only; scoring loads weights through it without the training
stack. Saving and restoring a whole training state lives in :mod:`btd_jax.train.checkpoints`.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import traverse_util
from jax.experimental import multihost_utils

from btd_jax import configs
from btd_jax.configs import Config
from btd_jax.data.errors import DataError
from btd_jax.models.unet import init_params
from btd_jax.runtime.atomic import write_text
from btd_jax.runtime.background import drop_closed_loop_reports
from btd_jax.runtime.finite import all_finite, nonfinite_leaves, tree_checksum

__all__ = ["CONFIG_FILE", "CHECKPOINT_DIR", "write_config", "read_config", "check_compatible", "open_manager",
           "latest_step", "expected_param_shapes", "check_shapes", "save_params_checkpoint", "load_params",
           "ShapeMismatch", "DamagedCheckpoint", "checksums", "verify_restored", "restore_newest_good", "set_aside"]

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
# Config fields that may change between runs of one workdir without changing what the params mean.
_FREE_MODEL_FIELDS = ("dtype",)
_ARRAY_ITEMS = ("params", "ema_params", "opt_state", "extra")


def checkpoint_dir(workdir: str) -> str:
    """``workdir/checkpoints`` as an absolute path (orbax wants absolute paths)."""
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def write_config(workdir: str, cfg: Config) -> None:
    """Writes ``workdir/config.json`` (process 0 only; atomically, so a crash never leaves half a file)."""
    if jax.process_index() != 0:
        return
    write_text(os.path.join(workdir, CONFIG_FILE), configs.to_json(cfg))


def read_config(workdir: str) -> Config:
    """The config saved in ``workdir``; a clear error for a missing workdir or file."""
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"workdir {workdir!r} does not exist")
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: {workdir!r} is not a btd-jax workdir "
                                "(make one with `btd-jax train` or `btd-jax convert`)")
    with open(path) as f:
        try:
            return configs.from_json(f.read())
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: not a valid btd-jax config ({e})") from None


def _differences(a: dict, b: dict, prefix: str) -> list:
    da, db = traverse_util.flatten_dict(a, sep="."), traverse_util.flatten_dict(b, sep=".")
    return [f"{prefix}{k}: {da.get(k)!r} -> {db.get(k)!r}" for k in sorted(set(da) | set(db)) if da.get(k) != db.get(k)]


def check_compatible(saved: Config, cfg: Config, workdir: str) -> None:
    """Refuses to continue a run whose model or diffusion settings differ from the saved ones.

    Training settings (steps, batch size, learning rate, ...) and the compute dtype may change.
    """
    sm, cm = configs.to_dict(saved)["model"], configs.to_dict(cfg)["model"]
    for k in _FREE_MODEL_FIELDS:
        sm.pop(k, None), cm.pop(k, None)
    diffs = _differences(sm, cm, "model.") + _differences(
        configs.to_dict(saved)["diffusion"], configs.to_dict(cfg)["diffusion"], "diffusion.")
    if diffs:
        raise ValueError(f"workdir {workdir!r} holds a run with a different model/diffusion config "
                         f"({'; '.join(diffs)}); use a new --workdir or the saved config")


def open_manager(workdir: str, keep: int = 3, async_save: bool = True, create: bool = True) -> ocp.CheckpointManager:
    """An orbax ``CheckpointManager`` over ``workdir/checkpoints`` keeping the newest ``keep`` steps."""
    options = ocp.CheckpointManagerOptions(max_to_keep=max(1, int(keep)), create=create,
                                           enable_async_checkpointing=async_save)
    # Declaring the handlers lets a fresh manager read item metadata (shapes) before restoring.
    handlers = {name: ocp.StandardCheckpointHandler() for name in _ARRAY_ITEMS}
    handlers["meta"] = ocp.JsonCheckpointHandler()
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_handlers=handlers)


def latest_step(workdir: str) -> Optional[int]:
    """The newest finished checkpoint step in ``workdir``, or None.

    Reads the directory listing only (orbax names a step's directory ``<step>`` once it is finished);
    opening a manager here would run a cross-process barrier that not every process might reach.
    """
    root = checkpoint_dir(workdir)
    steps = [int(n) for n in os.listdir(root) if n.isdigit()] if os.path.isdir(root) else []
    return max(steps) if steps else None


def expected_param_shapes(cfg: Config) -> Dict[str, Any]:
    """Abstract float32 parameter tree (``jax.ShapeDtypeStruct`` leaves) of ``cfg``'s U-Net."""
    return jax.eval_shape(functools.partial(init_params, cfg.model, cfg.image_size), jax.random.PRNGKey(0))


def _shape_of(leaf) -> Tuple[int, ...]:
    return tuple(getattr(leaf, "shape", np.shape(leaf)))


class ShapeMismatch(ValueError):
    """Saved parameters do not fit the config (a different model, not a damaged file)."""


class DamagedCheckpoint(DataError):
    """A checkpoint step that cannot be read back as it was written (or holds NaN/inf)."""


def check_shapes(found: Any, expected: Any, where: str) -> None:
    """Raises :class:`ShapeMismatch` (a ValueError) naming missing, unexpected and mis-shaped parameters."""
    f = traverse_util.flatten_dict(dict(found), sep="/")
    e = traverse_util.flatten_dict(dict(expected), sep="/")
    problems = [f"missing {k}" for k in sorted(set(e) - set(f))]
    problems += [f"unexpected {k}" for k in sorted(set(f) - set(e))]
    problems += [f"{k} has shape {_shape_of(f[k])}, config expects {_shape_of(e[k])}"
                 for k in sorted(set(e) & set(f)) if _shape_of(f[k]) != _shape_of(e[k])]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ShapeMismatch(f"{where}: parameters do not match the config: {'; '.join(problems[:5])}{more}")


def saved_tree(metadata, name: str):
    """The tree of item ``name`` in a step's ``item_metadata`` (shapes only, nothing restored)."""
    item = metadata[name]
    return item.tree if hasattr(item, "tree") else item


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
    """The ``meta`` item of ``step``: ``{"kind": "train" | "params", "step": int}``."""
    return dict(mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])


def checksums(items: Dict[str, Any]) -> Dict[str, str]:
    """``{item name: SHA-256 of its tree}``, stored in a step's ``meta`` and checked on restore."""
    return {name: tree_checksum(tree) for name, tree in items.items()}


def verify_restored(restored: Dict[str, Any], meta: dict, where: str) -> None:
    """Raises :class:`DamagedCheckpoint` unless each restored item matches its saved checksum and is finite.

    Steps saved without checksums are checked for NaN/inf only.
    """
    saved = meta.get("checksums") or {}
    for name, tree in restored.items():
        if name in saved and tree_checksum(tree) != saved[name]:
            raise DamagedCheckpoint(f"{where}: {name} does not match the checksum saved with it")
        if not bool(all_finite(tree)):
            bad = nonfinite_leaves(tree)
            raise DamagedCheckpoint(f"{where}: {name} holds NaN/inf values (in {', '.join(bad[:3])})")


def _reason(e: BaseException) -> str:
    """One short line for why a step failed: the innermost error (orbax wraps tensorstore's)."""
    if not isinstance(e, DamagedCheckpoint):
        while (e.__cause__ or e.__context__) is not None:
            e = e.__cause__ or e.__context__
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 240 else text[:237] + "..."


def restore_newest_good(mngr: ocp.CheckpointManager, restore: Callable[[int], Any], where: str,
                        step: Optional[int] = None) -> Tuple[int, Any, List[int]]:
    """``(step, restore(step), damaged steps)`` for the newest step that restores and verifies.

    ``restore(step)`` restores one step and verifies it (raising on damage). Newer steps that fail
    are skipped, each with a warning naming it and the step used instead; with ``step`` given, only
    that step is tried. A :class:`ShapeMismatch` is a config problem, not damage, and propagates.
    Raises :class:`DamagedCheckpoint` listing every failure when no step is usable.
    """
    steps = sorted(mngr.all_steps(), reverse=True) if step is None else [int(step)]
    failures: List[Tuple[int, str]] = []
    drop_closed_loop_reports()  # a failed read leaves tensorstore callbacks that report a closed loop
    for s in steps:
        try:
            result = restore(s)
        except ShapeMismatch:
            raise
        except Exception as e:  # orbax/tensorstore raise plain Exceptions for unreadable files
            failures.append((s, _reason(e)))
            continue
        for bad, why in failures:
            logging.warning("%s: checkpoint step %d is damaged and was skipped (%s); using step %d",
                            where, bad, why, s)
        return s, result, [bad for bad, _ in failures]
    raise DamagedCheckpoint(f"{where}: no usable checkpoint: " + "; ".join(f"step {s}: {w}" for s, w in failures))


def set_aside(workdir: str, step: int) -> Optional[str]:
    """Renames the damaged ``checkpoints/<step>`` to ``checkpoints/<step>.damaged`` (kept for inspection).

    Orbax no longer lists it, so training can save newer steps again. Process 0 renames; every
    process waits for it. Returns the new path (on process 0).
    """
    src = os.path.join(checkpoint_dir(workdir), str(int(step)))
    dst = None
    if jax.process_index() == 0 and os.path.isdir(src):
        dst, n = src + ".damaged", 1
        while os.path.exists(dst):
            dst, n = f"{src}.damaged{n}", n + 1
        os.rename(src, dst)
        logging.warning("moved the damaged checkpoint %s to %s", src, dst)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"btd_jax set_aside {step}")
    return dst


def with_sharding(tree: Any, sharding) -> Any:
    """``tree`` of arrays/shape structs as ``jax.ShapeDtypeStruct`` leaves placed with ``sharding``."""
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), tree)


def save_params_checkpoint(workdir: str, params: Any, cfg: Config, step: int = 0) -> str:
    """Writes ``params`` as a checkpoint (as both the online and the EMA weights) plus ``config.json``.

    Used by ``btd-jax convert``; :func:`load_params` and ``Scorer.load`` read it back, and training
    can start from it. Refuses a workdir that already holds checkpoints. Returns the workdir.
    """
    check_shapes(params, expected_param_shapes(cfg), f"params for config {cfg.name!r}")
    if latest_step(workdir) is not None:
        raise ValueError(f"workdir {workdir!r} already holds checkpoints; choose an empty one")
    write_config(workdir, cfg)
    params = jax.tree.map(jnp.asarray, params)
    if not bool(all_finite(params)):
        bad = ", ".join(nonfinite_leaves(params)[:3])
        raise DataError(f"params for config {cfg.name!r} hold NaN/inf values (in {bad}); refusing to save them")
    sums = checksums({"params": params})
    sums["ema_params"] = sums["params"]
    with open_manager(workdir, keep=1, async_save=False) as mngr:
        mngr.save(int(step), args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), ema_params=ocp.args.StandardSave(params),
            meta=ocp.args.JsonSave({"kind": "params", "step": int(step), "checksums": sums})))
        mngr.wait_until_finished()
    return workdir


def load_params(workdir: str, which: str = "ema", step: Optional[int] = None) -> Tuple[Any, Config]:
    """``(params, cfg)`` of the latest (or given) checkpoint in ``workdir``.

    Args:
      workdir: a directory made by ``btd-jax train`` / ``train_and_evaluate`` / ``btd-jax convert``.
      which: ``"ema"`` (the averaged weights, what the paper scores with) or ``"params"`` (online).
      step: a checkpoint step; default the newest.
    Returns:
      float32 parameter tree on the first local device, and the saved :class:`Config`.
    Raises:
      DamagedCheckpoint: no step (or not the given one) restores and verifies; without ``step``, damaged
        newer steps are skipped with a warning.
    """
    if which not in ("ema", "params"):
        raise ValueError(f"which must be 'ema' or 'params', got {which!r}")
    cfg = read_config(workdir)
    if not os.path.isdir(checkpoint_dir(workdir)):
        raise FileNotFoundError(f"workdir {workdir!r} has no checkpoints/ directory")
    item = "ema_params" if which == "ema" else "params"
    with open_manager(workdir, create=False) as mngr:
        steps = mngr.all_steps()
        if not steps:
            raise FileNotFoundError(f"workdir {workdir!r} has no finished checkpoint")
        if step is not None and int(step) not in steps:
            raise FileNotFoundError(f"workdir {workdir!r} has no checkpoint at step {step}; it has {sorted(steps)}")
        expected = expected_param_shapes(cfg)
        target = with_sharding(expected, jax.sharding.SingleDeviceSharding(jax.local_devices()[0]))

        def restore(s: int):
            check_shapes(saved_tree(mngr.item_metadata(s), item), expected, f"{workdir} step {s}")
            got = mngr.restore(s, args=ocp.args.Composite(**{item: ocp.args.StandardRestore(target)}))
            verify_restored({item: got[item]}, read_meta(mngr, s), f"{workdir} step {s}")
            return got[item]

        _, params, _ = restore_newest_good(mngr, restore, workdir, step)
    return params, cfg

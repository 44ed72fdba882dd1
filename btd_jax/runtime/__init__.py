"""Run-time safety: workdir locks, output plans and atomic writes, graceful stop on signals, one-line
errors, finite checks and checksums.

Low level: knows nothing of models or configs. The finite checks (which import JAX) load on first use.
"""

import importlib

from btd_jax.runtime.atomic import atomic_open, atomic_path
from btd_jax.runtime.errors import MissingExtra, NonFiniteError, describe, require
from btd_jax.runtime.lock import LOCK_FILE, WorkdirBusy, WorkdirLock, lock_workdir, read_lock
from btd_jax.runtime.outputs import (
    MARKER, WORKDIR_ENTRIES, OutputPlan, discard_active, skipped_path, write_skipped,
)
from btd_jax.runtime.stop import GracefulStop, Stopped, exit_code

_LAZY = ("all_finite", "nonfinite_leaves", "tree_checksum")

__all__ = ["NonFiniteError", "MissingExtra", "describe", "require", "LOCK_FILE", "WorkdirBusy", "WorkdirLock",
           "lock_workdir", "read_lock", "WORKDIR_ENTRIES", "MARKER", "OutputPlan", "discard_active", "atomic_open",
           "atomic_path", "skipped_path", "write_skipped", "GracefulStop", "Stopped", "exit_code", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module("btd_jax.runtime.finite"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

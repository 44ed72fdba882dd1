"""Run-time safety: workdir locks, output guards, graceful stop on signals, finite checks and checksums.

Low level: knows nothing of models or configs. The finite checks (which import JAX) load on first use.
"""

import importlib

from btd_jax.runtime.errors import NonFiniteError
from btd_jax.runtime.lock import LOCK_FILE, WorkdirBusy, WorkdirLock, lock_workdir, read_lock
from btd_jax.runtime.outputs import WORKDIR_ENTRIES, check_output, check_output_dir, skipped_path, write_skipped
from btd_jax.runtime.stop import GracefulStop, Stopped, exit_code

_LAZY = ("all_finite", "nonfinite_leaves", "tree_checksum")

__all__ = ["NonFiniteError", "LOCK_FILE", "WorkdirBusy", "WorkdirLock", "lock_workdir", "read_lock", "WORKDIR_ENTRIES",
           "check_output", "check_output_dir", "skipped_path", "write_skipped", "GracefulStop", "Stopped",
           "exit_code", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module("btd_jax.runtime.finite"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""Guards for files a command writes: never an input, never a workdir's own files, never silently.

Paths are compared after resolving symlinks (``os.path.realpath``) and, for existing files, by
inode (``os.path.samefile``), so a link or a relative spelling of an input is still recognised.
"""

from __future__ import annotations

import csv
import os
from typing import Iterable, List, Optional, Sequence

from btd_jax.data.errors import DataError

__all__ = ["WORKDIR_ENTRIES", "check_output", "check_output_dir", "skipped_path", "write_skipped"]

# What a workdir holds for itself; outputs may sit beside these but never replace them.
WORKDIR_ENTRIES = ("config.json", "checkpoints", "metrics.jsonl", ".lock")


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(os.path.expanduser(str(path))))


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _same(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return _real(a) == _real(b)


def _clash(path: str, inputs: Iterable[str], workdirs: Iterable[str]) -> Optional[str]:
    """Why writing ``path`` would destroy an input or a workdir file, or None."""
    real = _real(path)
    for src in inputs:
        if src is None:
            continue
        src_real = _real(src)
        if _same(path, src) or real == src_real:
            return f"it is the input {src}"
        if os.path.isdir(src_real) and _inside(real, src_real) and os.path.lexists(real):
            return f"it is a file of the input folder {src}"
    for wd in workdirs:
        if wd is None:
            continue
        wd_real = _real(wd)
        if real == wd_real:
            return f"it is the workdir {wd}"
        for name in WORKDIR_ENTRIES:
            if _inside(real, os.path.join(wd_real, name)):
                return f"it is {name} of the workdir {wd}"
    return None


def check_output(path: str, *, overwrite: bool = False, inputs: Sequence[Optional[str]] = (),
                 workdirs: Sequence[Optional[str]] = (), flag: str = "--overwrite") -> str:
    """Checks that the file ``path`` may be written; returns it unchanged.

    Raises :class:`DataError` naming ``path`` when it is (or resolves to) one of ``inputs``, an existing
    file inside an input folder, a workdir's own file (``config.json``, ``checkpoints/``, ...), a
    directory, or an existing file while ``overwrite`` is False (``flag`` is the option to name).
    """
    why = _clash(path, inputs, workdirs)
    if why:
        raise DataError(f"{path}: refusing to write the output there: {why}")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory; give a file name for the output")
    if os.path.lexists(path) and not overwrite:
        raise DataError(f"{path}: already exists; pass {flag} to replace it")
    return path


def check_output_dir(path: str, names: Optional[Iterable[str]] = None, *, overwrite: bool = False,
                     inputs: Sequence[Optional[str]] = (), workdirs: Sequence[Optional[str]] = (),
                     flag: str = "--overwrite") -> str:
    """Checks that the folder ``path`` may receive outputs; returns it unchanged.

    With ``names`` (the files that will be written), each is checked like :func:`check_output`;
    without, an existing non-empty folder needs ``overwrite``. The folder may not be an input or
    lie inside one, nor be a workdir or one of its own entries.
    """
    real = _real(path)
    for src in inputs:
        if src is not None and (_same(path, src) or _inside(real, _real(src))):
            raise DataError(f"{path}: refusing to write outputs there: it is (inside) the input {src}")
    why = _clash(path, (), workdirs)
    if why:
        raise DataError(f"{path}: refusing to write outputs there: {why}")
    if os.path.lexists(path) and not os.path.isdir(path):
        raise DataError(f"{path}: exists and is not a directory")
    if names is None:
        if os.path.isdir(path) and os.listdir(path) and not overwrite:
            raise DataError(f"{path}: folder exists and is not empty; pass {flag} to write into it")
        return path
    for name in names:
        check_output(os.path.join(path, name), overwrite=overwrite, inputs=inputs, workdirs=workdirs, flag=flag)
    return path


def skipped_path(out: str) -> str:
    """Where the list of items skipped while making ``out`` goes: ``<out without extension>.skipped.csv``."""
    out = str(out).rstrip(os.sep)
    root, ext = os.path.splitext(out)
    return (root if ext and not os.path.isdir(out) else out) + ".skipped.csv"


def write_skipped(path: str, skipped: Sequence, *, overwrite: bool = True) -> Optional[str]:
    """Writes ``item, reason`` rows (``skipped``: objects with ``.item``/``.reason`` or pairs) to the CSV ``path``
    (usually ``skipped_path(output)``).

    Returns ``path``, or None (and writes nothing) when nothing was skipped.
    """
    if not skipped:
        return None
    check_output(path, overwrite=overwrite)
    rows: List[tuple] = [(s.item, s.reason) if hasattr(s, "item") else tuple(s) for s in skipped]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item", "reason"])
        w.writerows(rows)
    return path

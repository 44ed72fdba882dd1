"""Flags and helpers every command shares for safe outputs and lenient input.

``--overwrite``: an existing output file (or a non-empty output folder) is replaced only when given;
outputs never replace an input or a workdir's own files, even with it. ``--lenient``: bad DICOM
files and bad rows of the authors' layout are skipped instead of stopping the command; each skipped
item and its reason goes to ``<output>.skipped.csv`` next to an output file, or ``skipped.csv`` in an
output folder (and one line to stderr).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from btd_jax.runtime.outputs import check_output, check_output_dir, skipped_path, write_skipped

__all__ = ["add_overwrite_flag", "add_lenient_flag", "check_outputs", "report_skipped"]


def add_overwrite_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (inputs and a workdir's own files are never replaced)")


def add_lenient_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lenient", action="store_true",
                   help="skip unreadable DICOM files and bad rows instead of stopping; the skipped items and "
                        "why are listed in <output>.skipped.csv")


def check_outputs(args, files: Sequence[Optional[str]] = (), folders: Sequence[Optional[str]] = (),
                  inputs: Sequence[Optional[str]] = (), workdirs: Sequence[Optional[str]] = ()) -> None:
    """Refuses (DataError) output ``files``/``folders`` that exist without ``--overwrite`` or would
    replace ``inputs`` or a workdir's files; call before any work so a refusal costs nothing."""
    overwrite = bool(getattr(args, "overwrite", False))
    for path in files:
        if path:
            check_output(path, overwrite=overwrite, inputs=inputs, workdirs=workdirs)
    for path in folders:
        if path:
            check_output_dir(path, overwrite=overwrite, inputs=inputs, workdirs=workdirs)


def report_skipped(command: str, out: str, skipped: Sequence, folder: bool = False) -> Optional[str]:
    """Writes ``skipped`` (items with ``.item``/``.reason``) to ``<out>.skipped.csv`` (``folder``: to
    ``<out>/skipped.csv``) and says so on stderr; nothing when nothing was skipped."""
    for s in skipped:
        print(f"btd-jax {command}: skipped {s.item}: {s.reason}", file=sys.stderr)
    if folder and skipped:
        os.makedirs(out, exist_ok=True)
    path = write_skipped(os.path.join(out, "skipped.csv") if folder else skipped_path(out), skipped)
    if path:
        print(f"btd-jax {command}: skipped {len(skipped)} item(s); list -> {path}", file=sys.stderr)
    return path

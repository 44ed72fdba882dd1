"""Flags and helpers every command shares for safe outputs and lenient input.

``--overwrite``: an existing output file (or a non-empty output folder this command did not write)
is replaced only when given; outputs never replace an input, lie inside an input folder or replace a
workdir's own files, even with it. ``--lenient``: the per-item failures of :data:`LENIENT_HELP`
(unreadable DICOM files, bad rows of a CSV, unreadable or malformed array files of a test set or
training folder) are skipped instead of stopping the command; each skipped item and its reason goes
to ``<output>.skipped.csv`` next to an output file, or ``skipped.csv`` in an output folder (and one
line per item to stderr).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from btd_jax.runtime.outputs import OutputPlan, skipped_path, write_skipped
from btd_jax.scoring.inputs import reference_path
from btd_jax.scoring.variants import get as get_variant

__all__ = ["LENIENT_HELP", "add_overwrite_flag", "add_lenient_flag", "output_plan", "report_skipped",
           "say_skipped", "skipped_file", "reference_read"]

LENIENT_HELP = ("skip unreadable DICOM files, bad CSV rows and unreadable or malformed array files instead of "
                "stopping; the skipped items and why are listed in the skipped list ({where})")


def add_overwrite_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files and write into non-empty output folders (inputs, "
                        "input folders and a workdir's own files are never written)")


def add_lenient_flag(p: argparse.ArgumentParser, where: str = "OUT.skipped.csv or OUT/skipped.csv") -> None:
    p.add_argument("--lenient", action="store_true", help=LENIENT_HELP.format(where=where))


def output_plan(args, inputs: Sequence[Optional[str]] = (), workdirs: Sequence[Optional[str]] = ()) -> OutputPlan:
    """An empty :class:`OutputPlan` for the command ``args`` runs (its ``--overwrite`` flag applies)."""
    return OutputPlan(getattr(args, "command", None) or "btd-jax", overwrite=bool(getattr(args, "overwrite", False)),
                      inputs=inputs, workdirs=workdirs)


def skipped_file(out: str, folder: bool = False) -> str:
    """The skipped list of the output ``out``: ``OUT/skipped.csv`` for a folder, else ``OUT.skipped.csv``
    (declare it in the plan)."""
    return os.path.join(out, "skipped.csv") if folder else skipped_path(out)


def say_skipped(command: str, skipped: Sequence, path: str) -> None:
    """One stderr line per skipped item (``.item``/``.reason``) and one naming the list ``path`` (which the
    library function wrote); nothing when nothing was skipped."""
    for s in skipped:
        print(f"btd-jax {command}: skipped {s.item}: {s.reason}", file=sys.stderr)
    if skipped:
        print(f"btd-jax {command}: skipped {len(skipped)} item(s); list -> {path}", file=sys.stderr)


def report_skipped(command: str, out: str, skipped: Sequence, folder: bool = False) -> Optional[str]:
    """Writes ``skipped`` (items with ``.item``/``.reason``) to :func:`skipped_file` and says so on
    stderr; nothing when nothing was skipped."""
    path = write_skipped(skipped_file(out, folder), skipped)
    say_skipped(command, skipped, path)
    return path


def reference_read(args) -> Optional[str]:
    """The score reference a run reads (an input of its plan): ``--reference``, or for a variant fitted
    on real patches its file in ``--workdir`` (None for variants without one)."""
    if getattr(args, "reference", None):
        return args.reference
    variant = getattr(args, "variant", "btd")
    if not get_variant(variant).needs_reference or not getattr(args, "workdir", None):
        return None
    return reference_path(args.workdir, variant)

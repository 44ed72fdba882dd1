"""Command-line flag helpers shared by the subcommands: typed values checked when the flag is parsed,
and deprecated aliases.

Every numeric flag uses one of the types below, so a number that makes no sense (``--batch_size 0``,
``--num_steps -1``, ``--val_fraction 2``) stops at the flag with one line naming it, before any work::

    p.add_argument("--batch_size", type=positive_int)
    p.add_argument("--val_fraction", type=fraction_below_one, default=0.05)
    p.add_argument("--input", type=existing_path)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable, List

from btd_jax.configs import reductions

__all__ = ["positive_int", "non_negative_int", "positive_float", "non_negative_float", "fraction",
           "fraction_below_one", "open_fraction", "positive_fraction", "existing_file", "existing_path",
           "existing_folder", "positive_int_list", "choice_list", "reduction", "add_reduction_flag", "DeprecatedAlias",
           "add_deprecated_alias"]


def _number(text: str, kind: type, what: str):
    try:
        value = kind(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def _bounded(kind: type, what: str, ok: Callable[[float], bool], name: str):
    def parse(text: str):
        value = _number(text, kind, what)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    parse.__name__ = name
    return parse


positive_int = _bounded(int, "an integer >= 1", lambda v: v >= 1, "positive_int")
non_negative_int = _bounded(int, "an integer >= 0", lambda v: v >= 0, "non_negative_int")
positive_float = _bounded(float, "a number > 0", lambda v: v > 0, "positive_float")
non_negative_float = _bounded(float, "a number >= 0", lambda v: v >= 0, "non_negative_float")
fraction = _bounded(float, "a fraction in [0, 1]", lambda v: 0 <= v <= 1, "fraction")
fraction_below_one = _bounded(float, "a fraction in [0, 1)", lambda v: 0 <= v < 1, "fraction_below_one")
positive_fraction = _bounded(float, "a fraction in (0, 1]", lambda v: 0 < v <= 1, "positive_fraction")
open_fraction = _bounded(float, "a fraction in (0, 1)", lambda v: 0 < v < 1, "open_fraction")


def _remote(text: str) -> bool:
    return "://" in text


def existing_path(text: str) -> str:
    """A file or folder that exists (``scheme://`` paths are left to the reader)."""
    if not text:
        raise argparse.ArgumentTypeError("expected a path, got ''")
    if not _remote(text) and not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text}: no such file or folder")
    return text


def existing_file(text: str) -> str:
    """A file that exists."""
    existing_path(text)
    if not _remote(text) and not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"{text}: is a folder, expected a file")
    return text


def existing_folder(text: str) -> str:
    """A folder that exists."""
    existing_path(text)
    if not _remote(text) and not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text}: is a file, expected a folder")
    return text


def positive_int_list(text: str) -> List[int]:
    """Comma-separated integers >= 1, e.g. ``1,64,256``."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}")
    try:
        return [positive_int(t) for t in items]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {text!r}") from None


def choice_list(choices, name: str = "choice_list"):
    """A type: comma-separated values, each one of ``choices`` (e.g. platforms ``cpu,cuda``)."""
    def parse(text: str) -> List[str]:
        items = [t.strip() for t in str(text).split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if not items or bad:
            raise argparse.ArgumentTypeError(f"expected comma-separated values from {', '.join(choices)}, "
                                             f"got {text!r}")
        return items

    parse.__name__ = name
    return parse


def reduction(text: str) -> str:
    """A pooling name of :mod:`btd_jax.configs.reductions` (``mean``, ``percentile:99``, ...)."""
    try:
        reductions.parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {reductions.grammar()}, got {text!r}") from None
    return text


def add_reduction_flag(p: argparse.ArgumentParser, what: str = "the window") -> None:
    """``--reduction``: its help lists every registered pooling."""
    p.add_argument("--reduction", default=None, type=reduction,
                   help=f"pooling of the residual over {what}: {reductions.grammar()} "
                        "(default: the config's score.reduction, paper mean)")


class DeprecatedAlias(argparse.Action):
    """An old flag name kept for one release: stores into the new flag's ``dest`` and prints one line
    ``btd-jax CMD: --old is deprecated, use --new`` on stderr when used."""

    def __init__(self, option_strings, dest, new: str = "", **kw):
        self.new = new
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: {option_string} is deprecated, use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def add_deprecated_alias(p: argparse.ArgumentParser, old: str, new: str, dest: str, flag: bool = False,
                         **kw) -> None:
    """Adds ``old`` as a hidden alias of the flag ``new`` (``flag``: a store_true switch)."""
    if flag:
        kw.update(nargs=0, const=True)
    p.add_argument(old, dest=dest, action=DeprecatedAlias, new=new, help=argparse.SUPPRESS, **kw)

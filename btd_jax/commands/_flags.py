"""Command-line flag helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import sys

__all__ = ["DeprecatedAlias", "add_deprecated_alias"]


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

"""The ``btd-jax`` command line: a thin dispatcher over ``btd_jax.commands.<name>``.

Each command module exposes ``add_parser(subparsers)`` and ``run(args) -> int``. A run imports only
the module of the command it runs (``--help`` alone imports them all).

This is the one exception boundary: a bad flag, bad input, a missing or unreadable file, text that
is not UTF-8, an unreadable array or a missing optional package surfaces as one line on stderr
(``btd-jax CMD: error: ...``, naming the file) and exit status 2 (see
:func:`btd_jax.runtime.describe`); a diverged run or a workdir in use by another run exits 1; a run
stopped by SIGTERM/SIGINT (after saving) exits with 128 + the signal number (143, 130). A command
that fails leaves none of the outputs it declared in its plan (:mod:`btd_jax.runtime.outputs`).
"""

from __future__ import annotations

import importlib
import re
import sys
from typing import Optional, Sequence

from absl import app, flags, logging
from absl.flags import argparse_flags

from btd_jax.runtime import Stopped, describe, discard_active

# Order is the order shown in --help.
COMMANDS = ("demo", "prepare", "train", "score", "evaluate", "localize", "screen", "compare", "attack", "convert",
            "export", "bench")


def _load_commands(names: Sequence[str] = COMMANDS):
    modules = {}
    for name in names:
        try:
            modules[name] = importlib.import_module(f"btd_jax.commands.{name}")
        except ModuleNotFoundError as e:  # a command not built yet must not break the others
            if e.name != f"btd_jax.commands.{name}":
                raise
    return modules


class _Parser(argparse_flags.ArgumentParser):
    """Reports a bad flag in one line (``btd-jax CMD: error: argument --x: ...``), like every other error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())} (see {self.prog} --help)\n")


def build_parser(only: Optional[str] = None):
    """The parser of every command, or with ``only`` the one command that will run (the others get
    empty placeholders, so their modules are not imported)."""
    parser = _Parser(
        prog="btd-jax", description="Back-in-Time Diffusion deepfake detection for CT and MRI (JAX).",
        allow_abbrev=False)  # top-level abbreviations would make short sub-command flags (--n) ambiguous
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    modules = _load_commands(COMMANDS if only is None else (only,))
    if only is not None and only not in modules:  # that command is not built: list the others
        return build_parser()
    for name in COMMANDS:
        if name in modules:
            modules[name].add_parser(sub).set_defaults(_run=modules[name].run)
        elif only is not None:
            sub.add_parser(name)
    return parser


def _main(args, quiet: bool = True) -> int:
    if quiet:  # orbax and JAX log every save/restore at INFO; --verbosity 0 (or more) shows them
        logging.set_verbosity(logging.WARNING)
    discard_active(failed=False)  # plans of an earlier in-process run are not this run's
    try:
        status = int(args._run(args) or 0)
    except Stopped as e:  # SIGTERM/SIGINT: the work reached was saved
        discard_active(failed=False)
        print(f"btd-jax {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        discard_active()
        print(f"btd-jax {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        discard_active()
        known = describe(e)
        if known is None:  # a bug: keep its traceback
            raise
        print(f"btd-jax {args.command}: error: {known[1]}", file=sys.stderr)
        return known[0]
    discard_active(failed=False)
    return status


def main(argv=None):
    """Console-script entry point; ``argv`` defaults to ``sys.argv``. Exits with the command's status."""
    # Orbax and JAX log a lot at INFO through absl; keep the terminal for progress and results
    # unless the user asks for more with --verbosity.
    flags.FLAGS.set_default("verbosity", -1)
    argv = list(sys.argv if argv is None else argv)
    parser = build_parser(only=next((a for a in argv[1:] if a in COMMANDS), None))
    quiet = not any(re.match(r"--?v(erbosity)?(=|$)", a) for a in argv[1:])
    app.run(lambda args: _main(args, quiet), argv=argv, flags_parser=lambda a: parser.parse_args(a[1:]))


if __name__ == "__main__":
    main()

"""The ``btd-jax`` command line: a thin dispatcher over ``btd_jax.commands.<name>``.

Each command module exposes ``add_parser(subparsers)`` and ``run(args) -> int``. A run imports only
the module of the command it runs (``--help`` alone imports them all). Bad input surfaces as one
line on stderr and exit status 2; a run stopped by SIGTERM/SIGINT (after saving) exits with
128 + the signal number (143, 130); a diverged run or a workdir in use by another run exits 1.
"""

from __future__ import annotations

import importlib
import re
import sys
from typing import Optional, Sequence

from absl import app, flags, logging
from absl.flags import argparse_flags

from btd_jax.data.errors import DataError
from btd_jax.runtime import NonFiniteError, Stopped, WorkdirBusy

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


def build_parser(only: Optional[str] = None):
    """The parser of every command, or with ``only`` the one command that will run (the others get
    empty placeholders, so their modules are not imported)."""
    parser = argparse_flags.ArgumentParser(
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
    try:
        return int(args._run(args) or 0)
    except (DataError, FileNotFoundError, KeyError, ValueError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"btd-jax {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except Stopped as e:  # SIGTERM/SIGINT: the work reached was saved
        print(f"btd-jax {args.command}: {e}", file=sys.stderr)
        return e.exit_code
    except (NonFiniteError, WorkdirBusy) as e:
        print(f"btd-jax {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"btd-jax {args.command}: interrupted", file=sys.stderr)
        return 130


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

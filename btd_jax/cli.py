"""The ``btd-jax`` command line: a thin dispatcher over ``btd_jax.commands.<name>``.

Each command module exposes ``add_parser(subparsers)`` (flags only, no heavy imports) and
``run(args) -> int``. Bad input surfaces as one line on stderr and exit status 2; a run stopped by
SIGTERM/SIGINT (after saving) exits with 128 + the signal number (143, 130); a diverged run or a
workdir in use by another run exits 1.
"""

from __future__ import annotations

import importlib
import re
import sys

from absl import app, flags, logging
from absl.flags import argparse_flags

from btd_jax.runtime import NonFiniteError, Stopped, WorkdirBusy

# Order is the order shown in --help.
COMMANDS = ("demo", "prepare", "train", "score", "evaluate", "localize", "compare", "attack", "convert", "bench")


def _load_commands():
    modules = {}
    for name in COMMANDS:
        try:
            modules[name] = importlib.import_module(f"btd_jax.commands.{name}")
        except ModuleNotFoundError as e:  # a command not built yet must not break the others
            if e.name != f"btd_jax.commands.{name}":
                raise
    return modules


def build_parser():
    parser = argparse_flags.ArgumentParser(
        prog="btd-jax", description="Back-in-Time Diffusion deepfake detection for CT and MRI (JAX).",
        allow_abbrev=False)  # top-level abbreviations would make short sub-command flags (--n) ambiguous
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in _load_commands().items():
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def _main(args, quiet: bool = True) -> int:
    if quiet:  # orbax and JAX log every save/restore at INFO; --verbosity 0 (or more) shows them
        logging.set_verbosity(logging.WARNING)
    from btd_jax.data.errors import DataError

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
    parser = build_parser()
    argv = list(sys.argv if argv is None else argv)
    quiet = not any(re.match(r"--?v(erbosity)?(=|$)", a) for a in argv[1:])
    app.run(lambda args: _main(args, quiet), argv=argv, flags_parser=lambda a: parser.parse_args(a[1:]))


if __name__ == "__main__":
    main()

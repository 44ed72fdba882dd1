"""Every btd_jax measurement on this host in one run and one JSON (what ``btd-jax bench --suite`` runs).

    python -m experiments.bench_all --out experiments/results/bench_all_<device>.json

Scoring throughput (``ct``, float32 and bfloat16, batch sizes 64, 256, 1024), the training step
(``ct``, global batch 128, bfloat16: images/s and share of the chip's peak FLOP/s by XLA's cost
analysis), the input pipeline's crops/s and screening's seconds per slice, with the device kind,
versions and the rerun command (:mod:`btd_jax.benchmarks.suite`). Sized for at most ~6 minutes on one
GPU/TPU host; on a CPU the full run takes hours (use ``--config tiny`` and small counts to check it).
Every field of :class:`~btd_jax.benchmarks.suite.SuiteSettings` is a flag (tuples comma-separated).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Callable, List, Optional

from btd_jax.benchmarks import scoring, suite


def _parser_of(default: Any) -> Callable[[str], Any]:
    """How a flag's text becomes the type of the field's default (tuples: comma-separated)."""
    if isinstance(default, tuple):
        kind = type(default[0]) if default else str
        return lambda text: tuple(kind(v.strip()) for v in text.split(",") if v.strip())
    if default is None or default == "auto":
        return lambda text: None if text.lower() == "none" else (int(text) if text.isdigit() else text)
    return type(default)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(suite.SuiteSettings):
        parser.add_argument(f"--{f.name}", type=_parser_of(f.default), default=f.default)
    parser.add_argument("--out", default=None, help="JSON output path (default: print only)")
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    settings = suite.SuiteSettings(**args)
    scoring.write_report(suite.run_suite(settings, command=suite.rerun_command(settings, out)), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

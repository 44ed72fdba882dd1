"""Every btd_jax measurement on this host in one run and one JSON: ``btd-jax bench --suite``.

    python -m experiments.bench_all --out experiments/results/bench_all_<device>.json

Scoring throughput (``ct``, float32 and bfloat16, batch sizes 64, 256, 1024), the training step
(``ct``, global batch 128, bfloat16: images/s and share of the chip's peak FLOP/s by XLA's cost
analysis), the input pipeline's crops/s and screening's seconds per slice, with the device kind,
versions and this command (:mod:`btd_jax.benchmarks.suite`). Sized for at most ~6 minutes on one
GPU/TPU host; on a CPU the full run takes hours (use ``--config tiny`` and small counts to check it).
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from btd_jax.commands import bench


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(parser)
    bench.add_suite_arguments(parser)
    args = parser.parse_args(argv)
    args.suite = True
    args.overwrite = True  # an experiment's result file is meant to be replaced by a new run
    return bench.run(args)


if __name__ == "__main__":
    sys.exit(main())

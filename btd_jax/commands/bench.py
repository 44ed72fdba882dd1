"""``btd-jax bench``: BTD d = 1 throughput (patches/s) of the JAX scorer; JSON out.

For each dtype and batch size it times the jitted, sharded scoring function on inputs already on the
device (the same function :class:`btd_jax.score.Scorer` streams chunks through), reads GFLOP per patch
from XLA's cost analysis and reports the achieved GFLOP/s, the CPU time per patch and the machine
load (:func:`btd_jax.benchmarks.scoring.measure_throughput`). ``experiments/bench_throughput.py`` runs
the same measurement side by side with the PyTorch reference (lucidrains ``p_sample`` on the same
weights and inputs).

``--suite`` measures everything this host offers btd_jax in one JSON (:mod:`btd_jax.benchmarks.suite`):
scoring throughput (float32 and bfloat16, batches 64-1024), the training step at global batch 128
(images/s and share of the chip's peak FLOP/s), the input pipeline's crops/s and screening's seconds
per slice, with the device kind, versions and the command; ~6 minutes on one GPU/TPU host.
The work is :func:`btd_jax.benchmarks.suite.run_suite`.
"""

from __future__ import annotations

import argparse
from typing import Any, List

from btd_jax import configs
from btd_jax.benchmarks import scoring, suite
from btd_jax.commands._flags import non_negative_float, non_negative_int, positive_int, positive_int_list
from btd_jax.commands._safety import add_overwrite_flag, output_plan


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", default="ct", help="preset name (default: ct, 96 px, dim 32)")
    p.add_argument("--batch_size", type=positive_int, default=None, help="time only this batch size")
    p.add_argument("--batches", type=positive_int_list, default="1,64,256",
                   help="comma-separated batch sizes (default 1,64,256)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes (default float32,bfloat16)")
    p.add_argument("--min_time", type=non_negative_float, default=3.0,
                   help="seconds of timed runs per point (>= 2 runs)")
    p.add_argument("--out", default=None, help="JSON output path (default: print only)")
    p.add_argument("--micro_batch", default="auto", help="rows per U-Net pass per device: auto (1 on CPU), none, or K")
    p.add_argument("--seed", type=non_negative_int, default=0)
    return p


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("bench", help="throughput of BTD scoring (patches/s, GFLOP/s)",
                              description=__doc__.split("\n")[0])
    add_arguments(p)
    add_suite_arguments(p)
    add_overwrite_flag(p)
    return p


def add_suite_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    g = p.add_argument_group("--suite", "every measurement in one JSON (btd_jax.benchmarks.suite); --config, "
                             "--dtypes, --min_time, --micro_batch and --seed apply too")
    g.add_argument("--suite", action="store_true",
                   help="scoring throughput, the training step (share of peak FLOP/s), input crops/s and "
                        "screening s/slice: ~6 minutes on one GPU/TPU host")
    g.add_argument("--suite_batches", type=positive_int_list, default="64,256,1024",
                   help="scoring batch sizes (default 64,256,1024)")
    g.add_argument("--parts", default=",".join(suite.PARTS), help=f"some of {','.join(suite.PARTS)}")
    g.add_argument("--train_batch", type=positive_int, default=128, help="global training batch (default 128)")
    g.add_argument("--train_dtype", choices=configs.DTYPES, default="bfloat16")
    g.add_argument("--train_steps", type=positive_int, default=5, help="timed optimiser steps")
    g.add_argument("--store_slices", type=positive_int, default=32, help="512 x 512 slices in the input store")
    g.add_argument("--crop_steps", type=positive_int, default=20, help="timed batches of crops")
    g.add_argument("--screen_slices", type=positive_int, default=8, help="slices of the screened volume")
    g.add_argument("--screen_size", type=positive_int, default=512, help="side of the screened slices")
    g.add_argument("--devices", type=positive_int, default=None, help="use the first N local devices (default all)")
    return p


def suite_settings(args: argparse.Namespace) -> suite.SuiteSettings:
    """The suite's settings from the command line."""
    return suite.SuiteSettings(
        config=args.config, parts=tuple(v.strip() for v in args.parts.split(",") if v.strip()),
        batches=tuple(_ints(args.suite_batches)), dtypes=tuple(d.strip() for d in args.dtypes.split(",") if d.strip()),
        min_time=args.min_time, micro_batch=scoring.parse_micro_batch(args.micro_batch), train_batch=args.train_batch,
        train_dtype=args.train_dtype, train_steps=args.train_steps, store_slices=args.store_slices,
        crop_steps=args.crop_steps, screen_slices=args.screen_slices, screen_size=args.screen_size,
        devices=args.devices, seed=args.seed)


def run(args: argparse.Namespace) -> int:
    plan = output_plan(args)  # an existing --out needs --overwrite, before the minutes of timing
    plan.file(args.out)
    plan.check()
    if getattr(args, "suite", False):
        settings = suite_settings(args)
        scoring.write_report(suite.run_suite(settings, command=suite.rerun_command(settings, args.out)), args.out)
        return 0
    batches = [args.batch_size] if args.batch_size else _ints(args.batches)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    scoring.write_report(scoring.measure_throughput(args.config, batches, dtypes, args.min_time,
                                                    scoring.parse_micro_batch(args.micro_batch), args.seed), args.out)
    return 0


def _ints(text: Any) -> List[int]:
    """Batch sizes from ``1,64,256`` or the list that ``--batches`` parses to."""
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    return [int(v) for v in items if str(v).strip()]

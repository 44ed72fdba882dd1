"""``btd-jax bench``: BTD d = 1 throughput (patches/s) of the JAX scorer; JSON out.

For each dtype and batch size it times the jitted, sharded scoring function on inputs already on the
device (the same function :class:`btd_jax.score.Scorer` streams chunks through), reads GFLOP per patch
from XLA's cost analysis and reports the achieved GFLOP/s, the CPU time per patch and the machine
load. ``experiments/bench_throughput.py`` runs the same measurement side by side with the PyTorch
reference (lucidrains ``p_sample`` on the same weights and inputs).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import numpy as np

from btd_jax import configs, parallel, score
from btd_jax.commands._flags import non_negative_float, non_negative_int, positive_int, positive_int_list
from btd_jax.commands._safety import add_overwrite_flag, output_plan
from btd_jax.models.unet import init_params
from btd_jax.runtime.atomic import write_text
from btd_jax.scoring import stream
from btd_jax.timing import load_average, throughput, time_runs

# Called after each batch size with (report, bench, inputs, batch, rows, {dtype: scores (batch,)}).
AfterBatch = Callable[[Dict[str, Any], "JaxBench", Any, int, List[Dict[str, Any]], Dict[str, Any]], None]


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
    add_overwrite_flag(p)
    return p


def _ints(text: Any) -> List[int]:
    """Batch sizes from ``1,64,256`` or the list that ``--batches`` parses to."""
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    return [int(v) for v in items if str(v).strip()]


# ----------------------------------------------------------------------------- JAX side

def _micro(text: str) -> Any:
    text = str(text).strip().lower()
    return "auto" if text == "auto" else None if text in ("none", "0", "") else int(text)


class JaxBench:
    """The JAX side: one ``Scorer`` per dtype, the same jitted function ``Scorer.score`` streams through."""

    def __init__(self, cfg: Any, dtypes: List[str], seed: int, micro_batch: Any = "auto"):
        self.cfg = cfg
        self.params = init_params(cfg.model, cfg.image_size, jax.random.key(seed))
        self.mesh = parallel.make_mesh(jax.local_devices())
        self.micro_batch = micro_batch
        self.scorers = {d: score.Scorer.from_params(self.params, configs.override(cfg, {"model.dtype": d}), self.mesh)
                        for d in dtypes}
        self.gflop = {}

    def _args(self, scorer, x):
        return (scorer.params, scorer.sched, parallel.shard_batch(x, self.mesh),
                parallel.shard_batch(np.arange(len(x), dtype=np.int32), self.mesh), jax.random.key(0))

    def _gflop_per_patch(self, dtype, inputs):
        """XLA cost analysis of a plain batched pass (a micro-batch loop would be counted once)."""
        if dtype not in self.gflop:
            scorer, nd = self.scorers[dtype], self.mesh.devices.size
            x = inputs[:1].repeat(nd, axis=0)
            fn = self._function(scorer, micro_batch=None)
            cost = fn.lower(*self._args(scorer, x)).compile().cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            self.gflop[dtype] = float(cost.get("flops", float("nan"))) / nd / 1e9 if cost else float("nan")
        return self.gflop[dtype]

    def _function(self, scorer, micro_batch):
        """The jitted d = 1 scoring function ``Scorer.score`` streams chunks through."""
        opts = stream._Options(model=scorer.cfg.model, micro_batch=micro_batch,
                               normalize=bool(scorer.cfg.diffusion.auto_normalize))
        return stream._compiled(self.mesh, opts)

    def run(self, dtype: str, b: int, inputs: np.ndarray, min_time: float) -> Tuple[Dict[str, Any], np.ndarray]:
        """Times one (dtype, batch) point; returns (row, scores (b,))."""
        scorer = self.scorers[dtype]
        x, n = parallel.pad_to_multiple(inputs[:b], parallel.local_batch_multiple(self.mesh))
        micro = score.resolve_micro_batch(self.micro_batch, len(x) // self.mesh.devices.size)
        fn = self._function(scorer, micro)
        args = self._args(scorer, x)
        t0 = time.perf_counter()
        compiled = fn.lower(*args).compile()
        compile_s = time.perf_counter() - t0
        out = np.asarray(compiled(*args)[0])[:n]  # warm-up
        row = dict(impl="jax", dtype=dtype, micro_batch=micro, compile_s=compile_s, padded_batch=len(x),
                   load_before=load_average(), **throughput(time_runs(
                       lambda: compiled(*args)[0].block_until_ready(), min_time), b))
        row["load_after"] = load_average()
        row["gflop_per_patch"] = self._gflop_per_patch(dtype, inputs)
        row["gflop_per_s"] = row["gflop_per_patch"] * len(x) / row["sec_per_batch_median"]
        print(f"jax  {dtype:8s} batch {b:4d}: {row['patches_per_s']:9.2f} patches/s "
              f"({row['gflop_per_patch']:.3f} GFLOP/patch, {row['gflop_per_s']:.1f} GFLOP/s, "
              f"{row['cpu_s_per_patch']:.3f} CPU-s/patch, {row['runs']} runs, load {row['load_before']})", flush=True)
        return row, out


# ----------------------------------------------------------------------------- driver

def measure(args: argparse.Namespace, after_batch: Optional[AfterBatch] = None) -> Dict[str, Any]:
    """Times every (batch size, dtype) of ``args`` (see :func:`add_arguments`); returns the report.

    ``after_batch`` runs right after each batch size (e.g. a reference implementation timed on the
    same inputs, so both see about the same machine load) and may add to the report.
    """
    cfg = configs.load(args.config)
    batches = [args.batch_size] if args.batch_size else _ints(args.batches)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not batches or min(batches) < 1:
        raise ValueError(f"bench: batch sizes must be positive, got {batches}")
    inputs = np.random.default_rng(args.seed).uniform(
        size=(max(batches), cfg.image_size, cfg.image_size, cfg.model.channels)).astype(np.float32)
    dev = jax.local_devices()[0]
    report = dict(config=args.config, image_size=cfg.image_size, dim=cfg.model.dim, steps=1,
                  backend=jax.default_backend(), device=getattr(dev, "device_kind", str(dev)),
                  n_devices=jax.local_device_count(), cpu_count=os.cpu_count(), jax_version=jax.__version__,
                  xla_flags=os.environ.get("XLA_FLAGS", ""), load_start=load_average(),
                  command=" ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]), jax=[])
    jb = JaxBench(cfg, dtypes, args.seed, _micro(args.micro_batch))
    for b in batches:
        rows, scores = [], {}
        for dtype in dtypes:
            row, scores[dtype] = jb.run(dtype, b, inputs, args.min_time)
            rows.append(row)
        report["jax"] += rows
        if after_batch is not None:
            after_batch(report, jb, inputs, b, rows, scores)
    report["load_end"] = load_average()
    return report


def write_report(report: Dict[str, Any], out: Optional[str]) -> None:
    """The report as indented JSON to ``out`` (directories created) or, without a path, to stdout."""
    text = json.dumps(report, indent=2, default=float)
    if out:
        write_text(out, text + "\n")
        print(f"wrote {out}")
    else:
        print(text)


def run(args: argparse.Namespace) -> int:
    plan = output_plan(args)  # an existing --out needs --overwrite, before the minutes of timing
    plan.file(args.out)
    plan.check()
    write_report(measure(args), args.out)
    return 0

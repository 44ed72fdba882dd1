"""BTD d = 1 throughput of the jitted, sharded scoring function (the one ``Scorer.score`` streams
chunks through), timed on inputs already on the devices; GFLOP per patch from XLA's cost analysis.

    report = scoring.measure_throughput("ct", batches=(1, 64, 256), dtypes=("float32", "bfloat16"))
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np

from btd_jax import configs, parallel
from btd_jax.models.unet import init_params
from btd_jax.scoring import stream
from btd_jax.runtime.atomic import write_text
from btd_jax.scoring.scorer import Scorer
from btd_jax.timing import load_average, throughput, time_runs

__all__ = ["JaxBench", "flops_of", "parse_micro_batch", "measure_throughput", "write_report"]

# Called after each batch size with (report, bench, inputs, batch, rows, {dtype: scores (batch,)}).
AfterBatch = Callable[[Dict[str, Any], "JaxBench", Any, int, List[Dict[str, Any]], Dict[str, Any]], None]


def flops_of(compiled: Any) -> Optional[float]:
    """FLOPs of a compiled XLA executable by its cost analysis (None where the backend gives none).

    For a program sharded over several devices this is one device's share (measured: 8 rows on 8
    devices count as 1 row on one)."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
    flops = cost.get("flops") if cost else None
    return float(flops) if flops is not None and flops > 0 else None


class JaxBench:
    """One ``Scorer`` per dtype over the first ``devices`` local devices (None: all); :meth:`run` times
    one (dtype, batch) point."""

    def __init__(self, cfg: Any, dtypes: List[str], seed: int, micro_batch: Any = "auto",
                 devices: Optional[int] = None):
        self.cfg = cfg
        self.params = init_params(cfg.model, cfg.image_size, jax.random.key(seed))
        self.mesh = parallel.make_mesh(jax.local_devices()[:devices])
        self.micro_batch = micro_batch
        self.scorers = {d: Scorer.from_params(self.params, configs.override(cfg, {"model.dtype": d}), self.mesh)
                        for d in dtypes}
        self.gflop: Dict[str, float] = {}

    def _args(self, scorer, x):
        return (scorer.params, scorer.sched, parallel.shard_batch(x, self.mesh),
                parallel.shard_batch(np.arange(len(x), dtype=np.int32), self.mesh), jax.random.key(0))

    def _gflop_per_patch(self, dtype, inputs, compiled=None, rows: int = 0) -> float:
        """XLA cost analysis of a plain batched pass: ``compiled`` itself when it is one (no micro-batch
        loop, which the analysis would count once), else one extra compilation."""
        if dtype not in self.gflop:
            if compiled is None:
                scorer, rows = self.scorers[dtype], self.mesh.devices.size
                x = inputs[:1].repeat(rows, axis=0)
                compiled = self._function(scorer, micro_batch=None).lower(*self._args(scorer, x)).compile()
            flops = flops_of(compiled)  # one device's share of ``rows`` patches
            self.gflop[dtype] = flops * self.mesh.devices.size / rows / 1e9 if flops else float("nan")
        return self.gflop[dtype]

    def _function(self, scorer, micro_batch):
        """The jitted d = 1 scoring function ``Scorer.score`` streams chunks through."""
        opts = stream._Options(model=scorer.cfg.model, micro_batch=micro_batch,
                               normalize=bool(scorer.cfg.diffusion.auto_normalize))
        return stream._compiled(self.mesh, opts)

    def run(self, dtype: str, b: int, inputs: np.ndarray, min_time: float,
            verbose: bool = True) -> Tuple[Dict[str, Any], np.ndarray]:
        """Times one (dtype, batch) point; returns (row, scores (b,))."""
        scorer = self.scorers[dtype]
        x, n = parallel.pad_to_multiple(inputs[:b], parallel.local_batch_multiple(self.mesh))
        micro = stream.resolve_micro_batch(self.micro_batch, len(x) // self.mesh.devices.size)
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
        plain = micro is None or micro >= len(x) // self.mesh.devices.size
        row["gflop_per_patch"] = self._gflop_per_patch(dtype, inputs, compiled if plain else None, len(x))
        row["gflop_per_s"] = row["gflop_per_patch"] * len(x) / row["sec_per_batch_median"]
        if verbose:
            print(f"jax  {dtype:8s} batch {b:4d}: {row['patches_per_s']:9.2f} patches/s "
                  f"({row['gflop_per_patch']:.3f} GFLOP/patch, {row['gflop_per_s']:.1f} GFLOP/s, "
                  f"{row['cpu_s_per_patch']:.3f} CPU-s/patch, {row['runs']} runs, load {row['load_before']})",
                  flush=True)
        return row, out


def parse_micro_batch(text: Any) -> Any:
    """``'auto'``, ``'none'`` (or ``0``: one pass per chunk) or an integer K of rows per U-Net pass."""
    text = str(text).strip().lower()
    return "auto" if text == "auto" else None if text in ("none", "0", "") else int(text)


def measure_throughput(config: str, batches: Sequence[int], dtypes: Sequence[str], min_time: float = 3.0,
                       micro_batch: Any = "auto", seed: int = 0,
                       after_batch: Optional[AfterBatch] = None) -> Dict[str, Any]:
    """Times every (batch size, dtype) of the preset or config file ``config``; returns the report
    (``btd-jax bench``).

    ``after_batch`` runs right after each batch size (e.g. a reference implementation timed on the
    same inputs, so both see about the same machine load) and may add to the report.
    """
    cfg = configs.load(config)
    batches = [int(b) for b in batches]
    if not batches or min(batches) < 1:
        raise ValueError(f"bench: batch sizes must be positive, got {batches}")
    inputs = np.random.default_rng(seed).uniform(
        size=(max(batches), cfg.image_size, cfg.image_size, cfg.model.channels)).astype(np.float32)
    dev = jax.local_devices()[0]
    report = dict(config=config, image_size=cfg.image_size, dim=cfg.model.dim, steps=1,
                  backend=jax.default_backend(), device=getattr(dev, "device_kind", str(dev)),
                  n_devices=jax.local_device_count(), cpu_count=os.cpu_count(), jax_version=jax.__version__,
                  xla_flags=os.environ.get("XLA_FLAGS", ""), load_start=load_average(),
                  command=" ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]), jax=[])
    jb = JaxBench(cfg, list(dtypes), seed, micro_batch)
    for b in batches:
        rows, scores = [], {}
        for dtype in dtypes:
            row, scores[dtype] = jb.run(dtype, b, inputs, min_time)
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

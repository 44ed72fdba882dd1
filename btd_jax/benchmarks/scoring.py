"""BTD d = 1 throughput of the jitted, sharded scoring function (the one ``Scorer.score`` streams
chunks through), timed on inputs already on the devices; GFLOP per patch from XLA's cost analysis."""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np

from btd_jax import configs, parallel
from btd_jax.models.unet import init_params
from btd_jax.scoring import stream
from btd_jax.scoring.scorer import Scorer
from btd_jax.timing import load_average, throughput, time_runs

__all__ = ["JaxBench", "flops_of"]


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

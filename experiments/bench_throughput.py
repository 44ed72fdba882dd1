"""BTD d = 1 throughput of the JAX scorer vs the PyTorch reference, side by side in one run; JSON out.

    python -m experiments.bench_throughput --config ct --batches 1,64,256 --dtypes float32,bfloat16 \
        --torch_python TORCH_ENV/bin/python --ddpm_path DDPM_1.8.3_DIR \
        --out experiments/results/bench_throughput_cpu.json

The JAX side is ``btd-jax bench`` (:func:`btd_jax.benchmarks.scoring.measure_throughput`: what is timed
and how). After each
batch size the reference (:mod:`experiments.torch_reference`: lucidrains ``p_sample(x, 0)`` + MSE in
``--torch_python``, denoising-diffusion-pytorch from ``--ddpm_path``) is timed on the same weights,
inputs and batch, its scores are checked against the JAX float32 ones, and the ratio is reported.
Without ``--torch_python`` only the JAX side runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Dict, List, Optional

import numpy as np

from btd_jax.benchmarks import scoring
from experiments import torch_reference


def _reference_hook(args: argparse.Namespace, ref_batches: Optional[set]):
    """measure_throughput's after_batch: time the reference at batch ``b`` right after the JAX side."""

    def after_batch(report: Dict[str, Any], jb: Any, inputs: np.ndarray, b: int, rows: List[Dict[str, Any]],
                    scores: Dict[str, np.ndarray]) -> None:
        if ref_batches is not None and b not in ref_batches:
            return
        ref = torch_reference.bench_torch(jb.cfg, jb.params, inputs, [b], args.torch_python, args.ddpm_path,
                                          args.threads, args.min_time)
        if "error" in ref:
            print(f"reference not timed: {ref['error']}", flush=True)
            report.setdefault("reference", []).append(dict(batch=b, error=ref["error"]))
            return
        r = ref["rows"][0]
        r.update(torch_version=ref["torch_version"], ddpm_version=ref["ddpm_version"], threads=ref["threads"])
        if "float32" in scores:
            s_ref = ref["scores"][str(b)]
            r["max_rel_diff_vs_jax_f32"] = float(np.max(np.abs(scores["float32"] - s_ref) / np.abs(s_ref)))
        report.setdefault("reference", []).append(r)
        for j in rows:
            ratio = j["patches_per_s"] / r["patches_per_s"]
            report.setdefault("ratio_vs_reference", {})[f"{j['dtype']}_batch{b}"] = ratio
            print(f"ratio jax {j['dtype']} / torch float32 at batch {b}: {ratio:.2f}x patches/s, "
                  f"{r['cpu_s_per_patch'] / j['cpu_s_per_patch']:.2f}x less CPU time per patch", flush=True)

    return after_batch


def _add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", default="ct", help="preset name (default: ct, 96 px, dim 32)")
    p.add_argument("--batches", default="1,64,256", help="comma-separated batch sizes (default 1,64,256)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes (default float32,bfloat16)")
    p.add_argument("--min_time", type=float, default=3.0, help="seconds of timed runs per point (>= 2 runs)")
    p.add_argument("--out", default=None, help="JSON output path (default: print only)")
    p.add_argument("--micro_batch", default="auto", help="rows per U-Net pass per device: auto (1 on CPU), none, or K")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    args = torch_reference.add_arguments(_add_arguments(parser)).parse_args(argv)
    use_ref = bool(args.torch_python) and os.path.exists(args.torch_python)
    ref_batches = {int(v) for v in args.ref_batches.split(",") if v.strip()} if args.ref_batches else None
    hook = _reference_hook(args, ref_batches) if use_ref else None
    report = scoring.measure_throughput(
        args.config, [int(v) for v in args.batches.split(",") if v.strip()],
        [d.strip() for d in args.dtypes.split(",") if d.strip()], args.min_time,
        scoring.parse_micro_batch(args.micro_batch), args.seed, after_batch=hook)
    report.setdefault("reference", [])
    report.setdefault("ratio_vs_reference", {})
    if not use_ref:
        report["reference"] = [dict(error=f"no torch interpreter at {args.torch_python!r}")]
    scoring.write_report(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

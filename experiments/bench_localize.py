"""Benchmark: seconds per 512x512 slice for whole-slice BTD localisation (btd_jax.localize).

Random-initialised weights (speed does not depend on their values) on a random slice; the first
slice (compilation) is timed separately from the steady state. Prints and writes JSON::

    python -m experiments.bench_localize --config ct --strides 16 32 --repeats 3 --out experiments/out/bench_localize.json
    python -m experiments.bench_localize --config tiny --size 128 --repeats 2      # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="ct", help="preset name (ct: 96 px, dim 32, the paper)")
    p.add_argument("--size", type=int, default=512, help="slice height = width")
    p.add_argument("--strides", type=int, nargs="+", default=[16])
    p.add_argument("--center", type=int, default=32, help="0: whole window")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3, help="timed slices after the warm-up slice")
    p.add_argument("--dtype", default=None, help="override model.dtype (float32 / bfloat16)")
    p.add_argument("--out", default="experiments/out/bench_localize.json")
    args = p.parse_args(argv)

    import jax
    import numpy as np

    from btd_jax import configs, localize, score
    from btd_jax.models import unet

    cfg = configs.get(args.config)
    if args.dtype:
        cfg = configs.override(cfg, {"model.dtype": args.dtype})
    center = min(args.center, cfg.image_size) or None
    params = unet.init_params(cfg.model, cfg.image_size, jax.random.key(0))
    scorer = score.Scorer.from_params(params, cfg)
    rng = np.random.default_rng(0)
    key = jax.random.key(1) if args.steps > 1 else None
    out = {"benchmark": "localize", "config": cfg.name, "patch": cfg.image_size, "dim": cfg.model.dim,
           "dtype": cfg.model.dtype, "slice": args.size, "center": center, "steps": args.steps,
           "batch_size": args.batch_size, "backend": jax.default_backend(), "devices": jax.device_count(),
           "device_kind": jax.devices()[0].device_kind, "host": platform.node(), "jax": jax.__version__,
           "runs": []}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    for stride in args.strides:
        slices = rng.uniform(0, 1, (args.repeats + 1, args.size, args.size)).astype(np.float32)
        times = []
        for s in slices:
            t0 = time.perf_counter()
            res = localize.localize_slice(scorer, s, stride=stride, center=center, steps=args.steps,
                                          batch_size=args.batch_size, key=key)
            times.append(time.perf_counter() - t0)  # localize_slice returns host arrays: work is done
        n_win = int(res.scores.size)
        steady = float(np.median(times[1:])) if len(times) > 1 else float("nan")
        out["runs"].append({"stride": stride, "windows_per_slice": n_win, "first_slice_s": times[0],
                            "seconds_per_slice": steady, "windows_per_s": n_win / steady, "all_s": times})
        print(f"stride {stride}: {n_win} windows, first {times[0]:.2f} s, steady {steady:.3f} s/slice "
              f"({n_win / steady:.1f} windows/s)", flush=True)
        with open(args.out, "w") as f:  # after every stride, so an interrupted run keeps what it measured
            json.dump(out, f, indent=1)
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}))
    return out


if __name__ == "__main__":
    main()

"""CPU cost of the diffusion attacks: seconds per fake for each sampling preset and patch size; JSON out.

    python -m experiments.bench_attacks --out experiments/results/bench_attacks_cpu.json

For RePaint (removal, from noise) and SDEdit (injection from t* = strength (T - 1)) with the
``fast`` and ``full`` presets of :mod:`btd_jax.attacks.repaint` it times
:func:`btd_jax.attacks.repaint.inpaint` on ``--n`` patches of each ``--sizes`` (the ``demo``
preset's U-Net, dim 8, 1000 timesteps, at that image size) in one compiled call of ``--batch``
rows, after a warm-up call that compiles it. The weights are random: the sampler's arithmetic,
hence its cost, does not depend on them. Each entry records the model calls per fake (the
reverse steps of the jump path), wall seconds, seconds per fake and per model call, and the
load average while it ran (the development machine is shared: read the figures with it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

from btd_jax import configs
from btd_jax.attacks import repaint, sdedit
from btd_jax.models.unet import init_params


def _model_calls(cfg, opts: repaint.RePaintOptions) -> int:
    taus = repaint.time_grid(cfg.diffusion.timesteps, opts.steps, opts.t_start)
    pairs = repaint.jump_schedule(len(taus), opts.jump_length, opts.resamplings)
    return int((pairs[:, 1] < pairs[:, 0]).sum())


def bench_one(size: int, method: str, preset: str, n: int, batch: int, strength: float) -> dict:
    cfg = configs.override(configs.get("demo"), {"diffusion.image_size": size, "name": f"demo-{size}px"})
    params = init_params(cfg.model, size, jax.random.key(0))
    rng = np.random.default_rng(0)
    x = rng.uniform(0.25, 0.45, (n, size, size)).astype(np.float32)
    mask = np.zeros(x.shape, bool)
    c, r = size // 2, size // 5
    mask[:, c - r:c + r, c - r:c + r] = True
    opts = repaint.preset_options(preset, method)
    if method == "sdedit":
        t_star = int(round(strength * (cfg.diffusion.timesteps - 1)))
        # as sdedit.sdedit: the grid starts at t*, at most t* + 1 steps
        opts = dataclasses.replace(opts, t_start=t_star,
                                   steps=None if opts.steps is None or opts.steps > t_star else opts.steps)

    def call(k):
        return repaint.inpaint(params, cfg, x, mask, jax.random.key(k), options=opts, batch_size=batch)

    t0 = time.perf_counter()
    call(0)  # compile + one run
    first = time.perf_counter() - t0
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    call(1)
    wall = time.perf_counter() - t0
    calls = _model_calls(cfg, opts)
    return {"size": size, "method": method, "preset": preset, "options": dataclasses.asdict(opts),
            "n": n, "batch": batch, "model_calls_per_fake": calls, "first_call_seconds": round(first, 2),
            "seconds": round(wall, 2), "seconds_per_fake": round(wall / n, 3),
            "ms_per_model_call_per_fake": round(1e3 * wall / n / calls, 3),
            "load_avg_1min": [round(load0, 2), round(os.getloadavg()[0], 2)]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="experiments/results/bench_attacks_cpu.json")
    ap.add_argument("--sizes", type=int, nargs="*", default=[32, 48])
    ap.add_argument("--methods", nargs="*", default=["repaint", "sdedit"], choices=["repaint", "sdedit"])
    ap.add_argument("--presets", nargs="*", default=list(repaint.PRESETS), choices=list(repaint.PRESETS))
    ap.add_argument("--n", type=int, default=16, help="fakes per timed call")
    ap.add_argument("--batch", type=int, default=16, help="rows per compiled call")
    ap.add_argument("--strength", type=float, default=0.15, help="SDEdit t* / (T - 1)")
    args = ap.parse_args(argv)
    rows = []
    for size in args.sizes:
        for method in args.methods:
            for preset in args.presets:
                rows.append(bench_one(size, method, preset, args.n, args.batch, args.strength))
                print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "args": vars(args), "sdedit_default_strength": args.strength,
                               "radius_px_sdedit": list(sdedit.RADIUS_PX), "devices": [str(d) for d in jax.devices()],
                               "cpu_count": os.cpu_count(), "platform": platform.platform(),
                               "command": "python -m experiments.bench_attacks --out " + str(args.out)}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

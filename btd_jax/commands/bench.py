"""``btd-jax bench``: BTD d = 1 throughput (patches/s) of the JAX scorer, side by side with the PyTorch reference.

For each dtype and batch size it times the jitted, sharded scoring function on inputs already on the
device (the same function :class:`btd_jax.score.Scorer` streams chunks through), reads GFLOP per patch
from XLA's cost analysis and reports the achieved GFLOP/s. When a PyTorch interpreter with
denoising-diffusion-pytorch is available (``--torch``; 1.8.3 via ``--ddpm_path``, the paper's version)
it times lucidrains ``p_sample(x, 0)`` + MSE under ``torch.inference_mode`` on the same weights, same
inputs, same batch and thread count in a subprocess, checks the scores agree, and prints the ratio.

This module's top level imports only the standard library: the same file runs as the torch worker
(``python -m btd_jax.commands.bench --torch-worker ...``) in an environment without JAX.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

DEFAULT_TORCH = "/work/torchenv/bin/python"
DEFAULT_DDPM = "/work/ddpm183/pkg"


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", default="ct", help="preset name (default: ct, 96 px, dim 32)")
    p.add_argument("--batch_size", type=int, default=None, help="time only this batch size")
    p.add_argument("--batches", default="1,64,256", help="comma-separated batch sizes (default 1,64,256)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes (default float32,bfloat16)")
    p.add_argument("--min_time", type=float, default=3.0, help="seconds of timed runs per point (>= 2 runs)")
    p.add_argument("--out", default=None, help="JSON output path (default: print only)")
    p.add_argument("--torch", default=DEFAULT_TORCH, help="python with torch + denoising-diffusion-pytorch; '' skips")
    p.add_argument("--ddpm_path", default=DEFAULT_DDPM, help="unpacked denoising-diffusion-pytorch put first on "
                   "PYTHONPATH for the reference ('' = the installed one)")
    p.add_argument("--ref_batches", default=None, help="batch sizes for the reference (default: same as JAX)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads (XLA uses all cores)")
    p.add_argument("--micro_batch", default="auto", help="rows per U-Net pass per device: auto (1 on CPU), none, or K")
    p.add_argument("--seed", type=int, default=0)
    return p


def add_parser(subparsers):
    p = subparsers.add_parser("bench", help="throughput of BTD scoring vs the PyTorch reference",
                              description=__doc__.split("\n")[0])
    return add_arguments(p)


def _ints(text):
    return [int(v) for v in str(text).split(",") if v.strip()]


def _load():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _time(fn, min_time: float, min_iters: int = 2):
    """Runs ``fn()`` (blocking) repeatedly for at least ``min_time`` s; returns per-run (wall, CPU) seconds.

    CPU = this process's user + system time over all threads: on a shared machine it shows the work
    done per patch even when other processes take the cores (wall time is what users get)."""
    times = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < min_time:
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append((time.perf_counter() - t0, time.process_time() - c0))
    return times


def _summary(times, batch):
    wall = [t for t, _ in times]
    med = statistics.median(wall)
    return dict(batch=batch, runs=len(times), sec_per_batch_median=med, sec_per_batch_best=min(wall),
                patches_per_s=batch / med, patches_per_s_best=batch / min(wall),
                cpu_s_per_patch=statistics.median(c for _, c in times) / batch)


# ----------------------------------------------------------------------------- JAX side

def _micro(text):
    text = str(text).strip().lower()
    return "auto" if text == "auto" else None if text in ("none", "0", "") else int(text)


class JaxBench:
    """The JAX side: one ``Scorer`` per dtype, the same jitted function ``Scorer.score`` streams through."""

    def __init__(self, cfg, dtypes, seed, micro_batch="auto"):
        import jax

        from btd_jax import configs, parallel, score
        from btd_jax.models.unet import init_params

        self.params = init_params(cfg.model, cfg.image_size, jax.random.key(seed))
        self.mesh = parallel.make_mesh(jax.local_devices())
        self.micro_batch = micro_batch
        self.scorers = {d: score.Scorer.from_params(self.params, configs.override(cfg, {"model.dtype": d}), self.mesh)
                        for d in dtypes}
        self.gflop = {}

    def _args(self, scorer, x):
        import jax
        import numpy as np

        from btd_jax import parallel

        return (scorer.params, scorer.sched, parallel.shard_batch(x, self.mesh),
                parallel.shard_batch(np.arange(len(x), dtype=np.int32), self.mesh), jax.random.key(0))

    def _gflop_per_patch(self, dtype, inputs):
        """XLA cost analysis of a plain batched pass (a micro-batch loop would be counted once)."""
        from btd_jax import score

        if dtype not in self.gflop:
            scorer, nd = self.scorers[dtype], self.mesh.devices.size
            x = inputs[:1].repeat(nd, axis=0)
            fn = score._compiled(self.mesh, score._Options(model=scorer.cfg.model, micro_batch=None))
            cost = fn.lower(*self._args(scorer, x)).compile().cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            self.gflop[dtype] = float(cost.get("flops", float("nan"))) / nd / 1e9 if cost else float("nan")
        return self.gflop[dtype]

    def run(self, dtype, b, inputs, min_time):
        """Times one (dtype, batch) point; returns (row, scores (b,))."""
        import numpy as np

        from btd_jax import parallel, score

        scorer = self.scorers[dtype]
        x, n = parallel.pad_to_multiple(inputs[:b], parallel.local_batch_multiple(self.mesh))
        micro = score.resolve_micro_batch(self.micro_batch, len(x) // self.mesh.devices.size)
        fn = score._compiled(self.mesh, score._Options(model=scorer.cfg.model, micro_batch=micro))
        args = self._args(scorer, x)
        t0 = time.perf_counter()
        compiled = fn.lower(*args).compile()
        compile_s = time.perf_counter() - t0
        out = np.asarray(compiled(*args)[0])[:n]  # warm-up
        row = dict(impl="jax", dtype=dtype, micro_batch=micro, compile_s=compile_s, padded_batch=len(x),
                   load_before=_load(), **_summary(_time(lambda: compiled(*args)[0].block_until_ready(),
                                                         min_time), b))
        row["load_after"] = _load()
        row["gflop_per_patch"] = self._gflop_per_patch(dtype, inputs)
        row["gflop_per_s"] = row["gflop_per_patch"] * len(x) / row["sec_per_batch_median"]
        print(f"jax  {dtype:8s} batch {b:4d}: {row['patches_per_s']:9.2f} patches/s "
              f"({row['gflop_per_patch']:.3f} GFLOP/patch, {row['gflop_per_s']:.1f} GFLOP/s, "
              f"{row['cpu_s_per_patch']:.3f} CPU-s/patch, {row['runs']} runs, load {row['load_before']})", flush=True)
        return row, out


# ----------------------------------------------------------------------------- torch side

def bench_torch(args, cfg, params, inputs, batches):
    """Runs the reference worker in a subprocess; returns its JSON (or a dict with 'error')."""
    import numpy as np

    from btd_jax import convert

    with tempfile.TemporaryDirectory() as tmp:
        np.savez(os.path.join(tmp, "sd.npz"), **convert.to_torch_state_dict(params, cfg))
        np.save(os.path.join(tmp, "x.npy"), np.ascontiguousarray(np.transpose(inputs, (0, 3, 1, 2))))
        spec = dict(unet=dict(dim=cfg.model.dim, dim_mults=list(cfg.model.dim_mults), channels=cfg.model.channels,
                              full_attn=list(cfg.model.full_attn_per_stage)),
                    diffusion=dict(image_size=cfg.image_size, timesteps=cfg.diffusion.timesteps,
                                   sampling_timesteps=cfg.diffusion.sampling_timesteps,
                                   objective=cfg.diffusion.objective, beta_schedule=cfg.diffusion.beta_schedule),
                    batches=batches, threads=args.threads, min_time=args.min_time, dir=tmp)
        with open(os.path.join(tmp, "spec.json"), "w") as f:
            json.dump(spec, f)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (args.ddpm_path, root) if p))
        cmd = [args.torch, "-W", "ignore", "-m", "btd_jax.commands.bench", "--torch-worker", tmp]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        sys.stderr.write("".join(l + "\n" for l in proc.stdout.splitlines() if l.startswith("torch ")))
        if proc.returncode != 0:
            return dict(error=(proc.stderr.strip().splitlines() or ["failed"])[-1])
        with open(os.path.join(tmp, "result.json")) as f:
            res = json.load(f)
        for b in res.get("scores", {}):
            res["scores"][b] = np.asarray(res["scores"][b], np.float32)
        return res


def torch_worker(tmp: str) -> int:
    """The reference: lucidrains GaussianDiffusion.p_sample(x, 0) + per-image MSE (no JAX here)."""
    import numpy as np
    import torch
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet
    from denoising_diffusion_pytorch.version import __version__

    with open(os.path.join(tmp, "spec.json")) as f:
        spec = json.load(f)
    torch.set_num_threads(spec["threads"])
    unet_kw = dict(spec["unet"], dim_mults=tuple(spec["unet"]["dim_mults"]), full_attn=tuple(spec["unet"]["full_attn"]))
    diffusion = GaussianDiffusion(Unet(**unet_kw), **spec["diffusion"]).eval()
    sd = np.load(os.path.join(tmp, "sd.npz"))
    diffusion.load_state_dict({k: torch.from_numpy(sd[k]) for k in sd.files})
    x_all = torch.from_numpy(np.load(os.path.join(tmp, "x.npy")))
    rows, scores = [], {}
    for b in spec["batches"]:
        x = x_all[:b].clone()

        def run():
            xn = diffusion.normalize(x)
            x_prev, _ = diffusion.p_sample(xn, 0)
            return ((xn - x_prev) ** 2).mean(dim=(1, 2, 3))

        with torch.inference_mode():
            scores[str(b)] = run().tolist()  # warm-up
            row = dict(impl="torch", dtype="float32", load_before=_load(), **_summary(_time(run, spec["min_time"]), b))
        row["load_after"] = _load()
        rows.append(row)
        print(f"torch float32  batch {b:4d}: {row['patches_per_s']:9.2f} patches/s "
              f"({row['cpu_s_per_patch']:.3f} CPU-s/patch, {row['runs']} runs, "
              f"load {row['load_before']})", flush=True)
    with open(os.path.join(tmp, "result.json"), "w") as f:
        json.dump(dict(rows=rows, scores=scores, torch_version=torch.__version__, ddpm_version=__version__,
                       threads=torch.get_num_threads()), f)
    return 0


# ----------------------------------------------------------------------------- driver

def run(args) -> int:
    import jax
    import numpy as np

    from btd_jax import configs

    cfg = configs.get(args.config)
    batches = [args.batch_size] if args.batch_size else _ints(args.batches)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    if not batches or min(batches) < 1:
        raise ValueError(f"bench: batch sizes must be positive, got {batches}")
    ref_batches = set(_ints(args.ref_batches) if args.ref_batches else batches)
    use_ref = bool(args.torch) and os.path.exists(args.torch)
    inputs = np.random.default_rng(args.seed).uniform(
        size=(max(batches), cfg.image_size, cfg.image_size, cfg.model.channels)).astype(np.float32)
    dev = jax.local_devices()[0]
    report = dict(config=args.config, image_size=cfg.image_size, dim=cfg.model.dim, steps=1,
                  backend=jax.default_backend(), device=getattr(dev, "device_kind", str(dev)),
                  n_devices=jax.local_device_count(), cpu_count=os.cpu_count(), jax_version=jax.__version__,
                  xla_flags=os.environ.get("XLA_FLAGS", ""), load_start=_load(),
                  command=" ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]), jax=[], reference=[],
                  ratio_vs_reference={})
    jb = JaxBench(cfg, dtypes, args.seed, _micro(args.micro_batch))
    # Per batch size: JAX then the reference right after, so both see about the same machine load.
    for b in batches:
        rows = []
        for dtype in dtypes:
            row, s_jax = jb.run(dtype, b, inputs, args.min_time)
            rows.append(row)
            if dtype == "float32":
                scores_f32 = s_jax
        report["jax"] += rows
        if not (use_ref and b in ref_batches):
            continue
        ref = bench_torch(args, cfg, jb.params, inputs, [b])
        if "error" in ref:
            print(f"reference not timed: {ref['error']}", flush=True)
            report["reference"].append(dict(batch=b, error=ref["error"]))
            continue
        r = ref["rows"][0]
        r.update(torch_version=ref["torch_version"], ddpm_version=ref["ddpm_version"], threads=ref["threads"])
        if "float32" in dtypes:
            s_ref = ref["scores"][str(b)]
            r["max_rel_diff_vs_jax_f32"] = float(np.max(np.abs(scores_f32 - s_ref) / np.abs(s_ref)))
        report["reference"].append(r)
        for j in rows:
            ratio = j["patches_per_s"] / r["patches_per_s"]
            report["ratio_vs_reference"][f"{j['dtype']}_batch{b}"] = ratio
            print(f"ratio jax {j['dtype']} / torch float32 at batch {b}: {ratio:.2f}x patches/s, "
                  f"{r['cpu_s_per_patch'] / j['cpu_s_per_patch']:.2f}x less CPU time per patch", flush=True)
    if not use_ref:
        report["reference"] = [dict(error=f"no torch interpreter at {args.torch!r}")]
    report["load_end"] = _load()
    text = json.dumps(report, indent=2, default=float)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text + "\n")
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--torch-worker":
        sys.exit(torch_worker(sys.argv[2]))
    sys.exit(run(add_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0])).parse_args()))

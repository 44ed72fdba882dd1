"""Training throughput of btd_jax against the PyTorch reference, side by side in one run; JSON out.

    python -m experiments.bench_train --config ct --batch_size 64 --steps 5 \
        --torch_python TORCH_ENV/bin/python --ddpm_path DDPM_1.8.3_DIR \
        --out experiments/results/bench_train_cpu.json

JAX: ``btd_jax.train.make_train_step`` (clip + Adam + EMA, one jitted call per optimiser step) on
every local device, timed by :func:`btd_jax.benchmarks.training.time_train_step` (also used by
``btd-jax bench --suite``). Reference: lucidrains ``GaussianDiffusion`` (1.8.3 for v1 configs, the installed
2.x for v2) + ``torch.optim.Adam`` + ``clip_grad_norm_`` + ``ema_pytorch.EMA`` -- one iteration of
the authors' ``Trainer`` loop -- under ``--torch_python``, run as a subprocess so the two
never share a process. Both get the same batch of ``batch_size`` images per optimiser step
(``--grad_accum`` micro-batches each, default 1). Wall times are medians of ``--steps`` timed steps
after ``--warmup`` untimed ones (compilation excluded and reported apart). The machine's load
average is recorded: on a shared CPU the numbers move with it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from experiments.paths import recorded

_TORCH_SCRIPT = r"""
import json, sys, time, statistics, torch
a = json.loads(sys.argv[1])
torch.manual_seed(0)
if a["threads"]:
    torch.set_num_threads(a["threads"])
from denoising_diffusion_pytorch import Unet, GaussianDiffusion
import denoising_diffusion_pytorch as ddp
from ema_pytorch import EMA
kw = dict(dim=a["dim"], dim_mults=tuple(a["dim_mults"]), channels=a["channels"])
if a["full_attn"] is not None:
    kw["full_attn"] = tuple(a["full_attn"])
model = Unet(**kw)
diff = GaussianDiffusion(model, image_size=a["size"], timesteps=a["timesteps"], objective=a["objective"],
                         beta_schedule=a["beta_schedule"])
opt = torch.optim.Adam(diff.parameters(), lr=a["lr"], betas=tuple(a["betas"]))
ema = EMA(diff, beta=a["ema_decay"], update_every=a["ema_every"])
x = torch.rand(a["accum"], a["batch"], a["channels"], a["size"], a["size"])
def step():
    for i in range(a["accum"]):
        loss = diff(x[i]) / a["accum"]
        loss.backward()
    torch.nn.utils.clip_grad_norm_(diff.parameters(), a["max_grad_norm"])
    opt.step(); opt.zero_grad(); ema.update()
    return loss.item()
for _ in range(a["warmup"]):
    step()
times = []
for _ in range(a["steps"]):
    t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
print(json.dumps({"version": ddp.__version__ if hasattr(ddp, "__version__") else "?", "torch": torch.__version__,
                  "threads": torch.get_num_threads(), "step_times_s": times,
                  "params": sum(p.numel() for p in model.parameters())}))
"""


def _loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def bench_jax(cfg, steps: int, warmup: int) -> dict:
    from btd_jax.benchmarks.training import time_train_step  # after XLA_FLAGS is set (main)

    return time_train_step(cfg, steps, warmup)


def bench_torch(cfg, steps: int, warmup: int, python: str, ddpm_path: str, threads: int) -> dict:
    m, d, tc = cfg.model, cfg.diffusion, cfg.train
    args = {"dim": m.dim, "dim_mults": list(m.dim_mults), "channels": m.channels,
            "full_attn": list(m.full_attn_per_stage) if m.version == "v1" else None,
            "size": cfg.image_size, "timesteps": d.timesteps, "objective": d.objective,
            "beta_schedule": d.beta_schedule, "lr": tc.learning_rate, "betas": list(tc.adam_betas),
            "ema_decay": tc.ema_decay, "ema_every": tc.ema_update_every, "max_grad_norm": tc.max_grad_norm,
            "batch": tc.batch_size, "accum": tc.grad_accum, "steps": steps, "warmup": warmup, "threads": threads}
    env = dict(os.environ)
    if m.version == "v1":  # the paper's generation lives in 1.8.3
        env["PYTHONPATH"] = os.pathsep.join(p for p in [ddpm_path, env.get("PYTHONPATH")] if p)
    out = subprocess.run([python, "-c", _TORCH_SCRIPT, json.dumps(args)], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"torch reference failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _summary(res: dict, images_per_step: int) -> dict:
    med = statistics.median(res["step_times_s"])
    return dict(res, median_step_s=med, steps_per_s=1.0 / med, images_per_s=images_per_step / med)


# XLA:CPU runs these U-Net convolutions faster through its own (Eigen) kernels than through the YNN
# "individual convolution" library fusion enabled by default in jaxlib 0.10 (measured ~1.5x on the
# ct model); keeping only YNN's dot fusion selects them. CPU-only flag; GPUs/TPUs ignore it.
CPU_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=dot"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="ct")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--grad_accum", type=int, default=1)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--steps", type=int, default=5, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--torch_python", "--torch", default="",
                   help="python with torch + denoising-diffusion-pytorch (needed unless --skip_torch)")
    p.add_argument("--ddpm_path", default="", help="unpacked denoising-diffusion-pytorch 1.8.3 (v1 configs)")
    p.add_argument("--torch_threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--skip_torch", action="store_true")
    p.add_argument("--out", default="experiments/results/bench_train.json")
    p.add_argument("--default_xla_cpu", action="store_true",
                   help=f"leave XLA:CPU at its defaults (else {CPU_CONV_FLAG} is added to XLA_FLAGS)")
    a = p.parse_args(argv)
    if not a.skip_torch and not a.torch_python:
        p.error("--torch_python is required unless --skip_torch")
    if not a.default_xla_cpu and "ynn_fusion_type" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + CPU_CONV_FLAG).strip()

    from btd_jax import configs

    cfg = configs.override(configs.get(a.config), {"train.batch_size": a.batch_size, "train.grad_accum": a.grad_accum,
                                                   "model.dtype": a.dtype})
    images = a.batch_size * a.grad_accum
    result = {"command": recorded(" ".join([os.path.basename(sys.executable), "-m experiments.bench_train"] + sys.argv[1:])),
              "config": a.config, "model": f"{cfg.model.version} dim={cfg.model.dim} {cfg.image_size}px",
              "batch_size": a.batch_size, "grad_accum": a.grad_accum, "images_per_step": images, "dtype": a.dtype,
              "xla_flags": os.environ.get("XLA_FLAGS", ""),
              "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "loadavg_before": _loadavg()}}
    result["btd_jax"] = _summary(bench_jax(cfg, a.steps, a.warmup), images)
    if not a.skip_torch:
        result["torch_reference"] = _summary(bench_torch(cfg, a.steps, a.warmup, a.torch_python, a.ddpm_path,
                                                         a.torch_threads), images)
        result["speedup"] = result["btd_jax"]["steps_per_s"] / result["torch_reference"]["steps_per_s"]
    result["host"]["loadavg_after"] = _loadavg()
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
    brief = {k: result[k] for k in ("config", "batch_size", "dtype") if k in result}
    brief.update({side: {k: round(result[side][k], 3) for k in ("steps_per_s", "images_per_s")}
                  for side in ("btd_jax", "torch_reference") if side in result})
    brief["speedup"] = round(result.get("speedup", float("nan")), 3)
    brief["loadavg"] = result["host"]["loadavg_before"]
    print(json.dumps(brief))
    return result


if __name__ == "__main__":
    main()

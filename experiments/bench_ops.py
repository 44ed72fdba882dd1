"""Forward+backward time of the U-Net's building blocks, btd_jax against the PyTorch reference; JSON out.

    python -m experiments.bench_ops --torch_python TORCH_ENV/bin/python --ddpm_path DDPM_1.8.3_DIR \
        --out experiments/results/bench_ops_cpu.json

Explains where whole-step training time goes (``bench_train.py``): for each block at the ``ct``
preset's three largest resolutions (batch ``--batch``, float32) it times ``grad(sum(block(x)**2))``
with respect to the input and the block's parameters. JAX side: the Flax modules of
``btd_jax.models.unet`` (the conv is the U-Net's ``nn.Conv``), jitted. Reference: the same blocks of
lucidrains denoising-diffusion-pytorch 1.8.3 (``nn.Conv2d``, ``nn.GroupNorm``, ``LinearAttention``,
``nn.SiLU``), run under ``--torch_python`` as a subprocess. Medians of ``--repeats`` calls after one warm-up.
It also times the whole ``ct`` U-Net gradient with all linear-attention or all GroupNorm layers made
the identity, which gives each kind of block's share of the step in context.
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

# (batch-independent) shapes: resolution, channels of the ct preset's levels 0-2.
LEVELS = ((96, 32), (48, 64), (24, 128))
OPS = ("conv3x3", "groupnorm8", "silu", "linear_attention")

_TORCH_SCRIPT = r"""
import json, statistics, sys, time, torch
a = json.loads(sys.argv[1])
if a["threads"]:
    torch.set_num_threads(a["threads"])
torch.manual_seed(0)
from denoising_diffusion_pytorch.denoising_diffusion_pytorch import LinearAttention
out = {}
for s, c in a["levels"]:
    mods = {"conv3x3": torch.nn.Conv2d(c, c, 3, padding=1), "groupnorm8": torch.nn.GroupNorm(8, c),
            "silu": torch.nn.SiLU(), "linear_attention": LinearAttention(c)}
    for name in a["ops"]:
        m = mods[name]
        x = torch.randn(a["batch"], c, s, s, requires_grad=True)
        def call():
            x.grad = None
            m.zero_grad(set_to_none=True)
            (m(x) ** 2).sum().backward()
        call()
        times = []
        for _ in range(a["repeats"]):
            t0 = time.perf_counter(); call(); times.append(time.perf_counter() - t0)
        out[f"{name}@{s}px_{c}ch"] = statistics.median(times) * 1e3
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "ms": out}))
"""


def bench_jax(batch: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp

    from btd_jax.models.unet import GroupNorm, LinearAttention, _conv

    out = {}
    for s, c in LEVELS:
        mods = {"conv3x3": _conv(c, 3, jnp.float32, "conv"), "groupnorm8": GroupNorm(8),
                "silu": None, "linear_attention": LinearAttention(4, 32, 0, jnp.float32)}
        x = jax.random.normal(jax.random.key(0), (batch, s, s, c))
        for name in OPS:
            m = mods[name]
            if m is None:
                params, fn = {}, lambda p, x: jnp.sum(jax.nn.silu(x) ** 2)
            else:
                params = m.init(jax.random.key(1), x)
                fn = (lambda m: lambda p, x: jnp.sum(m.apply(p, x) ** 2))(m)
            g = jax.jit(jax.grad(fn, argnums=(0, 1)))
            jax.block_until_ready(g(params, x))
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(g(params, x))
                times.append(time.perf_counter() - t0)
            out[f"{name}@{s}px_{c}ch"] = statistics.median(times) * 1e3
    return {"jax": jax.__version__, "backend": jax.default_backend(), "ms": out}


def ablate_unet(config: str, batch: int, repeats: int) -> dict:
    """ms per gradient of ``batch`` images for the full U-Net and with one kind of block made the identity.

    Each variant runs in a fresh subprocess (the ablation patches the module class)."""
    out = {}
    for mode in ("full", "no_linear_attention", "no_groupnorm"):
        code = _ABLATE.format(mode=mode, config=config, batch=batch, repeats=repeats)
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
        if r.returncode != 0:
            raise RuntimeError(f"ablation {mode} failed:\n{r.stderr[-3000:]}")
        out[mode] = float(r.stdout.strip().splitlines()[-1])
    return out


_ABLATE = """
import statistics, time
import jax
from btd_jax import configs
from btd_jax.models import unet
from btd_jax.train.step import accumulated_grads
if "{mode}" == "no_linear_attention":
    unet.LinearAttention.__call__ = lambda self, x: x
if "{mode}" == "no_groupnorm":
    unet.GroupNorm.__call__ = lambda self, x: x
cfg = configs.get("{config}")
params = unet.init_params(cfg.model, cfg.image_size, jax.random.key(0))
f = jax.jit(lambda p, x, t, n: accumulated_grads(cfg, p, x, t, n))
shape = (1, {batch}, cfg.image_size, cfg.image_size, cfg.model.channels)
x = jax.random.uniform(jax.random.key(1), shape) * 2 - 1
t = jax.random.randint(jax.random.key(2), shape[:2], 0, cfg.diffusion.timesteps)
n = jax.random.normal(jax.random.key(3), shape)
jax.block_until_ready(f(params, x, t, n))
times = []
for _ in range({repeats}):
    t0 = time.perf_counter(); jax.block_until_ready(f(params, x, t, n)); times.append(time.perf_counter() - t0)
print(statistics.median(times) * 1e3)
"""


def bench_torch(batch: int, repeats: int, python: str, ddpm_path: str, threads: int) -> dict:
    args = {"levels": LEVELS, "ops": OPS, "batch": batch, "repeats": repeats, "threads": threads}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in [ddpm_path, os.environ.get("PYTHONPATH")] if p))
    out = subprocess.run([python, "-c", _TORCH_SCRIPT, json.dumps(args)], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"torch reference failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--torch_python", "--torch", required=True, help="python with torch + denoising-diffusion-pytorch")
    p.add_argument("--ddpm_path", default="", help="unpacked denoising-diffusion-pytorch 1.8.3 put first on its path")
    p.add_argument("--torch_threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    p.add_argument("--out", default="experiments/results/bench_ops.json")
    a = p.parse_args(argv)
    from experiments.bench_train import CPU_CONV_FLAG  # the flag btd-jax train sets on CPU

    if "ynn_fusion_type" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + CPU_CONV_FLAG).strip()
    res = {"command": recorded(" ".join([os.path.basename(sys.executable), "-m experiments.bench_ops"] + sys.argv[1:])),
           "batch": a.batch, "xla_flags": os.environ["XLA_FLAGS"],
           "host": {"cpus": os.cpu_count(), "machine": platform.machine(), "loadavg_before": list(os.getloadavg())}}
    res["btd_jax"] = bench_jax(a.batch, a.repeats)
    res["torch_reference"] = bench_torch(a.batch, a.repeats, a.torch_python, a.ddpm_path, a.torch_threads)
    res["unet_gradient_ms"] = {"config": "ct", "batch": a.batch, **ablate_unet("ct", a.batch, 3)}
    res["host"]["loadavg_after"] = list(os.getloadavg())
    res["jax_over_torch_time"] = {k: round(v / res["torch_reference"]["ms"][k], 3)
                                  for k, v in res["btd_jax"]["ms"].items()}
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    for k, v in res["btd_jax"]["ms"].items():
        print(f"{k:32s} jax {v:8.1f} ms  torch {res['torch_reference']['ms'][k]:8.1f} ms  "
              f"ratio {res['jax_over_torch_time'][k]:.2f}")
    print("ct U-Net gradient, ms per batch:", res["unet_gradient_ms"])
    return res


if __name__ == "__main__":
    main()

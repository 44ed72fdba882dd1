"""The PyTorch reference for the scoring benchmark: lucidrains ``p_sample(x, 0)`` + per-image MSE.

:func:`bench_torch` (called from the JAX side, ``experiments/bench_throughput.py``) writes the
weights (converted with :func:`btd_jax.convert.to_torch_state_dict`), the inputs and a spec to a
temporary folder and runs :func:`worker` in a subprocess under ``--torch_python`` (an interpreter
with torch and denoising-diffusion-pytorch; ``--ddpm_path`` puts an unpacked copy, e.g. the paper's
1.8.3, first on its path). The worker times the reference with the same loop as the JAX side
(:mod:`btd_jax.timing`) under ``torch.inference_mode``, on the same inputs, batch and thread count.

The top level imports only the standard library: the worker runs as
``python -m experiments.torch_reference --worker DIR`` in an environment without JAX.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Dict, List

from btd_jax.timing import load_average, throughput, time_runs

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--torch_python", default="",
                   help="python with torch + denoising-diffusion-pytorch (default: none, the reference is skipped)")
    p.add_argument("--ddpm_path", default="", help="unpacked denoising-diffusion-pytorch put first on the reference's "
                   "PYTHONPATH (default: the one installed there)")
    p.add_argument("--ref_batches", default=None, help="batch sizes for the reference (default: same as JAX)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads (XLA uses all cores)")
    return p


def bench_torch(cfg: Any, params: Any, inputs: Any, batches: List[int], torch_python: str, ddpm_path: str = "",
                threads: int = 1, min_time: float = 3.0) -> Dict[str, Any]:
    """Times the reference on ``inputs`` (N, H, W, C) for each batch size; returns the worker's JSON
    ({"rows", "scores" {batch: (b,) float32}, versions, threads}) or {"error": last line of stderr}."""
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
                    batches=batches, threads=threads, min_time=min_time, dir=tmp)
        with open(os.path.join(tmp, "spec.json"), "w") as f:
            json.dump(spec, f)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ddpm_path, _ROOT) if p))
        cmd = [torch_python, "-W", "ignore", "-m", "experiments.torch_reference", "--worker", tmp]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        sys.stderr.write("".join(line + "\n" for line in proc.stdout.splitlines() if line.startswith("torch ")))
        if proc.returncode != 0:
            return dict(error=(proc.stderr.strip().splitlines() or ["failed"])[-1])
        with open(os.path.join(tmp, "result.json")) as f:
            res = json.load(f)
        for b in res.get("scores", {}):
            res["scores"][b] = np.asarray(res["scores"][b], np.float32)
        return res


def worker(tmp: str) -> int:
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
            row = dict(impl="torch", dtype="float32", load_before=load_average(),
                       **throughput(time_runs(run, spec["min_time"]), b))
        row["load_after"] = load_average()
        rows.append(row)
        print(f"torch float32  batch {b:4d}: {row['patches_per_s']:9.2f} patches/s "
              f"({row['cpu_s_per_patch']:.3f} CPU-s/patch, {row['runs']} runs, "
              f"load {row['load_before']})", flush=True)
    with open(os.path.join(tmp, "result.json"), "w") as f:
        json.dump(dict(rows=rows, scores=scores, torch_version=torch.__version__, ddpm_version=__version__,
                       threads=torch.get_num_threads()), f)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(worker(sys.argv[2]))
    sys.exit("usage: python -m experiments.torch_reference --worker DIR (started by experiments.bench_throughput)")

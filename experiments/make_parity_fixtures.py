"""Golden parity fixtures from the REAL lucidrains denoising-diffusion-pytorch (1.8.3 and 2.3.4).

Run with the PyTorch reference environment's interpreter (this script never imports btd_jax)::

    TORCH_ENV/bin/python -m experiments.make_parity_fixtures --ddpm183 DDPM_1.8.3_DIR [--out tests/fixtures]

The parent process starts one worker per generation: 1.8.3 ('v1', the BTD authors' version) with
the unpacked 1.8.3 wheel ``--ddpm183`` put first on ``PYTHONPATH``, and the installed 2.x ('v2').
Each worker checks the package version it imported, so a fixture can't silently come from the wrong one.

Fixture format: one ``tests/fixtures/parity_<name>.npz`` (compressed) per config. All image arrays are in
PyTorch layout NCHW, float32, unless stated.

  meta                 0-d str: JSON with generation ('v1'|'v2'), ddpm_version, torch_version, seed,
                       unet_kwargs (lucidrains Unet(...) args), diffusion_kwargs (GaussianDiffusion(...) args,
                       incl. image_size), btd_center (k of the central window)
  sd/<key>             the GaussianDiffusion state dict: keys ``model.*`` (U-Net weights, stored float16; the
                       values loaded into torch are exactly these, cast to float32) and the schedule buffers
                       ``betas``, ``alphas_cumprod``, ... (float32, as torch computed them)
  x01                  (B, C, H, W) input images in [0, 1]
  eps_x                (B, C, H, W) U-Net input for the eps checks (q_sample of normalize(x01) at t = T // 2)
  eps_t                (K,) int64 timesteps, incl. 0 and T - 1
  eps                  (K, B, C, H, W): model(eps_x, full(B, eps_t[k]))
  eps_mixed_t          (B,) int64 per-sample timesteps; eps_mixed (B, C, H, W) = model(eps_x, eps_mixed_t)
  loss_t, loss_noise   (B,) int64, (B, C, H, W); loss () = diffusion.p_losses(normalize(x01), loss_t, loss_noise)
                       (the objective target and loss_weight[t] weighting of the config; mean over everything)
  pmv_t                () int64; pmv_mean, pmv_log_variance, pmv_x_start = diffusion.p_mean_variance(
                       normalize(x01), full(B, pmv_t), clip_denoised=True) (log variance as (B, 1, 1, 1))
  p0_x_prev, p0_x_start  diffusion.p_sample(normalize(x01), 0) -> (x_prev, x_start); deterministic at t = 0
  btd_full             (B,) mean over (C, H, W) of (normalize(x01) - p0_x_prev) ** 2  (BTD score, d = 1)
  btd_center           (B,) the same over the central k x k window, rows/cols [(H-k)//2, (H-k)//2 + k)

Weights: seeded torch init, then every parameter perturbed (norm gains 1 + 0.25 z, biases + 0.1 z, weights +
0.2 z * std) so no gain is one and no bias is zero, then rounded to float16 (kept small and exactly storable).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np


# name -> (generation, Unet kwargs, GaussianDiffusion kwargs, batch)
CONFIGS = {
    # the paper's setting in miniature: 1 channel, sigmoid schedule, 1000 steps, pred_noise.
    "v1_s3_c1": ("v1", dict(dim=8, dim_mults=(1, 2, 4), channels=1, full_attn=(False, False, True)),
                 dict(image_size=32, timesteps=1000, objective="pred_noise", beta_schedule="sigmoid"), 2),
    "v1_s4_c3": ("v1", dict(dim=8, dim_mults=(1, 1, 2, 2), channels=3),
                 dict(image_size=16, timesteps=50, objective="pred_x0", beta_schedule="cosine"), 2),
    "v2_s3_c1": ("v2", dict(dim=8, dim_mults=(1, 2, 4), channels=1, attn_heads=2, attn_dim_head=8),
                 dict(image_size=16, timesteps=100, objective="pred_v", beta_schedule="linear"), 3),
    "v2_s4_c3": ("v2", dict(dim=8, dim_mults=(1, 1, 2, 2), channels=3),
                 dict(image_size=16, timesteps=1000, objective="pred_noise", beta_schedule="sigmoid",
                      min_snr_loss_weight=True, min_snr_gamma=5), 2),
}
EXPECTED_VERSION = {"v1": "1.8.3", "v2": "2.3.4"}


def _perturb_(model, gen) -> None:
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            z = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "g" or (leaf == "weight" and p.ndim == 1):  # RMSNorm / GroupNorm gains
                p.copy_(1.0 + 0.25 * z)
            elif leaf == "bias":
                p.add_(0.1 * z)
            else:
                p.add_(0.2 * z * (p.std() if p.numel() > 1 else 1.0))
            p.copy_(p.half().float())


def _t(n, value):
    import torch

    return torch.full((n,), int(value), dtype=torch.long)


def make_one(name: str, out_dir: str, seed: int) -> str:
    import torch
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet
    from denoising_diffusion_pytorch.version import __version__

    generation, unet_kw, diff_kw, b = CONFIGS[name]
    if __version__ != EXPECTED_VERSION[generation]:
        raise RuntimeError(f"{name}: expected denoising-diffusion-pytorch {EXPECTED_VERSION[generation]}, "
                           f"imported {__version__}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = Unet(**unet_kw)
    _perturb_(model, gen)
    diffusion = GaussianDiffusion(model, **diff_kw).eval()
    T, size, c = diffusion.num_timesteps, diff_kw["image_size"], unet_kw["channels"]

    rnd = lambda *s: torch.randn(*s, generator=gen)  # noqa: E731
    x01 = torch.rand(b, c, size, size, generator=gen)
    xn = diffusion.normalize(x01)
    out = {}
    with torch.no_grad():
        eps_x = diffusion.q_sample(xn, _t(b, T // 2), rnd(b, c, size, size))
        eps_t = np.array(sorted({0, 1, T // 2, T - 1}), np.int64)
        out["eps"] = np.stack([model(eps_x, _t(b, t)).numpy() for t in eps_t])
        eps_mixed_t = torch.randint(0, T, (b,), generator=gen)
        out["eps_mixed"] = model(eps_x, eps_mixed_t).numpy()
        loss_t = torch.randint(0, T, (b,), generator=gen)
        loss_noise = rnd(b, c, size, size)
        out["loss"] = np.float32(diffusion.p_losses(xn, loss_t, noise=loss_noise.clone()).item())
        pmv_t = T // 3
        mean, _, log_var, xs = diffusion.p_mean_variance(xn, _t(b, pmv_t), clip_denoised=True)
        out.update(pmv_mean=mean.numpy(), pmv_log_variance=log_var.numpy(), pmv_x_start=xs.numpy())
    x_prev, x_start = diffusion.p_sample(xn.clone(), 0)
    x_prev, x_start = x_prev.numpy(), x_start.numpy()
    k = size // 2
    lo = (size - k) // 2
    sq = (xn.numpy() - x_prev) ** 2
    meta = dict(generation=generation, ddpm_version=__version__, torch_version=torch.__version__, seed=seed,
                unet_kwargs=unet_kw, diffusion_kwargs=diff_kw, btd_center=k)
    sd = {}
    for key, v in diffusion.state_dict().items():
        v = v.numpy()
        sd[f"sd/{key}"] = v.astype(np.float16) if key.startswith("model.") else v
        assert not key.startswith("model.") or np.array_equal(sd[f"sd/{key}"].astype(np.float32), v), key
    path = os.path.join(out_dir, f"parity_{name}.npz")
    np.savez_compressed(
        path, meta=np.array(json.dumps(meta)), **sd, x01=x01.numpy(), eps_x=eps_x.numpy(), eps_t=eps_t,
        eps_mixed_t=eps_mixed_t.numpy(), loss_t=loss_t.numpy(), loss_noise=loss_noise.numpy(),
        pmv_t=np.int64(pmv_t), p0_x_prev=x_prev, p0_x_start=x_start,
        btd_full=sq.mean(axis=(1, 2, 3)), btd_center=sq[:, :, lo:lo + k, lo:lo + k].mean(axis=(1, 2, 3)), **out)
    clipped = float(np.mean(np.abs(x_start) >= 1.0))
    print(f"{name}: ddpm {__version__}, eps |max| {np.abs(out['eps']).max():.3g}, loss {out['loss']:.5g}, "
          f"x_start clipped {clipped:.1%} -> {path} ({os.path.getsize(path) / 1e3:.0f} kB)")
    return path


def main(argv=None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(here, "..", "tests", "fixtures"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ddpm183", default=None, help="unpacked denoising-diffusion-pytorch 1.8.3 wheel (required)")
    ap.add_argument("--worker", choices=("v1", "v2"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not args.worker and not args.ddpm183:
        ap.error("--ddpm183 (the unpacked denoising-diffusion-pytorch 1.8.3) is required")
    os.makedirs(args.out, exist_ok=True)
    if args.worker:
        for i, (name, (generation, *_)) in enumerate(CONFIGS.items()):
            if generation == args.worker:
                make_one(name, args.out, args.seed + i)
        return 0
    for generation in ("v1", "v2"):
        env = dict(os.environ)
        if generation == "v1":
            env["PYTHONPATH"] = os.pathsep.join(p for p in (args.ddpm183, env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", generation, "--out", args.out,
               "--seed", str(args.seed)]
        subprocess.run(cmd, env=env, check=True)
    total = sum(os.path.getsize(os.path.join(args.out, f)) for f in os.listdir(args.out) if f.startswith("parity_"))
    print(f"total parity fixtures: {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Live parity against whichever denoising-diffusion-pytorch imports (1.x -> 'v1', 2.x -> 'v2').

Skipped (with the reason) unless torch and denoising_diffusion_pytorch import; CI has neither and relies on
the golden files in tests/test_parity.py. The reference is found through environment variables only:
* ``BTD_TORCH_PYTHON=/path/to/python``: an interpreter (same Python version as this one) with torch and
  denoising-diffusion-pytorch; its site-packages are appended after this interpreter's, so JAX stays ours;
* ``BTD_DDPM183_PATH=/path/to/unpacked/1.8.3``: put first, so the run compares against 1.8.3.
Example: ``BTD_TORCH_PYTHON=TORCH_ENV/bin/python BTD_DDPM183_PATH=DDPM_1.8.3_DIR pytest -s tests/test_parity_live.py``
"""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest


def _add_reference_paths() -> None:
    exe = os.environ.get("BTD_TORCH_PYTHON")
    if exe:
        query = "import json, sysconfig; p = sysconfig.get_paths(); print(json.dumps([p['purelib'], p['platlib']]))"
        try:
            r = subprocess.run([exe, "-c", query], capture_output=True, text=True, timeout=120)
        except OSError as e:
            raise RuntimeError(f"BTD_TORCH_PYTHON={exe}: cannot run it: {e}") from e
        if r.returncode != 0:
            raise RuntimeError(f"BTD_TORCH_PYTHON={exe}: cannot find its site-packages: {r.stderr.strip()}")
        for path in json.loads(r.stdout):
            if path not in sys.path:
                sys.path.append(path)
    if os.environ.get("BTD_DDPM183_PATH"):
        sys.path.insert(0, os.environ["BTD_DDPM183_PATH"])


_add_reference_paths()
torch = pytest.importorskip("torch", reason="live parity needs PyTorch (set BTD_TORCH_PYTHON to a torch interpreter); "
                            "tests/test_parity.py checks the golden files")
ddp = pytest.importorskip("denoising_diffusion_pytorch",
                          reason="live parity needs denoising-diffusion-pytorch (1.8.3 or 2.x)")

from denoising_diffusion_pytorch.version import __version__ as DDP_VERSION  # noqa: E402

from btd_jax import convert, diffusion  # noqa: E402
from btd_jax.models.unet import Unet  # noqa: E402

GEN = "v1" if DDP_VERSION.startswith("1.") else "v2"
TOL = 1e-4

CONFIGS = {
    "s3_c1": (dict(dim=8, dim_mults=(1, 2, 4), channels=1, full_attn=(False, False, True)),
              dict(image_size=16, timesteps=200, objective="pred_noise", beta_schedule="sigmoid")),
    "s4_c3": (dict(dim=8, dim_mults=(1, 1, 2, 2), channels=3, full_attn=(False, False, False, True)),
              dict(image_size=16, timesteps=30, objective="pred_v", beta_schedule="cosine")),
}
if GEN == "v2":
    CONFIGS["s3_c1"][0].update(attn_heads=2, attn_dim_head=8)


def build(name, seed=0):
    unet_kw, diff_kw = CONFIGS[name]
    torch.manual_seed(seed)
    model = ddp.Unet(**unet_kw)
    with torch.no_grad():  # non-trivial norm gains and biases
        for pname, p in model.named_parameters():
            if pname.endswith(".g") or (pname.endswith(".weight") and p.ndim == 1):
                p.copy_(1 + 0.25 * torch.randn_like(p))
            elif pname.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    return ddp.GaussianDiffusion(model, **diff_kw).eval()


def to_nhwc(t):
    return jnp.asarray(t.detach().numpy().transpose(0, 2, 3, 1))


def to_nchw(a):
    return np.asarray(a).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_live_parity(name):
    dm = build(name)
    params, cfg = convert.from_torch_state_dict(dm.state_dict())  # torch tensors straight in
    assert cfg.model.version == GEN
    assert cfg.diffusion.beta_schedule == CONFIGS[name][1]["beta_schedule"]
    assert cfg.diffusion.objective == CONFIGS[name][1]["objective"]
    model = Unet.from_config(cfg.model)
    fn = jax.jit(lambda x, t: model.apply({"params": params}, x, t))
    sched = diffusion.make_schedule(cfg.diffusion)
    T, c, s = dm.num_timesteps, cfg.model.channels, CONFIGS[name][1]["image_size"]
    g = torch.Generator().manual_seed(1)
    x01 = torch.rand(2, c, s, s, generator=g)
    xn = dm.normalize(x01)
    errs = {}
    with torch.no_grad():
        for t in (0, T // 2, T - 1):
            tt = torch.full((2,), t, dtype=torch.long)
            errs[f"eps t={t}"] = np.abs(to_nchw(fn(to_nhwc(xn), jnp.full((2,), t, jnp.int32))) - dm.model(xn, tt).numpy()).max()
        lt, noise = torch.tensor([3, T - 2]), torch.randn(2, c, s, s, generator=g)
        ref_loss = dm.p_losses(xn, lt, noise=noise.clone()).item()
    x0, n, tj = to_nhwc(xn), to_nhwc(noise), jnp.asarray(lt.numpy(), jnp.int32)
    errs["loss"] = abs(float(diffusion.loss(sched, fn(diffusion.q_sample(sched, x0, tj, n), tj), x0, tj, n)) - ref_loss)
    ref_prev, ref_start = dm.p_sample(xn.clone(), 0)
    prev, start = diffusion.p_sample(sched, fn, x0, 0, None)
    errs["p_sample t=0"] = max(np.abs(to_nchw(prev) - ref_prev.numpy()).max(),
                               np.abs(to_nchw(start) - ref_start.numpy()).max())
    print(f"LIVE {DDP_VERSION} {GEN} {name}: " + ", ".join(f"{k} {v:.2g}" for k, v in errs.items()))
    assert max(errs.values()) < TOL, errs


def test_to_torch_state_dict_loads_strict_and_reproduces_torch():
    dm = build("s3_c1", seed=3)
    params, cfg = convert.from_torch_state_dict(dm.state_dict())
    sd = convert.to_torch_state_dict(params, cfg)
    fresh = build("s3_c1", seed=4)
    fresh.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    x = torch.randn(2, 1, 16, 16)
    t = torch.tensor([0, 7])
    with torch.no_grad():
        assert torch.equal(fresh.model(x, t), dm.model(x, t))
    for k, v in dm.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_load_torch_checkpoint_trainer_layout_and_ema(tmp_path):
    ema_pytorch = pytest.importorskip("ema_pytorch", reason="the Trainer layout test needs ema_pytorch")
    dm = build("s3_c1", seed=5)
    ema = ema_pytorch.EMA(dm, beta=0.995, update_every=10)
    with torch.no_grad():
        for p in ema.ema_model.parameters():
            p.add_(1.0)  # make the EMA weights distinguishable
    opt = torch.optim.Adam(dm.parameters(), lr=8e-6)
    path = tmp_path / "model-1.pt"
    torch.save({"step": 7, "model": dm.state_dict(), "opt": opt.state_dict(), "ema": ema.state_dict(),
                "scaler": None, "version": DDP_VERSION}, path)
    p_model, cfg = convert.load_torch_checkpoint(str(path))
    p_ema, _ = convert.load_torch_checkpoint(str(path), which="ema")
    w = dm.model.init_conv.weight.detach().numpy().transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(p_model["init_conv"]["kernel"], w)
    np.testing.assert_allclose(p_ema["init_conv"]["kernel"], w + 1.0, rtol=1e-6)
    bare = tmp_path / "bare.pt"
    torch.save(dm.state_dict(), bare)
    p_bare, _ = convert.load_torch_checkpoint(str(bare))
    np.testing.assert_array_equal(p_bare["init_conv"]["kernel"], w)
    with pytest.raises(ValueError, match="no ema_model"):
        convert.load_torch_checkpoint(str(bare), which="ema")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read as a PyTorch checkpoint"):
        convert.load_torch_checkpoint(str(tmp_path / "junk.pt"))

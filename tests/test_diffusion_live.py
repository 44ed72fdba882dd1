"""Live parity of btd_jax.diffusion with lucidrains' GaussianDiffusion (needs torch; skipped without it).

The reference runs in a subprocess (its interpreter may lack JAX) with a stand-in network whose output
is ``0.5 x + 0.01 t``, so that the schedule buffers, ``q_sample``, ``p_losses`` (also with offset
noise), ``model_predictions``, ``p_mean_variance``, the whole DDPM ``p_sample_loop`` and DDIM sampling
are compared with every random draw of the reference recorded and replayed here.

Which interpreter and which reference version:
* ``BTD_TORCH_PYTHON=/path/to/python`` (an interpreter with torch and denoising-diffusion-pytorch);
  otherwise this interpreter, if it has both;
* ``BTD_DDPM183_PATH=/path/to/unpacked/1.8.3`` adds a run against 1.8.3 (put first on PYTHONPATH).
Example: ``BTD_TORCH_PYTHON=TORCH_ENV/bin/python BTD_DDPM183_PATH=DDPM_1.8.3_DIR pytest tests/test_diffusion_live.py``
"""

import importlib.util
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from btd_jax import configs
from btd_jax import diffusion as D

CASES = [
    dict(beta_schedule="sigmoid", objective="pred_noise", timesteps=100, offset_noise_strength=0.1),
    dict(beta_schedule="cosine", objective="pred_v", timesteps=100, min_snr_loss_weight=True,
         schedule_kwargs={"s": 0.01}, ddim_sampling_eta=0.5),
    dict(beta_schedule="linear", objective="pred_x0", timesteps=100, min_snr_loss_weight=True, min_snr_gamma=2.0),
    dict(beta_schedule="sigmoid", objective="pred_noise", timesteps=1000,
         schedule_kwargs={"start": -2.0, "end": 2.0, "tau": 0.7}),
]
SAMPLING_STEPS = 10

_REFERENCE = r'''
import contextlib, inspect, json, sys
import numpy as np, torch
import denoising_diffusion_pytorch.denoising_diffusion_pytorch as ddp
from denoising_diffusion_pytorch.version import __version__

class StandIn(torch.nn.Module):
    channels, out_dim, self_condition, random_or_learned_sinusoidal_cond = 2, 2, False, False
    def forward(self, x, t, x_self_cond=None):
        return 0.5 * x + 0.01 * t.float().view(-1, 1, 1, 1)

rng = np.random.default_rng(0)
drawn = []

@contextlib.contextmanager
def recorded_noise():
    randn, randn_like = torch.randn, torch.randn_like
    def draw(shape):
        z = rng.standard_normal(tuple(shape)).astype(np.float32)
        drawn.append(z)
        return torch.from_numpy(z.copy())
    torch.randn = lambda *shape, **kw: draw(shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape)
    torch.randn_like = lambda x, **kw: draw(x.shape)
    try:
        yield
    finally:
        torch.randn, torch.randn_like = randn, randn_like

out = {"version": np.array(__version__)}
cases = json.loads(sys.argv[2])
for i, case in enumerate(cases):
    case = dict(case)
    kwargs = case.pop("schedule_kwargs", {})
    d = ddp.GaussianDiffusion(StandIn(), image_size=8, sampling_timesteps=case["timesteps"],
                              schedule_fn_kwargs=kwargs, **case)
    for name, buf in d.named_buffers():
        out[f"{i}|buf|{name}"] = buf.numpy()
    T = d.num_timesteps
    x0 = torch.from_numpy(rng.uniform(-1, 1, (3, 2, 8, 8)).astype(np.float32))
    noise = torch.from_numpy(rng.standard_normal((3, 2, 8, 8)).astype(np.float32))
    t = torch.tensor([0, T // 3, T - 1])
    out.update({f"{i}|x0": x0.numpy(), f"{i}|noise": noise.numpy(), f"{i}|t": t.numpy()})
    xt = d.q_sample(x0, t, noise.clone())
    out[f"{i}|q_sample"] = xt.numpy()
    with torch.no_grad():
        out[f"{i}|loss"] = d.p_losses(x0, t, noise.clone(), offset_noise_strength=0.0).numpy()
        if "loss_reduction" in inspect.signature(d.p_losses).parameters:
            out[f"{i}|loss_per_sample"] = d.p_losses(x0, t, noise.clone(), offset_noise_strength=0.0,
                                                     loss_reduction="none").numpy()
        drawn.clear()
        with recorded_noise():
            out[f"{i}|loss_offset"] = d.p_losses(x0, t, noise.clone(), offset_noise_strength=0.3).numpy()
        out[f"{i}|offset"] = drawn[0]
        for clip in (False, True):
            p = d.model_predictions(xt, t, clip_x_start=clip, rederive_pred_noise=clip)
            out[f"{i}|mp{int(clip)}|noise"], out[f"{i}|mp{int(clip)}|x0"] = p.pred_noise.numpy(), p.pred_x_start.numpy()
        mean, var, log_var, xs = d.p_mean_variance(xt, t)
        out.update({f"{i}|pmv|mean": mean.numpy(), f"{i}|pmv|log_var": log_var.numpy(), f"{i}|pmv|x0": xs.numpy()})
    if T <= 100:
        for name, fn in (("ddpm", d.p_sample_loop), ("ddim", d.ddim_sample)):
            if name == "ddim":
                d.sampling_timesteps = SAMPLING_STEPS
            drawn.clear()
            with recorded_noise():
                out[f"{i}|{name}"] = fn((3, 2, 8, 8)).numpy()
            out[f"{i}|{name}_noise"] = np.stack(drawn)
for T in (100, 250, 1000):  # the time grid of ddim_sample, for every number of sampling steps
    for S in range(1, T + 1):
        out[f"pairs|{T}|{S}"] = torch.linspace(-1, T - 1, steps=S + 1).int().numpy()
np.savez(sys.argv[1], **out)
'''.replace("SAMPLING_STEPS", str(SAMPLING_STEPS))


def _torch_python():
    exe = os.environ.get("BTD_TORCH_PYTHON")
    if exe:
        return exe
    pytest.importorskip("torch", reason="torch is not installed (set BTD_TORCH_PYTHON to a torch interpreter)")
    if importlib.util.find_spec("denoising_diffusion_pytorch") is None:
        pytest.skip("denoising-diffusion-pytorch is not installed; live parity skipped")
    return sys.executable


def _run_reference(tmp_path, version):
    exe = _torch_python()
    env = dict(os.environ)
    if version == "1.8.3":
        path = os.environ.get("BTD_DDPM183_PATH")
        if not path:
            pytest.skip("set BTD_DDPM183_PATH to an unpacked denoising-diffusion-pytorch 1.8.3 to compare with it")
        env["PYTHONPATH"] = os.pathsep.join([path, env.get("PYTHONPATH", "")])
    script, result = tmp_path / "reference.py", tmp_path / "reference.npz"
    script.write_text(_REFERENCE)
    proc = subprocess.run([exe, str(script), str(result), json.dumps(CASES)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = dict(np.load(result))
    if version == "1.8.3":
        assert str(ref["version"]) == "1.8.3"
    return ref


def _nhwc(a):
    return np.transpose(np.asarray(a), (0, 2, 3, 1))


def _model_fn(x, t):
    return 0.5 * x + 0.01 * t.astype(x.dtype).reshape(-1, 1, 1, 1)


@pytest.mark.parametrize("version", ["installed", "1.8.3"])
def test_live_parity(tmp_path, version):
    ref = _run_reference(tmp_path, version)
    _check_time_pairs(ref)
    for i, case in enumerate(CASES):
        case = dict(case)
        kwargs = tuple(case.pop("schedule_kwargs", {}).items())
        eta = case.pop("ddim_sampling_eta", 0.0)
        cfg = configs.DiffusionConfig(image_size=8, sampling_timesteps=case["timesteps"], schedule_kwargs=kwargs,
                                      ddim_sampling_eta=eta, **case)
        sched = D.make_schedule(cfg)
        for name in D.BUFFER_NAMES:  # float64 maths cast to float32: bit for bit
            np.testing.assert_array_equal(np.asarray(getattr(sched, name)), ref[f"{i}|buf|{name}"], err_msg=f"{i} {name}")
        x0, noise, t = _nhwc(ref[f"{i}|x0"]), _nhwc(ref[f"{i}|noise"]), ref[f"{i}|t"]
        xt = D.q_sample(sched, x0, t, noise)
        np.testing.assert_allclose(xt, _nhwc(ref[f"{i}|q_sample"]), rtol=1e-6, atol=1e-6)
        out = _model_fn(xt, jnp.asarray(t))
        np.testing.assert_allclose(D.loss(sched, out, x0, t, noise), ref[f"{i}|loss"], rtol=1e-5)
        if f"{i}|loss_per_sample" in ref:
            np.testing.assert_allclose(D.loss(sched, out, x0, t, noise, reduce=False), ref[f"{i}|loss_per_sample"],
                                       rtol=1e-5)
        off_noise = noise + 0.3 * ref[f"{i}|offset"][:, None, None, :]
        out_off = _model_fn(D.q_sample(sched, x0, t, off_noise), jnp.asarray(t))
        np.testing.assert_allclose(D.loss(sched, out_off, x0, t, off_noise), ref[f"{i}|loss_offset"], rtol=1e-5)
        for clip in (0, 1):
            pn, px = D.model_predictions(sched, out, xt, t, bool(clip), bool(clip))
            np.testing.assert_allclose(px, _nhwc(ref[f"{i}|mp{clip}|x0"]), rtol=1e-5, atol=1e-5)
            # at t = 0 noise derived from x_start divides by sqrt(1/abar - 1) ~ 0.003: compare t > 0 tightly
            np.testing.assert_allclose(pn[1:], _nhwc(ref[f"{i}|mp{clip}|noise"])[1:], rtol=1e-4, atol=1e-4)
        mean, _, log_var, xs = D.p_mean_variance(sched, out, xt, t)
        np.testing.assert_allclose(mean, _nhwc(ref[f"{i}|pmv|mean"]), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(xs, _nhwc(ref[f"{i}|pmv|x0"]), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(np.asarray(log_var).ravel(), ref[f"{i}|pmv|log_var"].ravel(), rtol=1e-6)
        if f"{i}|ddpm" in ref:
            _check_ddpm_loop(sched, ref, i)
            _check_ddim_loop(sched, ref, i, eta)


def _check_time_pairs(ref):
    for key in (k for k in ref if k.startswith("pairs|")):
        _, T, S = key.split("|")
        times = ref[key][::-1]
        np.testing.assert_array_equal(D.ddim_time_pairs(int(T), int(S)), np.stack([times[:-1], times[1:]], 1),
                                      err_msg=key)


def _check_ddpm_loop(sched, ref, i):
    z = [_nhwc(a) for a in ref[f"{i}|ddpm_noise"]]
    assert len(z) == sched.num_timesteps  # the initial image plus one draw for each t > 0
    x = jnp.asarray(z[0])
    for k, t in enumerate(reversed(range(sched.num_timesteps))):
        x, _ = D.p_sample(sched, _model_fn, x, t, None, noise=z[k + 1] if t > 0 else None)
    np.testing.assert_allclose(D.unnormalize(x), _nhwc(ref[f"{i}|ddpm"]), rtol=1e-4, atol=1e-4)


def _check_ddim_loop(sched, ref, i, eta):
    z = [_nhwc(a) for a in ref[f"{i}|ddim_noise"]]
    pairs = D.ddim_time_pairs(sched.num_timesteps, SAMPLING_STEPS)
    assert len(z) == len(pairs)  # the initial image plus one draw per step except the last
    x = jnp.asarray(z[0])
    for k, (t, t_next) in enumerate(pairs):
        x, _ = D.ddim_step(sched, _model_fn, x, int(t), int(t_next), None, eta=eta,
                           noise=z[k + 1] if t_next >= 0 else None)
    np.testing.assert_allclose(D.unnormalize(x), _nhwc(ref[f"{i}|ddim"]), rtol=1e-4, atol=1e-4)

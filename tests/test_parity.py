"""Parity with the real lucidrains denoising-diffusion-pytorch (1.8.3 = 'v1', 2.3.4 = 'v2'), torch-free.

Golden files: ``tests/fixtures/parity_*.npz``, made by ``experiments/make_parity_fixtures.py`` (format in its
docstring; arrays NCHW). Each is converted with ``btd_jax.convert`` and run through the Flax U-Net and
``btd_jax.diffusion`` in float32 at highest matmul precision. Run with ``-s`` to see the max errors.
"""

import functools
import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from btd_jax import convert, diffusion
from btd_jax.models.unet import Unet

FIXTURES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "fixtures", "parity_*.npz")))
NAMES = [os.path.basename(f)[len("parity_"):-len(".npz")] for f in FIXTURES]
TOL = 1e-4


def nhwc(a):
    return jnp.asarray(np.asarray(a).transpose(0, 2, 3, 1))


def nchw(a):
    return np.asarray(a).transpose(0, 3, 1, 2)


@functools.lru_cache(maxsize=None)
def load(name):
    """(fixture arrays, meta, params, cfg, jitted model_fn(x_nhwc, t), schedule) for one golden file."""
    z = dict(np.load(FIXTURES[NAMES.index(name)]))
    meta = json.loads(str(z["meta"]))
    sd = {k[3:]: v for k, v in z.items() if k.startswith("sd/")}
    params, cfg = convert.from_torch_state_dict(sd)
    model = Unet.from_config(cfg.model)
    apply = jax.jit(lambda p, x, t: model.apply({"params": p}, x, t))
    return z, meta, params, cfg, functools.partial(apply, params), diffusion.make_schedule(cfg.diffusion)


def report(name, what, err):
    print(f"PARITY {name} {what}: max abs err {err:.3g}")
    assert err < TOL, f"{name} {what}: max abs error {err:.3g} >= {TOL}"


def test_fixtures_present_and_small():
    assert {"v1_s3_c1", "v1_s4_c3", "v2_s3_c1", "v2_s4_c3"} <= set(NAMES)
    assert sum(os.path.getsize(f) for f in FIXTURES) < 2_000_000


@pytest.mark.parametrize("name", NAMES)
def test_converted_config_matches_reference(name):
    z, meta, params, cfg, _, _ = load(name)
    uk, dk = meta["unet_kwargs"], meta["diffusion_kwargs"]
    assert meta["ddpm_version"] == {"v1": "1.8.3", "v2": "2.3.4"}[meta["generation"]]
    m = cfg.model
    assert m.version == meta["generation"]
    assert (m.dim, tuple(m.dim_mults), m.channels) == (uk["dim"], tuple(uk["dim_mults"]), uk["channels"])
    assert m.full_attn_per_stage == tuple(uk.get("full_attn") or (False,) * (len(m.dim_mults) - 1) + (True,))
    assert (m.attn_heads, m.attn_dim_head) == (uk.get("attn_heads", 4), uk.get("attn_dim_head", 32))
    d = cfg.diffusion
    assert (d.beta_schedule, d.timesteps, d.objective) == (dk["beta_schedule"], dk["timesteps"], dk["objective"])
    assert d.min_snr_loss_weight == dk.get("min_snr_loss_weight", False)
    # the rebuilt schedule equals the stored buffers
    for k, v in diffusion.make_schedule(d).buffers().items():
        np.testing.assert_allclose(v, z[f"sd/{k}"], rtol=1e-5, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("name", NAMES)
def test_eps_parity(name):
    z, _, _, _, model_fn, _ = load(name)
    x = nhwc(z["eps_x"])
    errs = [np.abs(nchw(model_fn(x, jnp.full((x.shape[0],), t, jnp.int32))) - e).max()
            for t, e in zip(z["eps_t"], z["eps"])]
    assert 0 in z["eps_t"] and int(z["eps_t"].max()) == int(z["sd/betas"].shape[0]) - 1
    errs.append(np.abs(nchw(model_fn(x, jnp.asarray(z["eps_mixed_t"], jnp.int32))) - z["eps_mixed"]).max())
    report(name, "eps", float(max(errs)))


@pytest.mark.parametrize("name", NAMES)
def test_loss_parity(name):
    z, _, _, _, model_fn, sched = load(name)
    x0 = diffusion.normalize(nhwc(z["x01"]))
    t = jnp.asarray(z["loss_t"], jnp.int32)
    noise = nhwc(z["loss_noise"])
    out = model_fn(diffusion.q_sample(sched, x0, t, noise), t)
    report(name, "loss", abs(float(diffusion.loss(sched, out, x0, t, noise)) - float(z["loss"])))


@pytest.mark.parametrize("name", NAMES)
def test_p_mean_variance_parity(name):
    z, _, _, _, model_fn, sched = load(name)
    x = diffusion.normalize(nhwc(z["x01"]))
    t = jnp.full((x.shape[0],), int(z["pmv_t"]), jnp.int32)
    mean, _, log_var, x_start = diffusion.p_mean_variance(sched, model_fn(x, t), x, t, clip_denoised=True)
    err = max(np.abs(nchw(mean) - z["pmv_mean"]).max(), np.abs(nchw(x_start) - z["pmv_x_start"]).max(),
              np.abs(np.asarray(log_var).reshape(-1) - z["pmv_log_variance"].reshape(-1)).max())
    report(name, "p_mean_variance", float(err))


@pytest.mark.parametrize("name", NAMES)
def test_p_sample_t0_and_btd_score_parity(name):
    z, meta, _, _, model_fn, sched = load(name)
    x = diffusion.normalize(nhwc(z["x01"]))
    x_prev, x_start = diffusion.p_sample(sched, model_fn, x, 0, None)
    assert float(jnp.abs(x_start).max()) <= 1.0  # clip_denoised
    report(name, "p_sample(t=0)", float(max(np.abs(nchw(x_prev) - z["p0_x_prev"]).max(),
                                            np.abs(nchw(x_start) - z["p0_x_start"]).max())))
    sq = np.asarray(jnp.square(x - x_prev))
    k = meta["btd_center"]
    lo = (sq.shape[1] - k) // 2
    np.testing.assert_allclose(sq.mean(axis=(1, 2, 3)), z["btd_full"], atol=TOL)
    np.testing.assert_allclose(sq[:, lo:lo + k, lo:lo + k].mean(axis=(1, 2, 3)), z["btd_center"], atol=TOL)


@pytest.mark.parametrize("name", ["v2_s3_c1"])  # v1 through Scorer: tests/test_convert.py (CLI test)
def test_btd_score_api_matches_reference(name):
    """The public scorer on the converted weights reproduces the reference BTD scores (d = 1)."""
    import dataclasses

    from btd_jax import score

    z, meta, params, cfg, _, _ = load(name)
    size = z["x01"].shape[-1]
    cfg = dataclasses.replace(cfg, diffusion=dataclasses.replace(cfg.diffusion, image_size=size))
    images = np.asarray(z["x01"]).transpose(0, 2, 3, 1)
    full = score.btd_score(params, images, cfg, steps=1)
    center = score.btd_score(params, images, cfg, steps=1, center=meta["btd_center"])
    np.testing.assert_allclose(full, z["btd_full"], atol=TOL)
    np.testing.assert_allclose(center, z["btd_center"], atol=TOL)

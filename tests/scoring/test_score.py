"""Tests for btd_jax.score (btd_jax.scoring) on the 'tiny' preset (16 px) with random weights and 8 fake CPU devices."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from btd_jax import configs, diffusion, parallel, score
from btd_jax.data.errors import DataError
from btd_jax.models.unet import Unet
from btd_jax.scoring import stream

CFG = configs.get("tiny")
SIZE = CFG.image_size


@pytest.fixture
def params(tiny_params):
    return tiny_params


def _images(n, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, SIZE, SIZE)).astype(np.float32)


def _mesh1():
    return parallel.make_mesh(jax.devices()[:1])


def _reference_d1_maps(params, x01):
    """d = 1 by hand: eps at t = 0, clipped x0, posterior mean; (x - x_1)^2 in [-1, 1] units."""
    sched = diffusion.make_schedule(CFG.diffusion)
    x = jnp.asarray(x01[..., None] * 2 - 1)
    eps = Unet.from_config(CFG.model).apply({"params": params}, x, jnp.zeros((len(x),), jnp.int32))
    x0 = jnp.clip(sched.sqrt_recip_alphas_cumprod[0] * x - sched.sqrt_recipm1_alphas_cumprod[0] * eps, -1, 1)
    x1 = sched.posterior_mean_coef1[0] * x0 + sched.posterior_mean_coef2[0] * x
    return np.asarray(jnp.square(x - x1)[..., 0])


def test_d1_matches_hand_computation(params):
    x = _images(5)
    ref = _reference_d1_maps(params, x)
    np.testing.assert_allclose(score.btd_score(params, x, CFG), ref.mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(score.residual_map(params, x, CFG), ref, rtol=1e-5, atol=1e-7)
    k, r = 8, (SIZE - 8) // 2
    np.testing.assert_allclose(score.btd_score(params, x, CFG, center=k),
                               ref[:, r:r + k, r:r + k].mean(axis=(1, 2)), rtol=1e-5)
    # (N,H,W,1) input is the same as (N,H,W)
    np.testing.assert_allclose(score.btd_score(params, x[..., None], CFG), ref.mean(axis=(1, 2)), rtol=1e-5)


@pytest.mark.parametrize("n", [1, 7, 37])
def test_one_vs_eight_devices(params, n):
    x = _images(n, seed=n)
    s8 = score.btd_score(params, x, CFG, batch_size=16)
    s1 = score.btd_score(params, x, CFG, batch_size=16, mesh=_mesh1())
    assert s8.shape == s1.shape == (n,)
    assert np.all(s8 > 0)
    np.testing.assert_allclose(s8, s1, rtol=1e-5)


def test_stochastic_independent_of_devices_and_chunks(params):
    x, key = _images(37, seed=3), jax.random.key(42)
    a = score.btd_score(params, x, CFG, steps=3, key=key, batch_size=16)
    b = score.btd_score(params, x, CFG, steps=3, key=key, batch_size=8, mesh=_mesh1())
    np.testing.assert_allclose(a, b, rtol=1e-5)
    # image i's noise depends only on (key, i): scoring a prefix gives the same prefix of scores
    np.testing.assert_allclose(score.btd_score(params, x[:7], CFG, steps=3, key=key, batch_size=16), a[:7], rtol=1e-5)
    c = score.btd_score(params, x, CFG, steps=3, key=jax.random.key(43), batch_size=16)
    assert not np.allclose(a, c)
    with pytest.raises(ValueError, match="key"):
        score.btd_score(params, x, CFG, steps=3)
    with pytest.raises(ValueError, match="key"):
        score.btd_score(params, x, CFG, start_t=5)


def test_ddim_d1_equals_ddpm_and_is_deterministic(params):
    x = _images(9, seed=4)
    np.testing.assert_allclose(score.btd_score(params, x, CFG, sampler="ddim"), score.btd_score(params, x, CFG),
                               rtol=1e-5)
    d3 = score.btd_score(params, x, CFG, sampler="ddim", steps=3)  # eta = 0: no key needed
    assert d3.shape == (9,) and np.all(np.isfinite(d3))
    np.testing.assert_array_equal(d3, score.btd_score(params, x, CFG, sampler="ddim", steps=3))


def test_reductions(params):
    x = _images(6, seed=5)
    maps = score.residual_map(params, x, CFG)
    flat = maps.reshape(6, -1)
    np.testing.assert_allclose(score.btd_score(params, x, CFG, reduction="max"), flat.max(1), rtol=1e-5)
    np.testing.assert_allclose(score.btd_score(params, x, CFG, reduction="percentile:99"),
                               np.percentile(flat, 99, axis=1), rtol=1e-5)
    p99_cfg = dataclasses.replace(CFG, score=dataclasses.replace(CFG.score, reduction="percentile:99"))
    np.testing.assert_allclose(score.btd_score(params, x, p99_cfg), np.percentile(flat, 99, axis=1), rtol=1e-5)
    np.testing.assert_allclose(score.Scorer.from_params(params, p99_cfg).score(x, reduction="mean"),
                               flat.mean(1), rtol=1e-5)  # an explicit reduction beats the config's
    with pytest.raises(ValueError, match="reduction"):
        score.parse_reduction("median")
    with pytest.raises(ValueError, match="reduction"):
        score.parse_reduction("percentile:101")


def test_no_retrace_across_calls_and_n(params):
    scorer = score.Scorer.from_params(params, CFG)
    scorer.score(_images(20), batch_size=16, center=4)  # compile once for this option set
    before = score.trace_count()
    for n in (16, 17, 37, 50):
        out = scorer.score(_images(n, seed=n), batch_size=16, center=4)
        assert out.shape == (n,)
    assert score.trace_count() == before


def test_scorer_matches_functional_and_clip(params):
    x = _images(11, seed=6)
    scorer = score.Scorer.from_params(params, CFG)
    np.testing.assert_allclose(scorer.score(x, batch_size=8), score.btd_score(params, x, CFG), rtol=1e-6)
    s, m = scorer.score_and_maps(x, center=8)
    np.testing.assert_allclose(m, scorer.residual_map(x), rtol=1e-6)
    np.testing.assert_allclose(s, score.btd_score(params, x, CFG, center=8), rtol=1e-6)
    over = x * 1.5 - 0.25
    np.testing.assert_allclose(scorer.score(over, clip_inputs=True), scorer.score(np.clip(over, 0, 1)), rtol=1e-6)
    with pytest.warns(DeprecationWarning, match="clip_inputs"):
        np.testing.assert_allclose(scorer.score(over, clip=True), scorer.score(np.clip(over, 0, 1)), rtol=1e-6)


@pytest.mark.parametrize("bad,match", [
    (np.full((3, SIZE, SIZE), np.nan, np.float32), r"images: contains NaN or inf \(first at index 0\)"),
    (np.concatenate([np.zeros((2, SIZE, SIZE)), np.full((1, SIZE, SIZE), 2.0)]).astype(np.float32),
     r"images: values .* outside \[0, 1\] \(first at index 2\)"),
    (np.zeros((2, 8, 8), np.float32), r"8x8 but the model \(tiny\) expects 16x16"),
    (np.zeros((2, SIZE, SIZE, 3), np.float32), "3 channels"),
    (np.zeros((SIZE, SIZE), np.float32), r"expected patches of shape \(N, H, W\)"),
    (np.zeros((0, SIZE, SIZE), np.float32), "no patches"),
])
def test_bad_input_is_one_clear_dataerror(params, bad, match):
    scorer = score.Scorer.from_params(params, CFG)
    with pytest.raises(DataError, match=match):
        scorer.score(bad)


def test_bad_options(params):
    x = _images(2)
    with pytest.raises(ValueError, match="center"):
        score.btd_score(params, x, CFG, center=SIZE + 1)
    with pytest.raises(ValueError, match="sampler"):
        score.btd_score(params, x, CFG, sampler="euler")
    with pytest.raises(ValueError, match="steps"):
        score.btd_score(params, x, CFG, steps=CFG.diffusion.timesteps + 1, key=jax.random.key(0))


def test_chunk_size_buckets():
    assert stream._chunk_size(1, 256, 8) == 8
    assert stream._chunk_size(9, 256, 8) == 16
    assert stream._chunk_size(37, 256, 8) == 64
    assert stream._chunk_size(1000, 256, 8) == 256
    assert stream._chunk_size(1000, 20, 8) == 24
    assert stream._chunk_size(5, 20, 8) == 8


# ----------------------------------------------------------------------------- parity with PyTorch

def _fixture_paths():
    import glob
    import os

    return sorted(glob.glob(os.path.join(os.path.dirname(__file__), os.pardir, "fixtures", "parity_*.npz")))


@pytest.mark.parametrize("path", _fixture_paths(), ids=lambda p: p.rsplit("parity_", 1)[-1][:-4])
def test_parity_with_lucidrains_btd_d1(path):
    """d = 1 scores equal the reference's (lucidrains p_sample at t = 0) to 1e-5 relative."""
    import dataclasses
    import json

    from btd_jax import convert

    f = np.load(path)
    meta = json.loads(str(f["meta"]))
    base = configs.get("ct")
    base = dataclasses.replace(base, diffusion=dataclasses.replace(
        base.diffusion, image_size=meta["diffusion_kwargs"]["image_size"]))
    sd = {k[3:]: f[k] for k in f.files if k.startswith("sd/")}
    params, cfg = convert.from_torch_state_dict(sd, base=base)
    x01 = np.transpose(f["x01"], (0, 2, 3, 1))  # NCHW -> NHWC
    # One compiled pass: centre-window scores on device, whole-patch scores from the maps.
    scores, maps = score.Scorer.from_params(params, cfg).score_and_maps(x01, center=meta["btd_center"])
    np.testing.assert_allclose(scores, f["btd_center"], rtol=1e-5)
    np.testing.assert_allclose(maps.mean(axis=(1, 2)), f["btd_full"], rtol=1e-5)
    x_prev = np.transpose(f["p0_x_prev"], (0, 2, 3, 1))
    np.testing.assert_allclose(maps, ((x01 * 2 - 1 - x_prev) ** 2).mean(-1), rtol=1e-4, atol=1e-7)


def test_micro_batch_variants_agree(params):
    x = _images(16, seed=7)
    whole = score.btd_score(params, x, CFG, micro_batch=None, center=8)
    for m in (1, 2, 3):  # 3 does not divide the 2 rows per device: falls back to gcd
        np.testing.assert_allclose(score.btd_score(params, x, CFG, micro_batch=m, center=8), whole, rtol=1e-5)
    assert stream.resolve_micro_batch(3, 8) == 1 and stream.resolve_micro_batch(4, 8) == 4
    assert stream.resolve_micro_batch(None, 8) is None
    with pytest.raises(ValueError, match="micro_batch"):
        stream.resolve_micro_batch(0, 8)

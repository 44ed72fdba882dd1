"""btd_jax.diffusion against closed forms and a float64 NumPy reference of lucidrains' maths."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from btd_jax import configs
from btd_jax import diffusion as D

T = 100
SHAPE = (3, 4, 4, 2)  # N, H, W, C


def _sched(schedule="sigmoid", objective="pred_noise", timesteps=T, **kw):
    return D.make_schedule(configs.DiffusionConfig(image_size=4, timesteps=timesteps, sampling_timesteps=timesteps,
                                                   beta_schedule=schedule, objective=objective, **kw))


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-1, 1, SHAPE).astype(np.float32)
    noise = rng.standard_normal(SHAPE).astype(np.float32)
    out = rng.standard_normal(SHAPE).astype(np.float32)
    t = np.array([0, 17, T - 1], np.int32)
    return x0, noise, out, t


def _np(sched, name, t):
    """Buffer ``name`` at t, float64, shaped (N,1,1,1)."""
    return np.asarray(getattr(sched, name), np.float64)[t].reshape(-1, 1, 1, 1)


# ----------------------------------------------------------------------------- schedules

def test_linear_endpoints_scale_with_timesteps():
    np.testing.assert_allclose(D.beta_schedule("linear", 1000)[[0, -1]], [1e-4, 0.02], rtol=1e-12)
    b = D.beta_schedule("linear", 100)
    np.testing.assert_allclose(b[[0, -1]], [1e-3, 0.2], rtol=1e-12)
    np.testing.assert_allclose(np.diff(b), np.full(99, (0.2 - 1e-3) / 99), rtol=1e-9)


def test_cosine_alphas_cumprod_closed_form():
    s = 0.008
    bufs = D.schedule_buffers(D.beta_schedule("cosine", 1000))
    f = lambda t: np.cos((t / 1000 + s) / (1 + s) * math.pi / 2) ** 2
    t = np.arange(1, 1001)
    # every beta but the last few is below the 0.999 clip, so the product telescopes to f(t) / f(0)
    unclipped = bufs["betas"] < 0.999
    assert unclipped[:-1].all()
    np.testing.assert_allclose(bufs["alphas_cumprod"][unclipped], (f(t) / f(0))[unclipped], rtol=1e-9)


def test_sigmoid_schedule_monotone_and_kwargs():
    b = D.beta_schedule("sigmoid", 1000)
    assert np.all(np.diff(b[:-1]) > 0) and b[-1] == pytest.approx(0.999)
    b2 = D.beta_schedule("sigmoid", 1000, start=-2.0, end=2.0, tau=0.7)
    assert not np.allclose(b, b2)
    sched = _sched("sigmoid", schedule_kwargs=(("start", -2.0), ("end", 2.0), ("tau", 0.7)), timesteps=1000)
    np.testing.assert_array_equal(np.asarray(sched.betas), b2.astype(np.float32))
    c = _sched("cosine", schedule_kwargs=(("s", 0.02),))
    np.testing.assert_array_equal(np.asarray(c.betas), D.cosine_beta_schedule(T, s=0.02).astype(np.float32))


@pytest.mark.parametrize("name", D.BETA_SCHEDULES)
@pytest.mark.parametrize("timesteps", [50, 1000])
def test_buffers_dtype_range_and_posterior_at_zero(name, timesteps):
    sched = _sched(name, timesteps=timesteps)
    assert sched.num_timesteps == timesteps and sched.objective == "pred_noise"
    leaves = jax.tree_util.tree_leaves(sched)
    assert len(leaves) == len(D.BUFFER_NAMES) == 13
    assert all(x.dtype == jnp.float32 and x.shape == (timesteps,) for x in leaves)
    ac = np.asarray(sched.alphas_cumprod)
    assert np.all((ac > 0) & (ac < 1)) and np.all(np.diff(ac) < 0)
    assert sched.alphas_cumprod_prev[0] == 1.0
    np.testing.assert_array_equal(sched.alphas_cumprod_prev[1:], sched.alphas_cumprod[:-1])
    # t = 0: the posterior mean is exactly x_0 and its variance 0 (log clipped at 1e-20)
    assert float(sched.posterior_mean_coef1[0]) == 1.0 and float(sched.posterior_mean_coef2[0]) == 0.0
    assert float(sched.posterior_variance[0]) == 0.0
    assert float(sched.posterior_log_variance_clipped[0]) == np.float32(np.log(1e-20))


def test_buffers_match_float64_formulas():
    b = D.beta_schedule("sigmoid", T)
    ac = np.cumprod(1 - b)
    ac_prev = np.concatenate([[1.0], ac[:-1]])
    sched = _sched("sigmoid")
    want = {
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1 / ac - 1),
        "log_one_minus_alphas_cumprod": np.log(1 - ac),
        "posterior_variance": b * (1 - ac_prev) / (1 - ac),
        "posterior_mean_coef2": (1 - ac_prev) * np.sqrt(1 - b) / (1 - ac),
    }
    for k, v in want.items():
        np.testing.assert_array_equal(np.asarray(getattr(sched, k)), v.astype(np.float32), err_msg=k)


@pytest.mark.parametrize("objective", D.OBJECTIVES)
@pytest.mark.parametrize("min_snr", [False, True])
def test_loss_weights(objective, min_snr):
    sched = _sched("cosine", objective, min_snr_loss_weight=min_snr, min_snr_gamma=3.0)
    ac = np.cumprod(1 - D.beta_schedule("cosine", T))
    snr = ac / (1 - ac)
    clipped = np.minimum(snr, 3.0) if min_snr else snr
    want = {"pred_noise": clipped / snr, "pred_x0": clipped, "pred_v": clipped / (snr + 1)}[objective]
    np.testing.assert_allclose(np.asarray(sched.loss_weight), want, rtol=1e-6)
    if not min_snr and objective == "pred_noise":
        np.testing.assert_array_equal(np.asarray(sched.loss_weight), 1.0)


def test_schedule_is_a_pytree_through_jit():
    sched = _sched()
    f = jax.jit(lambda s: s.betas.sum() + s.num_timesteps)
    assert float(f(sched)) == pytest.approx(float(np.asarray(sched.betas, np.float64).sum()) + T, rel=1e-6)
    buffers = sched.buffers()
    assert set(buffers) == set(D.BUFFER_NAMES) and buffers["betas"].dtype == np.float32


# ----------------------------------------------------------------------------- forward process and parameterisations

def test_q_sample_matches_numpy_and_round_trips():
    sched = _sched()
    x0, noise, _, t = _arrays()
    xt = jax.jit(D.q_sample)(sched, x0, t, noise)
    want = _np(sched, "sqrt_alphas_cumprod", t) * x0 + _np(sched, "sqrt_one_minus_alphas_cumprod", t) * noise
    np.testing.assert_allclose(xt, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(D.predict_start_from_noise(sched, xt, t, noise), x0, atol=2e-4)
    # (at t = 0 the noise is scaled by sqrt(1 - abar_0) ~ 0.003, so recover it from t > 0 only)
    np.testing.assert_allclose(D.predict_noise_from_start(sched, xt[1:], t[1:], x0[1:]), noise[1:], atol=2e-4)
    # scalar t broadcasts over the batch
    np.testing.assert_allclose(D.q_sample(sched, x0, 17, noise), D.q_sample(sched, x0, np.full(3, 17), noise))


def test_v_parameterisation_identities():
    sched = _sched("cosine", "pred_v")
    x0, noise, _, t = _arrays(1)
    xt = D.q_sample(sched, x0, t, noise)
    v = D.predict_v(sched, x0, t, noise)
    np.testing.assert_allclose(D.predict_start_from_v(sched, xt, t, v), x0, atol=1e-5)
    # |x_t|^2 + |v|^2 = |x0|^2 + |noise|^2 (a rotation by angle phi_t)
    np.testing.assert_allclose(np.square(xt) + np.square(v), np.square(x0) + np.square(noise), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("objective", D.OBJECTIVES)
def test_model_predictions_recover_truth(objective):
    sched = _sched("sigmoid", objective)
    x0, noise, _, t = _arrays(2)
    t = np.array([3, 17, 60], np.int32)  # away from t = 0 where noise is unidentifiable
    xt = D.q_sample(sched, x0, t, noise)
    target = D.training_target(sched, x0, t, noise)
    pred_noise, x_start = D.model_predictions(sched, target, xt, t, False)
    np.testing.assert_allclose(x_start, x0, atol=5e-4)
    np.testing.assert_allclose(pred_noise, noise, atol=5e-3)


def test_model_predictions_clipping_and_rederive():
    sched = _sched()
    x0, noise, out, t = _arrays(3)
    xt = D.q_sample(sched, 3 * x0, t, noise)  # x_start outside [-1, 1]
    raw_noise, raw_x0 = D.model_predictions(sched, out, xt, t, clip_x_start=False)
    n1, c1 = D.model_predictions(sched, out, xt, t, clip_x_start=True)
    n2, c2 = D.model_predictions(sched, out, xt, t, clip_x_start=True, rederive_pred_noise=True)
    np.testing.assert_array_equal(c1, np.clip(raw_x0, -1, 1))
    np.testing.assert_array_equal(n1, out)  # 1.8.3 default: the predicted noise is kept
    assert np.abs(np.asarray(c1)).max() <= 1.0 and np.abs(np.asarray(raw_x0)).max() > 1.0
    want = (_np(sched, "sqrt_recip_alphas_cumprod", t) * xt - np.asarray(c2, np.float64)) / _np(
        sched, "sqrt_recipm1_alphas_cumprod", t)
    np.testing.assert_allclose(n2[1:], want[1:], rtol=1e-5, atol=1e-5)


def test_p_mean_variance_matches_numpy():
    sched = _sched("linear", timesteps=T)
    x0, noise, out, t = _arrays(4)
    xt = D.q_sample(sched, x0, t, noise)
    mean, var, log_var, xs = jax.jit(D.p_mean_variance, static_argnums=4)(sched, out, xt, t, True)
    xt64 = np.asarray(xt, np.float64)
    x_start = np.clip(_np(sched, "sqrt_recip_alphas_cumprod", t) * xt64
                      - _np(sched, "sqrt_recipm1_alphas_cumprod", t) * out, -1, 1)
    want = _np(sched, "posterior_mean_coef1", t) * x_start + _np(sched, "posterior_mean_coef2", t) * xt64
    np.testing.assert_allclose(xs, x_start, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mean, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(var).ravel(), np.asarray(sched.posterior_variance)[t])
    np.testing.assert_array_equal(np.asarray(log_var).ravel(), np.asarray(sched.posterior_log_variance_clipped)[t])


# ----------------------------------------------------------------------------- reverse steps

def _model_fn(x, t):
    """A stand-in network whose output depends on both x and t."""
    return 0.5 * x + 0.01 * t.astype(x.dtype).reshape(-1, 1, 1, 1)


def test_p_sample_at_t0_is_the_clipped_x0_prediction():
    sched = _sched()
    x0, _, _, _ = _arrays(5)
    x = 1.5 * x0
    x_prev, x_start = D.p_sample(sched, _model_fn, x, 0, None)
    want = np.clip(_np(sched, "sqrt_recip_alphas_cumprod", [0]) * x
                   - _np(sched, "sqrt_recipm1_alphas_cumprod", [0]) * np.asarray(_model_fn(x, jnp.zeros(3, jnp.int32))),
                   -1, 1)
    np.testing.assert_array_equal(x_prev, x_start)  # coefficients 1 and 0: exactly the x0 prediction
    np.testing.assert_allclose(x_prev, want, rtol=1e-6, atol=1e-6)
    # a key changes nothing at t = 0, also with t traced
    x_key, xs_key = jax.jit(lambda x, t, k: D.p_sample(sched, _model_fn, x, t, k))(x, 0, jax.random.key(1))
    np.testing.assert_array_equal(x_key, xs_key)
    np.testing.assert_allclose(x_key, x_prev, rtol=1e-6, atol=1e-7)  # jit may fuse differently (1 ulp)


def test_p_sample_noise_scaling_and_gating():
    sched = _sched()
    x0, _, _, _ = _arrays(6)
    key = jax.random.key(7)
    t = np.array([0, 5, 40], np.int32)
    x_prev, _ = D.p_sample(sched, _model_fn, x0, t, key)
    mean, _, log_var, _ = D.p_mean_variance(sched, _model_fn(x0, jnp.asarray(t)), x0, t)
    z = np.asarray(jax.random.normal(key, SHAPE))
    want = np.asarray(mean) + np.exp(0.5 * np.asarray(log_var, np.float64)) * z * (t > 0).reshape(-1, 1, 1, 1)
    np.testing.assert_allclose(x_prev, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(x_prev[0], mean[0])
    # explicit noise replaces the draw
    x_n, _ = D.p_sample(sched, _model_fn, x0, t, None, noise=z)
    np.testing.assert_allclose(x_n, x_prev, rtol=1e-6, atol=1e-6)


def test_p_sample_in_fori_loop_matches_python_loop():
    sched = _sched()
    x0, _, _, _ = _arrays(7)
    d, key = 4, jax.random.key(3)
    keys = jax.random.split(key, d)

    def body(i, x):
        t = d - 1 - i
        return D.p_sample(sched, _model_fn, x, t, keys[i])[0]

    looped = jax.jit(lambda x: jax.lax.fori_loop(0, d, body, x))(x0)
    x = jnp.asarray(x0)
    for i in range(d):
        x = D.p_sample(sched, _model_fn, x, d - 1 - i, keys[i])[0]
    np.testing.assert_allclose(looped, x, rtol=1e-5, atol=1e-6)
    assert not np.allclose(looped, D.p_sample(sched, _model_fn, x0, 0, None)[0])


def test_ddim_time_pairs():
    np.testing.assert_array_equal(D.ddim_time_pairs(10, 10), np.stack([np.arange(9, -1, -1), np.arange(8, -2, -1)], 1))
    pairs = D.ddim_time_pairs(100, 10)
    np.testing.assert_array_equal(pairs[:, 0], np.arange(99, 0, -10))
    np.testing.assert_array_equal(pairs[:, 1], [89, 79, 69, 59, 49, 39, 29, 19, 9, -1])
    assert pairs.dtype == np.int32 and D.ddim_time_pairs(1000, 250).shape == (250, 2)


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_step_matches_numpy(eta):
    sched = _sched("cosine", "pred_v")
    x0, _, _, _ = _arrays(8)
    key = jax.random.key(11)
    t, t_prev = 40, 30
    x_prev, x_start = jax.jit(lambda x, k: D.ddim_step(sched, _model_fn, x, t, t_prev, k, eta=eta))(x0, key)
    tv = np.full(3, t)
    pred_noise, xs = D.model_predictions(sched, _model_fn(x0, jnp.asarray(tv)), x0, tv, True, True)
    a, an = float(sched.alphas_cumprod[t]), float(sched.alphas_cumprod[t_prev])
    sigma = eta * math.sqrt((1 - a / an) * (1 - an) / (1 - a))
    z = np.asarray(jax.random.normal(key, SHAPE))
    want = np.asarray(xs) * math.sqrt(an) + math.sqrt(1 - an - sigma ** 2) * np.asarray(pred_noise) + sigma * z
    np.testing.assert_allclose(x_prev, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x_start, xs, rtol=1e-6, atol=1e-6)
    if eta == 0.0:
        np.testing.assert_allclose(D.ddim_step(sched, _model_fn, x0, t, t_prev, None)[0], x_prev, rtol=1e-5, atol=1e-6)
    last, xs0 = D.ddim_step(sched, _model_fn, x0, 5, -1, key, eta=eta)
    np.testing.assert_array_equal(last, xs0)


# ----------------------------------------------------------------------------- training

@pytest.mark.parametrize("objective", D.OBJECTIVES)
@pytest.mark.parametrize("min_snr", [False, True])
def test_loss_matches_numpy(objective, min_snr):
    sched = _sched("sigmoid", objective, min_snr_loss_weight=min_snr)
    x0, noise, out, t = _arrays(9)
    tgt = {"pred_noise": noise.astype(np.float64), "pred_x0": x0.astype(np.float64),
           "pred_v": _np(sched, "sqrt_alphas_cumprod", t) * noise - _np(sched, "sqrt_one_minus_alphas_cumprod", t) * x0}
    per = np.mean((out - tgt[objective]) ** 2, axis=(1, 2, 3)) * np.asarray(sched.loss_weight, np.float64)[t]
    got = jax.jit(D.loss, static_argnames="reduce")(sched, out, x0, t, noise, reduce=False)
    assert got.shape == (3,) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, per, rtol=1e-5)
    np.testing.assert_allclose(D.loss(sched, out, x0, t, noise), per.mean(), rtol=1e-5)
    assert float(D.loss(sched, D.training_target(sched, x0, t, noise), x0, t, noise)) == 0.0


def test_loss_gradient_and_bfloat16_output():
    sched = _sched()
    x0, noise, out, t = _arrays(10)
    g = jax.grad(lambda o: D.loss(sched, o, x0, t, noise))(jnp.asarray(out))
    np.testing.assert_allclose(g, 2 * (out - noise) / out.size, rtol=1e-5, atol=1e-7)
    lb = D.loss(sched, jnp.asarray(out, jnp.bfloat16), x0, t, noise)
    assert lb.dtype == jnp.float32 and float(lb) == pytest.approx(float(D.loss(sched, out, x0, t, noise)), rel=1e-2)


def test_sample_noise_offset():
    key = jax.random.key(0)
    shape = (4, 8, 8, 3)
    np.testing.assert_array_equal(D.sample_noise(key, shape), jax.random.normal(key, shape))
    noise = D.sample_noise(key, shape, 0.1)
    k_noise, k_offset = jax.random.split(key)
    offset = np.asarray(noise) - np.asarray(jax.random.normal(k_noise, shape))
    np.testing.assert_allclose(offset, np.broadcast_to(offset[:, :1, :1, :], shape), atol=1e-6)
    np.testing.assert_allclose(offset[:, 0, 0, :], 0.1 * np.asarray(jax.random.normal(k_offset, (4, 1, 1, 3)))[:, 0, 0],
                               rtol=1e-5, atol=1e-6)
    assert noise.dtype == jnp.float32 and jax.jit(D.sample_noise, static_argnums=(1, 2))(key, shape, 0.1).shape == shape


# ----------------------------------------------------------------------------- timestep sampling

@pytest.mark.parametrize("dist", D.T_DISTRIBUTIONS)
def test_sample_timesteps_histogram_matches_probs(dist):
    n, tt = 40_000, 50
    probs = D.timestep_probs(tt, dist, t_max=5, uniform_frac=0.3)
    assert probs.shape == (tt,) and probs.sum() == pytest.approx(1.0, abs=1e-12)
    f = jax.jit(D.sample_timesteps, static_argnums=(1, 2, 3, 4))
    ts = f(jax.random.key(2), n, tt, dist, 5, 0.3)
    assert ts.dtype == jnp.int32 and ts.shape == (n,)
    assert int(ts.min()) >= 0 and int(ts.max()) < tt
    hist = np.bincount(np.asarray(ts), minlength=tt) / n
    assert 0.5 * np.abs(hist - probs).sum() < 0.02  # total variation
    assert np.all(hist[probs == 0] == 0)


def test_timestep_probs_closed_forms():
    np.testing.assert_allclose(D.timestep_probs(10, "uniform"), 0.1)
    np.testing.assert_allclose(D.timestep_probs(10, "truncated", t_max=4), [0.25] * 4 + [0] * 6)
    np.testing.assert_allclose(D.timestep_probs(10, "truncated", t_max=40), 0.1)  # t_max capped at T
    np.testing.assert_allclose(D.timestep_probs(10, "mixture", t_max=2, uniform_frac=0.2), [0.42, 0.42] + [0.02] * 8)
    low = D.timestep_probs(1000, "lowt", t_max=10)
    np.testing.assert_allclose(low[1:] / low[:-1], math.exp(-0.1), rtol=1e-12)
    assert low[:10].sum() == pytest.approx(1 - math.exp(-1), rel=1e-9)


# ----------------------------------------------------------------------------- errors

def test_errors_name_valid_options():
    with pytest.raises(ValueError, match="valid schedules are linear, cosine, sigmoid"):
        D.beta_schedule("quadratic", 10)
    with pytest.raises(ValueError, match=r"unknown arguments \['s'\]"):
        D.beta_schedule("sigmoid", 10, s=0.1)
    with pytest.raises(ValueError, match="valid objectives are pred_noise, pred_x0, pred_v"):
        D.Schedule.from_betas(D.beta_schedule("cosine", 10), "pred_eps")
    with pytest.raises(ValueError, match=r"betas must lie in \(0, 1\)"):
        D.Schedule.from_betas(D.beta_schedule("linear", 10))
    with pytest.raises(ValueError, match="valid ones are uniform, truncated, mixture, lowt"):
        D.sample_timesteps(jax.random.key(0), 4, 10, "beta")
    with pytest.raises(ValueError, match="t_max must be >= 1"):
        D.timestep_probs(10, "truncated", t_max=0)
    sched = _sched()
    x0, noise, out, _ = _arrays()
    with pytest.raises(ValueError, match=r"t must lie in \[0, 100\)"):
        D.q_sample(sched, x0, np.array([0, 1, 100]), noise)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 100\)"):
        D.p_sample(sched, _model_fn, x0, -1, None)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        D.p_sample(sched, _model_fn, x0, 3, None)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        D.ddim_step(sched, _model_fn, x0, 3, 1, None, eta=0.5)
    with pytest.raises(ValueError, match="sampling_timesteps"):
        D.ddim_time_pairs(10, 11)
    bad = dataclasses.replace(sched, objective="nope")
    with pytest.raises(ValueError, match="valid objectives"):
        D.loss(bad, out, x0, 1, noise)


def test_normalize_round_trip():
    x = np.linspace(0, 1, 11, dtype=np.float32)
    np.testing.assert_allclose(D.normalize(x)[[0, -1]], [-1, 1])
    np.testing.assert_allclose(D.unnormalize(D.normalize(x)), x, atol=1e-7)

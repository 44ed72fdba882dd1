"""Training with low-noise-focused timestep distributions: laws, sampling, and tiny runs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from btd_jax import configs, diffusion, parallel
from btd_jax.train.state import create_train_state
from btd_jax.train.step import make_train_step, step_noise

DISTS = ("uniform", "truncated", "mixture", "lowt")


def _numpy_probs(T, dist, t_max, frac):
    """Independent NumPy statement of the four laws."""
    t = np.arange(T)
    tm = min(t_max, T)
    if dist == "uniform":
        return np.full(T, 1 / T)
    trunc = (t < tm) / tm
    if dist == "truncated":
        return trunc
    if dist == "mixture":
        return frac / T + (1 - frac) * trunc
    w = np.exp(-t / t_max)
    return w / w.sum()


@pytest.mark.parametrize("dist", DISTS)
def test_timestep_probs_exact(dist):
    p = diffusion.timestep_probs(20, dist, t_max=4, uniform_frac=0.3)
    np.testing.assert_allclose(p, _numpy_probs(20, dist, 4, 0.3), rtol=1e-12)
    assert p.sum() == pytest.approx(1.0)


def test_timestep_probs_hand_values():
    np.testing.assert_allclose(diffusion.timestep_probs(4, "truncated", t_max=2), [0.5, 0.5, 0, 0])
    np.testing.assert_allclose(diffusion.timestep_probs(4, "mixture", t_max=2, uniform_frac=0.2),
                               [0.45, 0.45, 0.05, 0.05])
    lowt = diffusion.timestep_probs(3, "lowt", t_max=1)
    np.testing.assert_allclose(lowt, np.exp(-np.arange(3)) / np.exp(-np.arange(3)).sum())
    # t_max above T is capped: truncated becomes uniform.
    np.testing.assert_allclose(diffusion.timestep_probs(5, "truncated", t_max=50), np.full(5, 0.2))


@pytest.mark.parametrize("dist", DISTS)
def test_sample_timesteps_follows_probs(dist):
    T, n = 30, 60000
    t = np.asarray(jax.jit(lambda k: diffusion.sample_timesteps(k, n, T, dist, 5, 0.25))(jax.random.key(0)))
    assert t.dtype == np.int32 and t.shape == (n,) and t.min() >= 0 and t.max() < T
    freq = np.bincount(t, minlength=T) / n
    p = diffusion.timestep_probs(T, dist, 5, 0.25)
    # 5 binomial standard errors per bin
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-12)
    if dist == "truncated":
        assert t.max() < 5


def test_bad_distribution_names_the_choices():
    with pytest.raises(ValueError, match="lowt"):
        diffusion.timestep_probs(10, "beta")
    with pytest.raises(ValueError, match="t_max"):
        diffusion.sample_timesteps(jax.random.key(0), 4, 10, "truncated", t_max=0)
    with pytest.raises(ValueError, match="t_sampling"):
        configs.TrainConfig(t_sampling="beta")


@pytest.mark.parametrize("objective", diffusion.OBJECTIVES)
def test_low_t_loss_is_finite_for_every_objective(objective):
    """Small t are where pred_x0 / pred_v targets and min-SNR weights are most extreme."""
    cfg = dataclasses.replace(configs.get("tiny").diffusion, objective=objective, min_snr_loss_weight=True)
    sched = diffusion.make_schedule(cfg)
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x0 = jax.random.uniform(k1, (8, 4, 4, 1), minval=-1, maxval=1)
    noise = jax.random.normal(k2, x0.shape)
    t = diffusion.sample_timesteps(k3, 8, cfg.timesteps, "truncated", t_max=3)
    target = diffusion.training_target(sched, x0, t, noise)
    per = diffusion.loss(sched, target + 0.1, x0, t, noise, reduce=False)
    w = np.asarray(sched.loss_weight)[np.asarray(t)]
    np.testing.assert_allclose(per, 0.01 * w, rtol=1e-5)
    assert np.all(np.isfinite(per))


def test_step_noise_uses_the_configured_distribution():
    base = configs.get("tiny")
    for dist, bound in (("truncated", 3), ("uniform", base.diffusion.timesteps)):
        cfg = configs.override(base, {"train.t_sampling": dist, "train.t_max": 3})
        t, noise, _ = step_noise(cfg, jax.random.key(1), accum=2, batch=256)
        t = np.asarray(t)
        assert t.shape == (2, 256) and noise.shape == (2, 256, 16, 16, 1)
        assert t.max() < bound
    assert t.max() >= 3  # uniform reaches beyond t_max


# uniform trains in every other training test (the tiny preset's law) and lowt in the demo's tests
@pytest.mark.parametrize("dist", ("truncated", "mixture"))
def test_tiny_training_run_with_each_schedule(dist):
    cfg = configs.override(configs.get("tiny"), {"train.t_sampling": dist, "train.t_max": 5,
                                                 "train.mixture_uniform_frac": 0.5})
    mesh = parallel.make_mesh(jax.local_devices()[:1])  # the law is under test here, not the sharding
    state = create_train_state(cfg, jax.random.PRNGKey(0), mesh)
    p0 = jax.tree.map(np.asarray, state.params)
    step = make_train_step(cfg, mesh)
    images = jax.random.uniform(jax.random.key(2), (1, cfg.train.batch_size, 16, 16, 1))
    losses = []
    for _ in range(3):
        state, m = step(state, images)
        losses.append(float(m["loss"]))
    assert int(state.step) == 3
    assert all(np.isfinite(losses))
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), state.params, p0)
    assert max(jax.tree.leaves(moved)) > 0


def test_fast_presets_change_only_the_timestep_law():
    fast = {n: configs.get(n) for n in configs.NAMES if n.endswith("-fast")}
    assert set(fast) == {"ct-fast", "mri-fast", "ct8-fast"}
    for name, cfg in fast.items():
        b = configs.get(name[:-len("-fast")])
        assert cfg.name == name and b.train.t_sampling == "uniform"  # the paper's presets keep uniform
        for field, value in configs.FAST_TRAIN.items():
            assert getattr(cfg.train, field) == value
        assert dataclasses.replace(cfg, name=b.name, score=b.score, train=dataclasses.replace(
            cfg.train, **{f: getattr(b.train, f) for f in configs.FAST_TRAIN})) == b
        assert cfg.score == dataclasses.replace(b.score, **configs.FAST_SCORE)
        assert configs.from_json(configs.to_json(cfg)) == cfg

"""Method-specific details: OOD-DDPM level/DDIM bookkeeping, SpliceBuster residuals, SpliceRadar filters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from btd_jax import diffusion
from btd_jax.baselines import ood_ddpm, splicebuster, spliceradar


def test_ood_levels_and_ddim_paths_match_lucidrains_pairs():
    ts = ood_ddpm.level_timesteps((0.1, 0.1, 0.5), 100, recon_steps=3)
    np.testing.assert_array_equal(ts, [10, 50])
    paths = ood_ddpm.ddim_paths(np.array([29]), 2)
    # lucidrains' DDIM with 30 timesteps and 2 sampling steps: 29 -> 14 -> -1.
    np.testing.assert_array_equal(paths[:, 0], np.r_[diffusion.ddim_time_pairs(30, 2)[:, 0], -1])
    with pytest.raises(ValueError, match="fractions"):
        ood_ddpm.level_timesteps((1.5,), 100)


def test_ood_one_step_reconstruction_is_the_x0_prediction():
    sched = diffusion.make_schedule(ood_ddpm.TINY.diffusion)
    x01 = jnp.full((2, 4, 4, 1), 0.25)
    zero_eps = lambda x, t: jnp.zeros_like(x)  # noqa: E731  a network that predicts no noise
    key = jax.random.PRNGKey(0)
    index = jnp.array([5, 9])
    noise_all = ood_ddpm.level_noise(key, index, 2, x01.shape[1:])
    errs = ood_ddpm.recon_errors(zero_eps, sched, x01, noise_all, np.array([10, 50]), 1)
    # x0_hat = x_t / sqrt(abar_t), clipped; error vs x0 in [-1,1] units.
    for li, t in enumerate([10, 50]):
        # Patch 5's noise at level li is keyed on (level, patch index), not on its batch row.
        np.testing.assert_array_equal(
            noise_all[li * 2], jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, li), 5), (4, 4, 1)))
        noise = noise_all[li * 2:(li + 1) * 2]
        x0 = x01 * 2 - 1
        xt = sched.sqrt_alphas_cumprod[t] * x0 + sched.sqrt_one_minus_alphas_cumprod[t] * noise
        want = jnp.mean((jnp.clip(xt / sched.sqrt_alphas_cumprod[t], -1, 1) - x0) ** 2, axis=(1, 2, 3))
        np.testing.assert_allclose(errs[:, li], want, rtol=1e-5)


def test_ood_reuses_given_params_and_fixes_the_window(task):
    train, test, _ = task
    cfg = ood_ddpm.TINY
    from btd_jax.models import unet
    params = unet.init_params(cfg.model, 16, jax.random.PRNGKey(1))
    state = ood_ddpm.fit(train[:16], cfg, 0, params=params)
    assert state.arrays["val_mean"].shape == (3,)
    z = ood_ddpm.score(state, train[:16])
    assert abs(z.mean()) < 1.0  # the z-scores are centred on real data
    with pytest.raises(ValueError, match="fitted with center=None"):
        ood_ddpm.score(state, test[:2], center=8)


def test_splicebuster_residual_and_codes():
    x = np.random.default_rng(0).random((1, 8, 8))
    rh, rv = splicebuster.residuals(x)
    assert rh[0, 2, 3] == pytest.approx(x[0, 2, 2] - 3 * x[0, 2, 3] + 3 * x[0, 2, 4] - x[0, 2, 5])
    assert rv[0, 2, 3] == pytest.approx(x[0, 1, 3] - 3 * x[0, 2, 3] + 3 * x[0, 3, 3] - x[0, 4, 3])
    codes = splicebuster.cooccurrence_codes(rh, 0.5, axis=2)
    assert codes.min() >= 0 and codes.max() < 81
    hist = splicebuster.window_histograms(x, 0.5, 4, 2)
    assert hist.shape == (1, 9, 81)
    np.testing.assert_allclose(hist.sum(-1), 1.0)
    assert splicebuster.centre_windows(8, 4, 2, 4).tolist() == [False] * 4 + [True] + [False] * 4


def test_spliceradar_constrained_filter_and_tamper():
    conv = spliceradar.ConstrainedConv(2)
    x = jnp.full((1, 8, 8, 1), 0.7)
    params = conv.init(jax.random.PRNGKey(0), x)
    # Centre tap -1 and the rest summing to 1: a flat image has zero residual everywhere.
    np.testing.assert_allclose(conv.apply(params, x), 0.0, atol=1e-5)
    batch = jnp.full((64, 16, 16, 1), 0.5)
    out, mask = spliceradar.tamper(batch, jax.random.PRNGKey(0), 0.05)
    changed = np.asarray(jnp.abs(out - batch)[..., 0] > 0)
    assert not np.any(changed & (np.asarray(mask) == 0))  # only masked pixels change
    assert 0.2 < np.mean(np.asarray(mask).max(axis=(1, 2))) < 0.8  # about half of the batch tampered


import jax
import numpy as np
import pytest

from btd_jax import configs, diffusion, parallel
from btd_jax.attacks import repaint
from btd_jax.data.errors import DataError
from btd_jax.models.unet import init_params

DDPM = repaint.RePaintOptions(sampler="ddpm", steps=6, jump_length=2, resamplings=2)


def test_jump_schedule_is_lugmayrs_path():
    pairs = repaint.jump_schedule(6, 2, 2)
    path = [int(pairs[0, 0])] + pairs[:, 1].tolist()
    # jumps back up by 2 after reaching 2 and 0 (multiples of j below S - j), once each (r - 1 = 1)
    assert path == [5, 4, 3, 2, 3, 4, 3, 2, 1, 0, 1, 2, 1, 0, -1]
    assert np.all(np.abs(pairs[:, 1] - pairs[:, 0]) == 1)
    assert repaint.jump_schedule(4, 2, 1)[:, 1].tolist() == [2, 1, 0, -1]  # r = 1: plain sampling


def test_time_grid_and_respaced_schedule_keep_abar(tiny):
    _, cfg = tiny
    taus = repaint.time_grid(cfg.diffusion.timesteps, 6)
    assert taus.tolist() == [0, 20, 40, 59, 79, 99]
    assert repaint.time_grid(100, 4, t_start=30).tolist() == [0, 10, 20, 30]
    full = np.asarray(diffusion.make_schedule(cfg.diffusion).alphas_cumprod)
    sub = np.asarray(repaint.respaced_schedule(cfg, taus).alphas_cumprod)
    np.testing.assert_allclose(sub, full[taus], rtol=1e-5)
    with pytest.raises(DataError, match="t_start"):
        repaint.time_grid(100, 4, t_start=100)


@pytest.fixture(scope="module")
def ddpm_out(tiny):
    params, cfg = tiny
    rng = np.random.default_rng(1)
    x = rng.uniform(0.25, 0.45, (5, 16, 16)).astype(np.float32)
    m = np.zeros(x.shape, bool)
    m[:, 5:11, 4:12] = True
    return x, m, repaint.inpaint(params, cfg, x, m, jax.random.key(3), options=DDPM)


def test_only_the_mask_changes(ddpm_out):
    x, m, y = ddpm_out
    assert y.shape == x.shape and y.dtype == np.float32
    np.testing.assert_array_equal(y[~m], x[~m])
    assert np.abs(y - x)[m].mean() > 0.05  # regenerated, not copied
    assert 0.0 <= y.min() and y.max() <= 1.0


def test_final_step_leaves_known_pixels_within_float_tolerance(tiny, patches):
    params, cfg = tiny
    x, m = patches
    raw = repaint.inpaint(params, cfg, x, m, jax.random.key(3), options=DDPM, composite=False)
    np.testing.assert_allclose(raw[~m], x[~m], atol=1e-6)
    assert np.abs(raw - x)[m].mean() > 0.05


def test_deterministic_per_key_and_independent_of_batching_and_devices(tiny, ddpm_out):
    params, cfg = tiny
    x, m, y = ddpm_out
    again = repaint.inpaint(params, cfg, x, m, jax.random.key(3), options=DDPM)
    np.testing.assert_array_equal(again, y)
    # one device, chunks of 2 rows (the last one padded): item i still draws from fold_in(key, i)
    one_dev = repaint.inpaint(params, cfg, x, m, jax.random.key(3), options=DDPM, batch_size=2,
                              mesh=parallel.make_mesh(jax.local_devices()[:1]))
    np.testing.assert_allclose(one_dev, y, atol=1e-5)
    other = repaint.inpaint(params, cfg, x, m, jax.random.key(4), options=DDPM)
    assert np.abs(other - y)[m].mean() > 1e-3


def test_bad_arguments_give_one_clear_error(tiny, patches):
    params, cfg = tiny
    x, m = patches
    key = jax.random.key(0)
    with pytest.raises(DataError, match="wrong size"):
        repaint.inpaint(params, cfg, np.zeros((2, 24, 24), np.float32), np.ones((2, 24, 24), bool), key)
    with pytest.raises(DataError, match="does not match"):
        repaint.inpaint(params, cfg, x, m[:, :8], key)
    with pytest.raises(DataError, match="selects no pixel"):
        repaint.inpaint(params, cfg, x, np.zeros_like(m), key)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        repaint.inpaint(params, cfg, x * 300.0, m, key)
    other = configs.override(cfg, {"model.dim": 16})
    with pytest.raises(DataError, match="another size"):
        repaint.inpaint(init_params(other.model, 16, key), cfg, x, m, key)
    with pytest.raises(DataError, match="sampler"):
        repaint.RePaintOptions(sampler="euler")

import jax
import numpy as np
import pytest

from btd_jax.attacks import repaint, sdedit
from btd_jax.data import preprocess
from btd_jax.data.errors import DataError


def test_paint_nodule_adds_contrast_only_on_the_blob():
    hu = np.full((32, 32), 40.0, np.float32)
    prior, mask = sdedit.paint_nodule(hu, 16, 15, 5.0, 100.0, np.random.default_rng(0))
    assert 50 < mask.sum() < 130  # ~ pi r^2 = 79 with lobulation
    np.testing.assert_allclose(prior.max(), 140.0, atol=1.0)  # flat background + 100 HU at the core
    assert 100.0 < prior[mask].mean() < 140.0  # soft (logistic) edge
    far = np.ones_like(mask)
    far[6:27, 5:26] = False
    np.testing.assert_allclose(prior[far], 40.0, atol=1e-3)  # no paint far from the blob


def test_nodule_outside_the_image_is_refused():
    with pytest.raises(DataError, match="leaves the 32x32 image"):
        sdedit.paint_nodule(np.zeros((32, 32)), 2, 16, 5.0, 100.0, np.random.default_rng(0))


def test_dilate_is_a_disc():
    m = np.zeros((1, 9, 9), bool)
    m[0, 4, 4] = True
    assert sdedit.dilate(m, 2)[0].sum() == 13  # lattice points of the radius-2 disc


def test_sdedit_rewrites_only_the_dilated_nodule_and_is_deterministic(tiny):
    params, cfg = tiny
    rng = np.random.default_rng(0)
    hu = rng.normal(40.0, 20.0, (3, 16, 16)).astype(np.float32)
    painted = [sdedit.paint_nodule(h, 8, 8, 3.0, 120.0, rng) for h in hu]
    x, priors = preprocess.window_ct(hu), preprocess.window_ct(np.stack([p for p, _ in painted]))
    nodules = np.stack([m for _, m in painted])
    opts = repaint.RePaintOptions(steps=4, jump_length=2, resamplings=2)
    out, region = sdedit.sdedit(params, cfg, x, priors, nodules, jax.random.key(1), strength=0.3, options=opts)
    assert region.sum() > nodules.sum() and np.all(region[nodules])
    np.testing.assert_array_equal(out[~region], x[~region])
    assert np.abs(out - x)[region].mean() > 1e-3
    out2, _ = sdedit.sdedit(params, cfg, x, priors, nodules, jax.random.key(1), strength=0.3, options=opts)
    np.testing.assert_array_equal(out, out2)
    with pytest.raises(DataError, match="strength"):
        sdedit.sdedit(params, cfg, x, priors, nodules, jax.random.key(1), strength=0.0)

"""Attack simulators: shapes, domain, masks, determinism and the forensic trace each leaves."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from btd_jax.attacks import tamper
from btd_jax.data.errors import DataError

NOISE = 10.0  # HU


def _slice(seed=0, n=96):
    """A fake CT slice in HU: a smooth gradient of soft tissue plus correlated scanner-like noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:n, :n]
    noise = ndi.gaussian_filter(rng.standard_normal((n, n)), 0.8)
    return (30.0 + 0.3 * xx + NOISE * noise / noise.std()).astype(np.float32)


def _hp_std(img, region):
    return tamper.local_noise_std(img, region)


def _nyquist(img, region):
    """Robust level of the 2x2 checkerboard response relative to the high-pass noise level."""
    cb = ndi.convolve(np.asarray(img, np.float64), np.array([[1.0, -1.0], [-1.0, 1.0]]))
    vals = cb[region]
    return 1.4826 * np.median(np.abs(vals - np.median(vals))) / _hp_std(img, region)


@pytest.mark.parametrize("style", sorted(tamper.STYLES))
def test_contract(style):
    img = _slice()
    kw = {"contrast": 80.0} if style.startswith("inject") else {}
    before = img.copy()
    out, mask = tamper.apply(style, img, 48, 40, 6, np.random.default_rng(1), **kw)
    np.testing.assert_array_equal(img, before)  # input untouched
    assert out.shape == img.shape and out.dtype == np.float32
    assert mask.shape == img.shape and mask.dtype == bool
    assert 20 < mask.sum() < img.size // 4
    assert mask[48, 40]
    np.testing.assert_array_equal(out[~mask], img[~mask])  # only the mask is rewritten
    assert out.min() >= img.min() and out.max() <= img.max() + kw.get("contrast", 0.0)  # the domain
    assert np.abs(out - img)[mask].mean() > 1.0
    # deterministic for a seed, different for another seed
    out2, mask2 = tamper.apply(style, img, 48, 40, 6, np.random.default_rng(1), **kw)
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_array_equal(mask, mask2)
    out3, _ = tamper.apply(style, img, 48, 40, 6, np.random.default_rng(2), **kw)
    assert not np.array_equal(out, out3)


@pytest.mark.parametrize("style", sorted(tamper.STYLES))
def test_mask_grows_with_radius(style):
    img = _slice()
    kw = {"contrast": 80.0} if style.startswith("inject") else {}
    areas = [tamper.apply(style, img, 48, 48, r, np.random.default_rng(0), **kw)[1].sum() for r in (3, 6, 12)]
    assert areas[0] < areas[1] < areas[2]


def test_inject_smooth_raises_intensity_and_removes_noise():
    img = _slice()
    out, mask = tamper.inject_smooth(img, 48, 48, 8, np.random.default_rng(0), contrast=100.0)
    core = np.hypot(*np.mgrid[-48:48, -48:48]) < 5
    assert out[core].mean() - img[core].mean() > 70.0
    # the scanner noise is gone in the tampered disc: high-pass MAD drops by > 3x
    assert _hp_std(out, core) < _hp_std(img, core) / 3


def test_inject_latent_box_loses_fine_noise():
    img = _slice()
    out, mask = tamper.inject_latent(img, 48, 48, 5, np.random.default_rng(0), contrast=100.0, factor=4,
                                     fingerprint=0.0, latent_noise=0.0)
    rows, cols = np.nonzero(mask)
    side = rows.max() - rows.min() + 1
    assert side == cols.max() - cols.min() + 1 and side % 4 == 0 and mask.sum() == side * side  # a square box
    # away from the nodule but inside the box (the box interior past the feather), fine noise is gone
    inner = np.zeros_like(mask)
    inner[rows.min() + 4:rows.max() - 3, cols.min() + 4:cols.max() - 3] = True
    ring = inner & (np.hypot(*np.mgrid[-48:48, -48:48]) > 9)
    assert ring.sum() > 50
    assert _hp_std(out, ring) < 0.6 * _hp_std(img, ring)
    assert out[48, 48] - img[46:51, 46:51].mean() > 40.0


def test_upsampling_texture_is_a_periodic_checkerboard():
    tex = tamper.upsampling_texture((64, 64), np.random.default_rng(0), stride=2)
    assert tex.shape == (64, 64)
    assert abs(tamper.local_noise_std(tex, np.ones((64, 64), bool)) - 1.0) < 1e-6
    # the variance depends on the position modulo the stride (uneven kernel overlap)
    var = [tex[a::2, b::2].var() for a in (0, 1) for b in (0, 1)]
    assert max(var) > 1.5 * min(var)
    np.testing.assert_array_equal(tex, tamper.upsampling_texture((64, 64), np.random.default_rng(0), stride=2))


@pytest.mark.parametrize("style", ["inject-gan", "inject-latent", "remove-latent"])
def test_generator_styles_replace_noise_with_checkerboard_texture(style):
    """Same noise energy as the scanner (within a factor ~1.6), but more of it at Nyquist."""
    img = _slice()
    kw = {"contrast": 60.0} if style.startswith("inject") else {}
    out, mask = tamper.apply(style, img, 48, 48, 8, np.random.default_rng(0), **kw)
    yy, xx = np.mgrid[:96, :96]
    region = ndi.binary_erosion(mask, iterations=3) & (np.hypot(yy - 48, xx - 48) > 10)  # off the nodule edge
    if region.sum() < 50:
        region = ndi.binary_erosion(mask, iterations=3)
    real = _hp_std(img, region)
    assert 0.6 * real < _hp_std(out, region) < 1.8 * real
    # the scanner-like reference is measured over the whole (real) slice: small regions are noisy
    assert _nyquist(out, region) > 1.25 * _nyquist(img, np.ones_like(mask))


def test_harmonic_inpaint_is_exact_for_linear_images_and_smooth():
    yy, xx = np.mgrid[:40, :40].astype(np.float64)
    plane = 3.0 * yy - 2.0 * xx + 7.0  # harmonic: the solution must reproduce it
    mask = np.hypot(yy - 20, xx - 20) < 8
    hole = np.where(mask, 0.0, plane)
    np.testing.assert_allclose(tamper.harmonic_inpaint(hole, mask), plane, atol=1e-8)
    # on noise the fill satisfies the discrete Laplace equation at every masked pixel
    noisy = _slice(3, 40).astype(np.float64)
    filled = tamper.harmonic_inpaint(noisy, mask)
    lap = ndi.convolve(filled, np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], float))
    assert np.abs(lap[mask]).max() < 1e-8
    np.testing.assert_array_equal(filled[~mask], noisy[~mask])


def test_harmonic_inpaint_at_slice_border():
    img = np.full((20, 20), 5.0)
    mask = np.zeros((20, 20), bool)
    mask[:6, :6] = True  # touches two edges of the slice
    np.testing.assert_allclose(tamper.harmonic_inpaint(img, mask), img, atol=1e-10)


def test_remove_styles_noise_traces():
    img = _slice()
    rng = np.random.default_rng(0)
    smooth, mask = tamper.remove_inpaint(img, 48, 48, 10, rng)
    masked, mask2 = tamper.remove_ctgan(img, 48, 48, 10, np.random.default_rng(0))
    inner = ndi.binary_erosion(mask, iterations=2)
    real = _hp_std(img, inner)
    assert _hp_std(smooth, inner) < 0.2 * real  # plain in-painting is noise-free
    assert 0.6 * real < _hp_std(masked, ndi.binary_erosion(mask2, iterations=2)) < 1.5 * real  # CT-GAN hides it


def test_local_noise_std_estimates_white_noise():
    rng = np.random.default_rng(0)
    img = 5.0 * rng.standard_normal((128, 128))
    est = tamper.local_noise_std(img, np.ones_like(img, bool))
    # gaussian(sigma=1) high-pass of white noise keeps a known fraction of its std (~0.86 here)
    assert 3.5 < est < 5.0
    assert tamper.local_noise_std(img, np.zeros_like(img, bool)) == 0.0


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 8, 8)), "2-D"),
    (np.full((8, 8), np.nan), "NaN"),
])
def test_bad_slices(bad, match):
    with pytest.raises(DataError, match=match):
        tamper.remove_inpaint(bad, 4, 4, 2, np.random.default_rng(0))


def test_bad_arguments():
    img = _slice()
    with pytest.raises(DataError, match="outside"):
        tamper.inject_smooth(img, 200, 5, 4, np.random.default_rng(0), contrast=1.0)
    with pytest.raises(DataError, match="radius"):
        tamper.remove_ctgan(img, 5, 5, 0, np.random.default_rng(0))
    with pytest.raises(DataError, match="unknown attack style 'inject-vae'"):
        tamper.apply("inject-vae", img, 5, 5, 3, np.random.default_rng(0))
    with pytest.raises(DataError, match="factor"):
        tamper.inject_latent(img, 40, 40, 4, np.random.default_rng(0), contrast=1.0, factor=1)

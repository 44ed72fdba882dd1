"""btd_jax.data.preprocess: the paper's value mappings, patches, locations, resampling."""

import numpy as np
import pytest

from btd_jax.data import DataError, preprocess as P


def test_window_ct_exact_values():
    hu = np.array([-2000.0, -700.0, 0.0, 650.0, 2000.0, 3000.0])
    out = P.window_ct(hu)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.0, 700 / 2700, 0.5, 1.0, 1.0], rtol=1e-6)


def test_window_ct_integer_input_and_custom_window():
    out = P.window_ct(np.array([[-1024, 0], [40, 80]], np.int16), lo=0, hi=80)
    np.testing.assert_allclose(out, [[0.0, 0.0], [0.5, 1.0]])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_window_ct_rejects_non_finite(bad):
    with pytest.raises(DataError, match="non-finite"):
        P.window_ct(np.array([0.0, bad]))


def test_window_ct_rejects_empty_and_non_numeric():
    with pytest.raises(DataError, match="empty"):
        P.window_ct(np.zeros((0, 4)))
    with pytest.raises(DataError, match="dtype"):
        P.window_ct(np.array(["a", "b"]))


def test_normalize_mri_formula():
    rng = np.random.default_rng(0)
    v = rng.normal(300.0, 50.0, size=(4, 16, 16))
    v[0, 0, 0] = 1e6  # a bright outlier must not squash everything else
    out = P.normalize_mri(v)
    mu, sd = v.mean(), v.std()
    expect = (np.clip((v - mu) / sd, -3, 3) + 3) / 6
    np.testing.assert_allclose(out, expect, rtol=1e-5, atol=1e-6)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() == 1.0
    assert out[0, 0, 0] == 1.0


def test_normalize_mri_is_invariant_to_scanner_gain_and_offset():
    v = np.random.default_rng(1).gamma(2.0, 100.0, size=(3, 8, 8))
    np.testing.assert_allclose(P.normalize_mri(v), P.normalize_mri(3.7 * v + 120.0), atol=1e-6)


def test_normalize_mri_mask_and_minmax_variant():
    v = np.zeros((2, 4, 4))
    v[:, 1:3, 1:3] = [[10.0, 20.0], [30.0, 40.0]]
    mask = v > 0
    out = P.normalize_mri(v, mask=mask)
    sel = v[mask]
    z = (v - sel.mean()) / sel.std()
    np.testing.assert_allclose(out, (np.clip(z, -3, 3) + 3) / 6, rtol=1e-6)
    np.testing.assert_allclose(P.normalize_mri(v, clip_sigma=None), v / 40.0)


def test_normalize_mri_rejects_constant_and_bad_mask():
    with pytest.raises(DataError, match="constant"):
        P.normalize_mri(np.ones((2, 3, 3)))
    with pytest.raises(DataError, match="mask shape"):
        P.normalize_mri(np.ones((2, 3, 3)), mask=np.ones((3, 3), bool))
    with pytest.raises(DataError, match="non-finite"):
        P.normalize_mri(np.array([1.0, np.nan]))


def test_to_unit_range_dispatch():
    hu = np.array([-700.0, 2000.0, 650.0])
    np.testing.assert_allclose(P.to_unit_range(hu, "ct"), [0, 1, 0.5])
    np.testing.assert_allclose(P.to_unit_range(hu, "MRI"), P.normalize_mri(hu))
    with pytest.raises(DataError, match="modality"):
        P.to_unit_range(hu, "PET")


def _img(h=10, w=12):
    return np.arange(h * w, dtype=np.float32).reshape(h, w) + 1.0


def test_extract_patch_inside_is_plain_slice():
    img = _img()
    p = P.extract_patch(img, x=6, y=5, size=4)  # rows 3..6, cols 4..7
    np.testing.assert_array_equal(p, img[3:7, 4:8])
    p = P.extract_patch(img, x=6, y=5, size=3)  # odd: rows 4..6, cols 5..7
    np.testing.assert_array_equal(p, img[4:7, 5:8])


def test_extract_patch_centered_keeps_centre_and_zero_fills():
    img = _img()
    p = P.extract_patch(img, x=0, y=1, size=6, mode="centered")  # rows -2..3, cols -3..2
    assert p.shape == (6, 6)
    assert p[3, 3] == img[1, 0]                     # the point stays at [size//2, size//2]
    np.testing.assert_array_equal(p[2:, 3:], img[0:4, 0:3])
    assert (p[:2] == 0).all() and (p[:, :3] == 0).all()
    # bottom-right corner
    p = P.extract_patch(img, x=11, y=9, size=4, mode="centered")   # rows 7..10, cols 9..12
    np.testing.assert_array_equal(p[:3, :3], img[7:10, 9:12])
    assert (p[3] == 0).all() and (p[:, 3] == 0).all()
    assert P.extract_patch(img, 0, 0, 4, mode="centered", fill=-1.0)[0, 0] == -1.0
    np.testing.assert_array_equal(P.extract_patch(img, 0, 1, 6, mode="pad"), P.extract_patch(
        img, 0, 1, 6, mode="centered"))  # the former name


def _authors_notebook_patch(image, x, y, patch_size):
    """The authors' test-time crop, transcribed from their notebook (crop, then pad bottom/right)."""
    x, y = int(x), int(y)
    half = patch_size // 2
    patch = image[max(0, y - half):min(image.shape[0], y + half),
                  max(0, x - half):min(image.shape[1], x + half)]
    return np.pad(patch, ((0, patch_size - patch.shape[0]), (0, patch_size - patch.shape[1])),
                  "constant")


@pytest.mark.parametrize("x,y", [(0, 1), (2, 0), (1, 7), (6, 2), (11, 9), (6, 5), (0, 0), (11, 0)])
def test_extract_patch_authors_rule_is_the_default_and_matches_their_notebook(x, y):
    img = _img()
    p = P.extract_patch(img, x, y, 6)
    np.testing.assert_array_equal(p, _authors_notebook_patch(img, x, y, 6))
    np.testing.assert_array_equal(p, P.extract_patch(img, x, y, 6, mode="authors"))


def test_extract_patch_authors_rule_near_top_left_is_not_centred():
    img = _img(20, 20)
    p = P.extract_patch(img, x=1, y=2, size=8)      # rows -2..5 and cols -3..4 leave the image
    np.testing.assert_array_equal(p[:6, :5], img[0:6, 0:5])  # content moved to the top-left
    assert (p[6:] == 0).all() and (p[:, 5:] == 0).all()      # zeros at the bottom and right
    assert p[4, 4] != img[2, 1] and p[2, 1] == img[2, 1]
    c = P.extract_patch(img, x=1, y=2, size=8, mode="centered")
    assert c[4, 4] == img[2, 1] and not np.array_equal(p, c)
    # bottom/right borders: both rules agree
    np.testing.assert_array_equal(P.extract_patch(img, 18, 17, 8),
                                  P.extract_patch(img, 18, 17, 8, mode="centered"))
    # the authors truncate float coordinates (astype(int)); the other rules round
    np.testing.assert_array_equal(P.extract_patch(img, 5.7, 6.9, 4), img[4:8, 3:7])
    np.testing.assert_array_equal(P.extract_patch(img, 5.7, 6.9, 4, mode="centered"),
                                  img[5:9, 4:8])


def test_extract_patch_shift_stays_inside():
    img = _img()
    np.testing.assert_array_equal(P.extract_patch(img, 0, 1, 6, mode="shift"), img[0:6, 0:6])
    np.testing.assert_array_equal(P.extract_patch(img, 11, 9, 4, mode="shift"), img[6:10, 8:12])
    # image smaller than the patch: the image at the top-left, zero elsewhere
    p = P.extract_patch(img, 5, 5, 16, mode="shift")
    np.testing.assert_array_equal(p[:10, :12], img)
    assert p[10:].sum() == 0 and p[:, 12:].sum() == 0


@pytest.mark.parametrize("x,y", [(-1, 0), (0, -1), (12, 0), (0, 10), (float("nan"), 0)])
def test_extract_patch_rejects_outside_coordinates(x, y):
    with pytest.raises(DataError, match="outside the image|not finite"):
        P.extract_patch(_img(), x, y, 4)


def test_extract_patch_rejects_bad_arguments():
    with pytest.raises(DataError, match=r"\(H, W\)"):
        P.extract_patch(np.zeros((2, 3, 3)), 1, 1, 2)
    with pytest.raises(DataError, match="mode"):
        P.extract_patch(_img(), 1, 1, 2, mode="wrap")
    with pytest.raises(DataError, match="not a number"):
        P.extract_patch(_img(), "a", 1, 2)


def test_extract_patches_batch():
    imgs = np.stack([_img(), 2 * _img()])
    out = P.extract_patches(imgs, [6, 0], [5, 1], 4)
    np.testing.assert_array_equal(out[0], P.extract_patch(imgs[0], 6, 5, 4))
    np.testing.assert_array_equal(out[1], P.extract_patch(imgs[1], 0, 1, 4))
    with pytest.raises(DataError, match="2 images but 3 points"):
        P.extract_patches(imgs, [1, 2, 3], [1, 2, 3], 4)


def test_random_locations_whole_patches_fit_and_seeded():
    locs = P.random_locations((40, 30), 500, 8, rng=3)
    assert locs.shape == (500, 2) and locs.dtype == np.int64
    x, y = locs[:, 0], locs[:, 1]
    assert x.min() >= 4 and x.max() <= 30 - 4 and y.min() >= 4 and y.max() <= 40 - 4
    assert x.min() == 4 and x.max() == 26  # the bounds are reached
    img = np.ones((40, 30))
    for xx, yy in locs[:50]:
        assert P.extract_patch(img, xx, yy, 8).min() == 1.0  # no padding needed
    np.testing.assert_array_equal(locs, P.random_locations((40, 30), 500, 8, rng=3))
    m = P.random_locations((40, 30), 200, 8, rng=np.random.default_rng(0), margin=0)
    assert m.min() == 0 and m[:, 0].max() == 29


def test_random_locations_too_small():
    with pytest.raises(DataError, match="too small"):
        P.random_locations((6, 6), 3, 8, rng=0)


def test_resample_shapes_and_values():
    img = np.tile(np.linspace(0, 1, 20, dtype=np.float32), (10, 1))
    out = P.resample(img, (1.0, 0.5), 1.0)
    assert out.shape == (10, 10) and out.dtype == np.float32
    np.testing.assert_allclose(out.mean(), img.mean(), atol=0.02)
    np.testing.assert_allclose(P.resample(np.full((3, 8, 8), 7.0), (0.5, 0.5), 1.0),
                               np.full((3, 4, 4), 7.0), atol=1e-5)
    assert P.resample(np.ones((4, 8, 8)), (2.0, 1.0, 1.0), (1.0, 2.0, 2.0)).shape == (8, 4, 4)
    np.testing.assert_allclose(P.resample(img, (1.0, 1.0), 1.0), img, atol=1e-6)


def test_resample_rejects_bad_spacing():
    with pytest.raises(DataError, match="spacings must be > 0"):
        P.resample(np.ones((4, 4)), (0.0, 1.0), 1.0)
    with pytest.raises(DataError, match="does not match"):
        P.resample(np.ones(4), (1.0, 1.0), 1.0)

"""Attack-quality metrics against a NumPy hand computation, the weak-attack flag, and reading written sets."""

import jax
import numpy as np
import pytest

from btd_jax.attacks import cgan, inputs, pipeline, quality, suite
from btd_jax.data import preprocess
from btd_jax.data.errors import DataError


def _gauss(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian (radius 4 sigma, mirrored borders) written out with NumPy."""
    r = int(4 * sigma + 0.5)
    k = np.arange(-r, r + 1)
    w = np.exp(-0.5 * k ** 2 / sigma ** 2)
    w /= w.sum()
    p = np.pad(img.astype(np.float64), r, mode="symmetric")
    h, wd = img.shape
    rows = sum(w[i] * p[i:i + h, :] for i in range(2 * r + 1))
    return sum(w[j] * rows[:, j:j + wd] for j in range(2 * r + 1))


def _distance_to(mask: np.ndarray) -> np.ndarray:
    """Euclidean distance of every pixel to the nearest mask pixel, by brute force."""
    ys, xs = np.nonzero(mask)
    yy, xx = np.mgrid[:mask.shape[0], :mask.shape[1]]
    return np.sqrt((yy[..., None] - ys) ** 2 + (xx[..., None] - xs) ** 2).min(-1)


@pytest.fixture
def example():
    """Two 32 px HU patches: a noise-free painted nodule (+60 HU, flat) and a textured one (+50 HU)."""
    rng = np.random.default_rng(0)
    orig = rng.normal(40.0, 20.0, (2, 32, 32))
    mask = np.zeros((2, 32, 32), bool)
    mask[:, 10:22, 9:23] = True
    fake = orig.copy()
    fake[0][mask[0]] = 100.0
    fake[1][mask[1]] += 50.0
    return fake, orig, mask


def test_per_fake_metrics_match_a_numpy_hand_computation(example):
    fake, orig, mask = example
    got = quality.measure(fake, orig, mask)
    for i in range(2):
        d = _distance_to(mask[i])
        ring = (d > 2) & (d <= 6)
        hf, ho = fake[i] - _gauss(fake[i], 1.0), orig[i] - _gauss(orig[i], 1.0)
        m = mask[i]
        core = np.zeros_like(m)
        core[11:21, 10:22] = True  # the 12 x 14 mask less its 1 px border
        want = {"noise_in": hf[core].std(), "noise_out": hf[ring].std(), "noise_orig_in": ho[core].std(),
                "noise_orig_out": ho[ring].std(), "mean_change": (fake[i] - orig[i])[m].mean(),
                "structure_ratio": _gauss(fake[i], 2.0)[m].std() / _gauss(orig[i], 2.0)[m].std()}
        for k, v in want.items():
            np.testing.assert_allclose(got[k][i], v, rtol=1e-9, err_msg=k)
    assert got["noise_in"][0] < 0.5 * got["noise_out"][0]  # the flat fill: far smoother inside
    np.testing.assert_allclose(got["noise_in"][1], got["noise_orig_in"][1], rtol=0.02)  # texture kept
    scaled = quality.measure(fake / 1000.0, orig / 1000.0, mask, unit_scale=1e-3)
    np.testing.assert_allclose(scaled["noise_out"], got["noise_out"], rtol=1e-9)


def test_summary_flags_the_noise_free_edit_as_weak(example):
    fake, orig, mask = example
    flat = quality.summarize(quality.QualitySet(fake[:1], orig[:1], mask[:1], orig, "HU", 1.0), "injection")
    textured = quality.summarize(quality.QualitySet(fake[1:], orig[1:], mask[1:], orig, "HU", 1.0), "injection")
    assert flat["weak_attack"] and abs(flat["noise_ratio"] - 1) > quality.WEAK_NOISE_RATIO
    assert not textured["weak_attack"] and abs(textured["noise_ratio"] - 1) <= quality.WEAK_NOISE_RATIO
    assert textured["effective_fraction"] == 1.0 and flat["effective_fraction"] == 1.0  # +50, +60 HU > noise
    assert 0.8 < textured["noise_ratio_real"] < 1.25  # untouched noise: the same inside and out
    removal = quality.summarize(quality.QualitySet(orig[:1] * 0 + 40.0, orig[:1], mask[:1], orig, "HU", 1.0),
                                "removal")
    assert removal["effective_fraction"] == 1.0 and removal["structure_ratio"] == 0.0  # flattened


def test_bad_input_is_one_clear_error(example):
    fake, orig, mask = example
    with pytest.raises(DataError, match="must be equal"):
        quality.measure(fake, orig, mask[:, :20])  # a mask that does not cover the image
    empty = mask.copy()
    empty[1] = False
    with pytest.raises(DataError, match="fake 1 is empty"):
        quality.measure(fake, orig, empty)
    with pytest.raises(DataError, match="unknown attack"):
        quality.summarize(quality.QualitySet(fake, orig, mask, orig, "HU", 1.0), "swap")


@pytest.mark.parametrize("mod", ["CT", "MRI"])
def test_read_sets_recovers_fakes_originals_and_masks_of_a_written_layout(mod, tmp_path, hu_slices):
    _, hu = hu_slices
    images = hu if mod == "CT" else np.clip((hu + 20.0) / 120.0, 0.0, 1.0)
    sources = inputs.as_sources(images, mod, ["s"] * 2, ["scan"] * 2, ["p"] * 2, [0, 1])
    gcfg = suite.gan_config(16, 8, 1, mod)
    atk = pipeline.Attacker("cgan", cgan.init(gcfg, jax.random.key(0)), gcfg)
    items, masks = pipeline.attack_sources(atk, "injection", sources, 3, seed=0, modality=mod, min_body=0.5)
    pipeline.write_layout(tmp_path, mod, "injection", items, masks, "cGAN")
    # the same method's removal, same seed (same sites) and root: MRI keeps both attacks in one folder
    removal = pipeline.attack_sources(atk, "removal", sources, 3, seed=0, modality=mod, min_body=0.5)
    pipeline.write_layout(tmp_path, mod, "removal", *removal, "cGAN")
    removed = quality.read_sets(tmp_path, mod, "removal", sources, size=16)[f"cGAN-{mod}-Remove"]
    assert removed.masks.any((1, 2)).all()
    sets = quality.read_sets(tmp_path, mod, "injection", sources, size=16)
    q = sets[f"cGAN-{mod}-Inject"]
    assert q.fakes.shape == q.originals.shape == q.masks.shape == (3, 16, 16) and q.reals.shape == (3, 16, 16)
    unit = preprocess.window_ct if mod == "CT" else (lambda a: a)
    for k, it in enumerate(items[:3]):
        img, y, x = sources[int(it["frame"])].image, it["src_y"], it["src_x"]
        want_orig = preprocess.extract_patch(np.asarray(unit(img)), x, y, 16)
        np.testing.assert_allclose(unit(q.originals[k]), want_orig, atol=1e-6)
        want_fake = preprocess.extract_patch(np.asarray(unit(it["image"])), it["x"], it["y"], 16)
        np.testing.assert_allclose(unit(q.fakes[k]), want_fake, atol=1e-6 if mod == "CT" else 1.0 / 65535)  # PNG
        assert q.masks[k].sum() == 64
        np.testing.assert_allclose(q.fakes[k][~q.masks[k]], q.originals[k][~q.masks[k]], atol=1e-3)
    row = quality.summarize(q, "injection")
    assert row["unit"] == ("HU" if mod == "CT" else "MR x 1000") and np.isfinite(row["noise_in"])
    png = quality.write_mosaic(q, tmp_path / "m.png", "test")
    assert open(png, "rb").read(4) == b"\x89PNG"

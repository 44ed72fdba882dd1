"""localize: window grid, map aggregation, NMS, a planted anomaly ranked top-1, a real tiny scorer."""

import numpy as np
import pytest

from btd_jax import calibration, localize
from btd_jax.data import readers
from btd_jax.data.errors import DataError


class _BrightScorer:
    """Stands in for Scorer: the 'residual' of a pixel is its squared intensity."""

    class cfg:  # noqa: N801 - mimics Scorer.cfg.image_size
        image_size = 16

    def __init__(self):
        self.calls = 0

    def residual_map(self, images, steps=1, batch_size=256, key=None):
        self.calls += 1
        return np.asarray(images, np.float32) ** 2


def _slice_with_blobs(centres, shape=(128, 128), seed=0):
    rng = np.random.default_rng(seed)
    img = rng.uniform(0, 0.2, shape).astype(np.float32)
    rr, cc = np.mgrid[:shape[0], :shape[1]]
    for r, c in centres:
        img[(rr - r) ** 2 + (cc - c) ** 2 <= 16] = 1.0
    return img


def test_window_positions_cover_the_edges():
    np.testing.assert_array_equal(localize.window_positions(40, 16, 8), [0, 8, 16, 24])
    np.testing.assert_array_equal(localize.window_positions(41, 16, 8), [0, 8, 16, 24, 25])
    np.testing.assert_array_equal(localize.window_positions(10, 16, 8), [0])
    assert localize.window_positions(512, 96, 16).size == 27
    with pytest.raises(ValueError, match="stride"):
        localize.window_positions(40, 16, 0)


def test_extract_and_aggregate():
    img = np.arange(20 * 24, dtype=np.float32).reshape(20, 24)
    w, r, c = localize.extract_windows(img, 8, 8)
    assert w.shape == (3 * 3, 8, 8)  # rows 0, 8, 12; cols 0, 8, 16
    np.testing.assert_array_equal(r, [0, 0, 0, 8, 8, 8, 12, 12, 12])
    np.testing.assert_array_equal(w[5], img[8:16, 16:24])
    # averaging the windows themselves reconstructs the image exactly
    np.testing.assert_allclose(localize.aggregate_maps(w, r, c, img.shape), img)
    # constant maps k: pixel (10, 0) lies in window 3 only; (13, 0) in windows 3 and 6 (rows 12-19)
    const = np.stack([np.full((8, 8), k, np.float32) for k in range(9)])
    agg = localize.aggregate_maps(const, r, c, img.shape)
    assert agg[2, 0] == 0.0 and agg[10, 0] == pytest.approx(3.0) and agg[13, 0] == pytest.approx((3 + 6) / 2)
    # centre-only aggregation: pixel (0, 0) is in no window's central 4x4 -> falls back to full average
    agg_c = localize.aggregate_maps(const, r, c, img.shape, center=4)
    assert agg_c[0, 0] == 0.0 and agg_c[4, 4] == pytest.approx(0.0) and agg_c[18, 22] == pytest.approx(8.0)


def test_window_scores_and_nms():
    maps = np.zeros((2, 8, 8), np.float32)
    maps[0, 3:5, 3:5] = 1.0
    maps[1, 0, 0] = 16.0
    np.testing.assert_allclose(localize.window_scores(maps), [4 / 64, 16 / 64])
    np.testing.assert_allclose(localize.window_scores(maps, center=2), [1.0, 0.0])
    rows, cols = np.array([10, 12, 40, 10]), np.array([10, 11, 40, 30])
    keep = localize.nms(rows, cols, np.array([0.9, 0.95, 0.5, 0.1]), k=3, radius=8)
    np.testing.assert_array_equal(keep, [1, 2, 3])  # 0 is within 8 px of 1


def test_planted_anomaly_is_top1():
    img = _slice_with_blobs([(70, 45)])
    sc = _BrightScorer()
    res = localize.localize_slice(sc, img, stride=4, center=8, top_k=3)
    assert res.suspicion.shape == img.shape and sc.calls == 1
    best = res.top[0]
    assert abs(best["row"] - 70) <= 4 and abs(best["col"] - 45) <= 4
    assert best["score"] > 5 * res.top[1]["score"]
    r, c = np.unravel_index(np.argmax(res.suspicion), img.shape)
    assert abs(r - 70) <= 4 and abs(c - 45) <= 4


def test_two_anomalies_nms_and_calibration():
    img = _slice_with_blobs([(30, 30), (90, 100)])
    cal = calibration.fit(np.linspace(0.0, 0.05, 100), target_fpr=0.1)
    res = localize.localize_slice(_BrightScorer(), img, stride=8, center=8, top_k=2, calibration=cal)
    found = sorted((t["row"], t["col"]) for t in res.top)
    assert abs(found[0][0] - 30) <= 8 and abs(found[0][1] - 30) <= 8
    assert abs(found[1][0] - 90) <= 8 and abs(found[1][1] - 100) <= 8
    assert all(t["flagged"] and t["p_value"] == pytest.approx(1 / 101) for t in res.top)


def test_volume_and_small_slice_and_errors(tmp_path):
    vol = np.stack([_slice_with_blobs([], (48, 48), s) for s in range(3)])
    vol[2] = _slice_with_blobs([(20, 30)], (48, 48), 2)
    results, top = localize.localize_volume(_BrightScorer(), vol, stride=8, top_k=2)
    assert len(results) == 3 and top[0]["slice"] == 2
    assert abs(top[0]["row"] - 20) <= 8 and abs(top[0]["col"] - 30) <= 8
    small = localize.localize_slice(_BrightScorer(), np.full((10, 12), 0.5, np.float32), stride=4)
    assert small.suspicion.shape == (10, 12) and small.scores.shape == (1,)
    np.testing.assert_allclose(small.suspicion, 0.25)
    png = localize.save_overlay(vol[2], results[2], str(tmp_path / "o.png"))
    assert open(png, "rb").read(4) == b"\x89PNG"
    with pytest.raises(DataError, match="2-D slice"):
        localize.localize_slice(_BrightScorer(), vol)
    with pytest.raises(DataError, match="outside \\[0, 1\\]"):
        localize.localize_slice(_BrightScorer(), vol[0] * 10)
    with pytest.raises(DataError, match="NaN"):
        localize.localize_slice(_BrightScorer(), np.full((20, 20), np.nan))
    with pytest.raises(ValueError, match="center window 20"):
        localize.localize_slice(_BrightScorer(), vol[0], center=20)


def test_real_tiny_scorer_consistent():
    jax = pytest.importorskip("jax")
    from btd_jax import configs, score
    from btd_jax.models import unet

    cfg = configs.get("tiny")
    params = unet.init_params(cfg.model, cfg.image_size, jax.random.key(0))
    sc = score.Scorer.from_params(params, cfg)
    img = np.random.default_rng(0).uniform(0, 1, (40, 40)).astype(np.float32)
    res = localize.localize_slice(sc, img, stride=8, center=8, top_k=3, batch_size=16)
    assert res.suspicion.shape == (40, 40) and res.scores.shape == (16,)
    assert np.isfinite(res.suspicion).all() and (res.suspicion >= 0).all()
    windows, r0, c0 = localize.extract_windows(img, 16, 8)
    maps = sc.residual_map(windows, batch_size=16)
    # pixel (0, 0) lies in the first window only, outside every centre: the map is that residual
    assert res.suspicion[0, 0] == pytest.approx(maps[0, 0, 0], rel=1e-5)
    # window scores use the scorer's own centre-window convention
    np.testing.assert_allclose(res.scores, sc.score(windows, center=8, batch_size=16), rtol=1e-5, atol=1e-8)
    assert res.top[0]["score"] == pytest.approx(res.scores.max(), rel=1e-6)


def test_localize_command_on_tiny_workdir(tmp_path):
    import argparse
    import json

    jax = pytest.importorskip("jax")
    from btd_jax import configs, train
    from btd_jax.commands import localize as cmd
    from btd_jax.models import unet

    cfg = configs.get("tiny")
    workdir = str(tmp_path / "wd")
    train.save_params_checkpoint(workdir, unet.init_params(cfg.model, cfg.image_size, jax.random.key(0)), cfg)
    vol = np.random.default_rng(1).uniform(0, 1, (3, 40, 36)).astype(np.float32)
    np.save(tmp_path / "vol.npy", vol)
    sub = argparse.ArgumentParser().add_subparsers()
    cmd.add_parser(sub)
    out = tmp_path / "out"
    args = sub.choices["localize"].parse_args(
        ["--workdir", workdir, "--input", str(tmp_path / "vol.npy"), "--units", "unit", "--stride", "8",
         "--center", "8", "--top_k", "2", "--slices", "1:3", "--batch_size", "16", "--out", str(out)])
    assert cmd.run(args) == 0
    rep = json.load(open(out / "localize.json"))
    sus = np.load(out / "suspicion.npy")
    assert sus.shape == (2, 40, 36) and np.isfinite(sus).all()
    assert rep["windows_per_slice"] == 4 * 4 and rep["slices"] == [1, 3] and len(rep["top"]) == 2
    assert rep["top"][0]["score"] >= rep["top"][1]["score"] and rep["top"][0]["slice"] in (1, 2)
    assert open(out / "overlay.png", "rb").read(4) == b"\x89PNG"
    bad = sub.choices["localize"].parse_args(
        ["--workdir", workdir, "--input", str(tmp_path / "vol.npy"), "--units", "unit", "--slices", "2:9", "--center", "8",
         "--out", str(out), "--overwrite"])
    with pytest.raises(ValueError, match="not a valid range"):
        cmd.run(bad)


def test_read_volume_windows_hu(tmp_path):
    hu = np.array([[-1000.0, -700.0], [650.0, 3000.0]], np.float32)
    np.save(tmp_path / "s.npy", hu)
    vol = readers.read_volume(tmp_path / "s.npy", "CT", "raw")
    assert vol.single and vol.pixels.shape == (1, 2, 2)
    np.testing.assert_allclose(vol.pixels[0], [[0.0, 0.0], [0.5, 1.0]], atol=1e-6)  # (hu + 700) / 2700, clipped
    with pytest.raises(FileNotFoundError):
        readers.read_volume(tmp_path / "none.npy", "CT", "raw")
    np.save(tmp_path / "v4.npy", np.zeros((1, 2, 3, 4), np.float32))
    with pytest.raises(DataError, match="expected a slice"):
        readers.read_volume(tmp_path / "v4.npy", "CT", "unit")


def test_read_volume_dicom_from_pydicom_data():
    pydicom_data = pytest.importorskip("pydicom.data")
    path = pydicom_data.get_testdata_file("CT_small.dcm")
    vol = readers.read_volume(path, "CT", "raw")
    assert not vol.single and vol.pixels.shape == (1, 128, 128) and vol.pixels.dtype == np.float32
    assert 0.0 <= vol.pixels.min() and vol.pixels.max() <= 1.0 and vol.pixels.std() > 0.01

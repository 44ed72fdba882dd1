"""calibration: threshold at a target FPR, conformal p-values, JSON round trip, duck-typed scorer use."""

import json

import numpy as np
import pytest

from btd_jax import calibration
from btd_jax.data.errors import DataError


def test_threshold_hand_computed():
    real = np.arange(1.0, 11.0)  # 1..10
    assert calibration.threshold_at_fpr(real, 0.1) == (10.0, pytest.approx(0.1))
    assert calibration.threshold_at_fpr(real, 0.25) == (9.0, pytest.approx(0.2))
    assert calibration.threshold_at_fpr(real[::-1], 0.25) == (9.0, pytest.approx(0.2))  # order-free
    thr, fpr = calibration.threshold_at_fpr(real, 0.05)  # below 1/N: flag nothing seen
    assert thr > 10.0 and thr == np.nextafter(10.0, np.inf) and fpr == 0.0


def test_threshold_with_ties_flags_tied_block_together():
    real = [1.0, 2.0, 3.0, 3.0, 3.0]
    assert calibration.threshold_at_fpr(real, 0.6) == (3.0, pytest.approx(0.6))
    thr, fpr = calibration.threshold_at_fpr(real, 0.5)  # the three 3s cannot be split
    assert thr > 3.0 and fpr == 0.0


def test_p_values_hand_computed():
    cal = calibration.fit(np.arange(1.0, 11.0))
    np.testing.assert_allclose(cal.p_values([10.0, 11.0, 0.0, 5.5, 1.0]),
                               [2 / 11, 1 / 11, 1.0, 6 / 11, 11 / 11])


def test_decide_and_normalize():
    cal = calibration.fit(np.arange(1.0, 11.0), target_fpr=0.2)
    assert cal.threshold == 9.0
    np.testing.assert_array_equal(cal.decide([8.9, 9.0, 20.0]), [False, True, True])
    np.testing.assert_allclose(cal.normalize([4.5, 9.0]), [0.5, 1.0])


def test_calibration_holds_on_fresh_real_scores():
    rng = np.random.default_rng(0)
    cal = calibration.fit(rng.normal(size=5000), target_fpr=0.1)
    assert cal.empirical_fpr <= 0.1 and cal.empirical_fpr == pytest.approx(0.1, abs=1e-3)
    fresh = rng.normal(size=20000)
    assert cal.decide(fresh).mean() == pytest.approx(0.1, abs=0.01)
    p = cal.p_values(fresh)
    for a in (0.01, 0.05, 0.2):  # conformal validity: P(p <= a) ~<= a
        assert (p <= a).mean() <= a + 0.01
    assert p.min() >= 1 / 5001 and p.max() <= 1.0


def test_save_load_roundtrip(tmp_path):
    cal = calibration.fit([0.3, 0.1, 0.2, 0.4], target_fpr=0.25, steps=1, center=32, dataset="x")
    path = cal.save(str(tmp_path))
    assert path == str(tmp_path / "calibration.json")
    d = json.loads((tmp_path / "calibration.json").read_text())
    assert d["threshold"] == 0.4 and d["n"] == 4 and d["score"] == {"steps": 1, "center": 32}
    back = calibration.Calibration.load(str(tmp_path))
    assert back.threshold == cal.threshold and back.steps == 1 and back.center == 32
    assert back.meta == {"dataset": "x"}
    np.testing.assert_array_equal(back.real_scores, [0.1, 0.2, 0.3, 0.4])
    np.testing.assert_array_equal(back.p_values([0.25, 1.0]), cal.p_values([0.25, 1.0]))
    other = tmp_path / "c.json"
    cal.save(str(other))
    assert calibration.Calibration.load(str(other)).threshold == 0.4


def test_bad_input(tmp_path):
    with pytest.raises(DataError, match="NaN"):
        calibration.fit([0.1, np.nan])
    with pytest.raises(DataError, match="empty"):
        calibration.fit([])
    with pytest.raises(ValueError, match="target_fpr"):
        calibration.fit([0.1, 0.2], target_fpr=0.0)
    with pytest.raises(FileNotFoundError, match="no calibration"):
        calibration.Calibration.load(str(tmp_path))
    (tmp_path / "calibration.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        calibration.Calibration.load(str(tmp_path))
    (tmp_path / "calibration.json").write_text('{"threshold": 1.0}')
    with pytest.raises(DataError, match="missing key"):
        calibration.Calibration.load(str(tmp_path))


class _MeanScorer:
    """Stands in for btd_jax.score.Scorer: score = mean intensity, records the settings used."""

    def __init__(self):
        self.calls = []

    def score(self, images, steps=1, center=None, batch_size=256):
        self.calls.append((steps, center))
        return np.asarray(images).reshape(len(images), -1).mean(axis=1)


class _PoolScorer(_MeanScorer):
    """Also takes a pooling keyword, like Scorer.score."""

    def score(self, images, steps=1, center=None, batch_size=256, reduction="mean"):
        self.calls.append((steps, center, reduction))
        flat = np.asarray(images).reshape(len(images), -1)
        return flat.max(axis=1) if reduction == "max" else flat.mean(axis=1)


def test_calibration_keeps_and_reuses_the_pooling(tmp_path):
    real = np.random.default_rng(0).uniform(0, 0.5, size=(40, 4, 4))
    sc = _PoolScorer()
    cal = calibration.calibrate_scorer(sc, real, target_fpr=0.1, reduction="max")
    assert cal.score == {"reduction": "max"} and cal.reduction == "max"
    assert cal.threshold >= real.reshape(40, -1).max(1).min()
    cal = calibration.Calibration.load(cal.save(str(tmp_path)))  # the pooling survives the JSON round trip
    calibration.score_and_decide(sc, real[:3], cal)
    assert [c[2] for c in sc.calls] == ["max", "max"]
    calibration.calibrate_scorer(_MeanScorer(), real)  # scorers without the keyword still work


def test_scorer_helpers():
    rng = np.random.default_rng(0)
    real = rng.uniform(0, 0.5, size=(50, 4, 4))
    sc = _MeanScorer()
    cal = calibration.calibrate_scorer(sc, real, target_fpr=0.1, steps=2, center=2)
    assert (cal.steps, cal.center) == (2, 2)
    test = np.stack([np.full((4, 4), 0.9), np.full((4, 4), 0.0)])
    s, fake, p = calibration.score_and_decide(sc, test, cal)
    np.testing.assert_allclose(s, [0.9, 0.0])
    np.testing.assert_array_equal(fake, [True, False])
    np.testing.assert_allclose(p, [1 / 51, 1.0])
    assert sc.calls == [(2, 2), (2, 2)]  # decisions reuse the calibration's scoring settings


def test_scorer_decide_uses_the_workdir_calibration(tmp_path):
    import jax

    from btd_jax import configs, score
    from btd_jax.models import unet

    cfg = configs.get("tiny")
    params = unet.init_params(cfg.model, cfg.image_size, jax.random.PRNGKey(0))
    scorer = score.Scorer.from_params(params, cfg)
    rng = np.random.default_rng(0)
    real = rng.uniform(0.2, 0.8, (20, 16, 16)).astype(np.float32)
    cal = calibration.calibrate_scorer(scorer, real, target_fpr=0.1, steps=1, center=8, batch_size=8)
    # The whole ScoreConfig it scored with is stored (not the speed-only batch_size / micro_batch).
    assert cal.score == dict(cfg.score.scoring_dict(), steps=1, center=8)
    assert calibration.Calibration.load(cal.save(str(tmp_path))).score == cal.score
    scorer.workdir = str(tmp_path)
    s, fake, p = scorer.decide(real[:5])
    np.testing.assert_allclose(s, scorer.score(real[:5], steps=1, center=8), rtol=1e-6)
    np.testing.assert_array_equal(fake, s >= cal.threshold)
    assert p.shape == (5,) and np.all((p > 0) & (p <= 1))
    with pytest.raises(ValueError, match="needs a Calibration"):
        score.Scorer.from_params(params, cfg).decide(real[:1])


def test_old_calibration_files_with_top_level_settings_still_load(tmp_path):
    old = {"threshold": 0.3, "target_fpr": 0.1, "empirical_fpr": 0.0, "n": 3, "steps": 2, "center": None,
           "meta": {"reduction": "max", "dataset": "x"}, "real_scores": [0.1, 0.2, 0.3]}
    (tmp_path / "calibration.json").write_text(json.dumps(old))
    cal = calibration.Calibration.load(str(tmp_path))
    assert cal.score == {"steps": 2, "center": None, "reduction": "max"}
    assert (cal.steps, cal.center, cal.reduction) == (2, None, "max")
    sc = _PoolScorer()
    calibration.score_and_decide(sc, np.zeros((2, 4, 4)), cal)
    assert sc.calls == [(2, None, "max")]  # the old settings, explicit whole-patch window included

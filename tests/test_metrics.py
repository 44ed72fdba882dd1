"""metrics: AUC/EER against hand-computed values and scikit-learn; the scanner-balanced bootstrap."""

import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from btd_jax import metrics
from btd_jax.data.errors import DataError


# --- hand-computed ---------------------------------------------------------------------------

def test_auc_eer_textbook_example():
    # ROC: fpr 0,0,.5,.5,1; tpr 0,.5,.5,1,1 -> AUC .75; FPR=FNR=.5 exactly at threshold .4.
    y, s = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    assert metrics.auc(y, s) == pytest.approx(0.75)
    assert metrics.eer(y, s) == pytest.approx((0.5, 0.4))


def test_eer_interpolates_between_roc_points():
    # fakes {3, 1}, reals {2, 0, -1}: FPR-FNR goes -1/6 -> +1/3 between thresholds 2 and 1,
    # so a third of the way: EER = 1/3 (FPR 1/3, FNR .5 -> 0), threshold 2 - 1/3 = 5/3.
    y = [1, 0, 1, 0, 0]
    s = [3, 2, 1, 0, -1]
    rate, thr = metrics.eer(y, s)
    assert rate == pytest.approx(1 / 3)
    assert thr == pytest.approx(5 / 3)
    assert metrics.auc(y, s) == pytest.approx(5 / 6)


def test_perfect_and_tied_scores():
    assert metrics.auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert metrics.eer([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == pytest.approx((0.0, 0.8))
    # all tied: the ROC is the diagonal's end points; EER .5, threshold = the tied score
    assert metrics.auc([0, 1, 0, 1], [1, 1, 1, 1]) == 0.5
    assert metrics.eer([0, 1, 0, 1], [1, 1, 1, 1]) == pytest.approx((0.5, 1.0))
    # inverted detector
    assert metrics.auc([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert metrics.eer([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9])[0] == pytest.approx(1.0)


def test_roc_curve_keeps_every_point():
    fpr, tpr, thr = metrics.roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    assert np.isinf(thr[0]) and np.all(np.diff(thr[1:]) < 0)


# --- against scikit-learn / brute force on random data ----------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_against_sklearn_and_brute_force(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 600)
    s = rng.normal(size=600) + 0.8 * y
    s[:50] = np.round(s[:50], 1)  # some ties
    assert metrics.auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    rate, thr = metrics.eer(y, s)
    # at the threshold both empirical error rates are within one sample step of the EER
    fpr_at = np.mean(s[y == 0] >= thr)
    fnr_at = np.mean(s[y == 1] < thr)
    step = 1.0 / min((y == 0).sum(), (y == 1).sum())
    assert abs(fpr_at - rate) <= step + 1e-12 and abs(fnr_at - rate) <= step + 1e-12
    # and the EER is no worse than the best achievable max(FPR, FNR)
    t = np.unique(s)
    best = min(max(np.mean(s[y == 0] >= u), np.mean(s[y == 1] < u)) for u in t)
    assert rate <= best + 1e-12 and rate >= best - step


# --- invalid input --------------------------------------------------------------------------

@pytest.mark.parametrize("y, s, match", [
    ([0, 0, 0], [0.1, 0.2, 0.3], "only one class"),
    ([1, 1], [0.1, 0.2], "only one class"),
    ([0, 1, 1], [0.1, np.nan, 0.3], "NaN or infinite"),
    ([0, 1, 1], [0.1, np.inf, 0.3], "NaN or infinite"),
    ([0, 1], [0.1, 0.2, 0.3], "length mismatch"),
    ([0, 2, 1], [0.1, 0.2, 0.3], "labels must be 0"),
    ([[0, 1]], [[0.1, 0.2]], "1-D"),
])
def test_invalid_input_raises_clear_error(y, s, match):
    for fn in (metrics.auc, metrics.eer, metrics.roc_curve):
        with pytest.raises(DataError, match=match):
            fn(y, s)
    with pytest.raises(ValueError, match=match):  # DataError is a ValueError
        metrics.bootstrap(s, y, n=2)


def test_boolean_labels_accepted():
    assert metrics.auc(np.array([False, True]), [0.0, 1.0]) == 1.0


# --- bootstrap ------------------------------------------------------------------------------

def _two_scanners(seed=0):
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(5), np.ones(2), np.zeros(3), np.ones(10)].astype(int)
    g = np.array(["A"] * 7 + ["B"] * 13)
    s = rng.normal(size=y.size) + y
    return s, y, g


def test_bootstrap_shapes_counts_and_reproducibility():
    s, y, g = _two_scanners()
    r = metrics.bootstrap(s, y, groups=g, n=50, seed=3)
    assert r["per_class_per_group"] == {"A": 2, "B": 3}
    assert r["samples_per_draw"] == 10 and r["n"] == 50 and r["skipped_groups"] == []
    assert r["auc_values"].shape == (50,) and r["eer_values"].shape == (50,)
    assert r["auc_mean"] == pytest.approx(r["auc_values"].mean())
    assert r["auc_std"] == pytest.approx(r["auc_values"].std(ddof=1))
    assert r["auc_ci"][0] <= r["auc_mean"] <= r["auc_ci"][1]
    assert r["eer_ci"][0] <= r["eer_mean"] <= r["eer_ci"][1]
    assert np.all((0 <= r["auc_values"]) & (r["auc_values"] <= 1))
    r2 = metrics.bootstrap(s, y, groups=g, n=50, seed=3)
    np.testing.assert_array_equal(r["auc_values"], r2["auc_values"])
    r3 = metrics.bootstrap(s, y, groups=g, n=50, seed=4)
    assert not np.array_equal(r["auc_values"], r3["auc_values"])


def test_each_draw_is_balanced_within_each_scanner():
    s, y, g = _two_scanners()
    plan, skipped = metrics._group_plan(y, g)
    assert skipped == []
    rng = np.random.default_rng(0)
    for _ in range(20):
        idx = metrics.balanced_indices(plan, rng)
        for name, k in (("A", 2), ("B", 3)):
            in_g = g[idx] == name
            assert (y[idx][in_g] == 0).sum() == k and (y[idx][in_g] == 1).sum() == k


def test_bootstrap_perfect_separation():
    y = np.r_[np.zeros(30), np.ones(30)].astype(int)
    s = np.r_[np.linspace(0, 1, 30), np.linspace(2, 3, 30)]
    r = metrics.bootstrap(s, y, n=20)
    assert r["auc_mean"] == pytest.approx(1.0) and r["auc_std"] < 1e-12 and r["eer_mean"] == 0.0


def test_bootstrap_mean_close_to_full_sample_auc():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(1000), np.ones(1000)].astype(int)
    s = rng.normal(size=2000) + 1.0 * y
    r = metrics.bootstrap(s, y, n=100, seed=0)
    assert r["auc_mean"] == pytest.approx(metrics.auc(y, s), abs=0.01)
    assert r["eer_mean"] == pytest.approx(metrics.eer(y, s)[0], abs=0.01)
    assert 0.005 < r["auc_std"] < 0.03


def test_scanner_balancing_removes_scanner_confound():
    # Scanner A: mostly fakes and high scores; scanner B: mostly reals and low scores. Within each
    # scanner the score says nothing about the label, so a scanner-balanced AUC must be ~0.5 while
    # the pooled AUC is inflated by the scanner shift.
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(900), np.zeros(100), np.ones(100), np.zeros(900)].astype(int)
    g = np.r_[np.full(1000, "A"), np.full(1000, "B")]
    s = np.r_[rng.normal(5, 1, 1000), rng.normal(0, 1, 1000)]
    assert metrics.auc(y, s) > 0.85
    r = metrics.bootstrap(s, y, groups=g, n=50)
    assert r["auc_mean"] == pytest.approx(0.5, abs=0.05)


def test_bootstrap_single_class_scanner_is_skipped_with_warning():
    s, y, g = _two_scanners()
    s = np.r_[s, [0.1, 0.2, 0.3, 0.4]]
    y = np.r_[y, [0, 0, 0, 0]]
    g = np.r_[g, ["C"] * 4]
    with pytest.warns(UserWarning, match="'C' \\(4 real, 0 fake\\)"):
        r = metrics.bootstrap(s, y, groups=g, n=5)
    assert r["skipped_groups"] == [("C", 4, 0)]
    assert r["per_class_per_group"] == {"A": 2, "B": 3}


def test_bootstrap_errors():
    s, y, g = _two_scanners()
    with pytest.raises(DataError, match="no group has both"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            metrics.bootstrap([0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1], groups=["a", "a", "b", "b"], n=3)
    with pytest.raises(DataError, match="groups"):
        metrics.bootstrap(s, y, groups=g[:-1], n=3)
    with pytest.raises(ValueError, match="n must be"):
        metrics.bootstrap(s, y, n=0)

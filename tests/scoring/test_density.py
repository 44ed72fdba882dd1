"""Densities of real features: the Gaussian mixture against scikit-learn and a loop-by-loop NumPy
reference, its checks, and the empirical p-value."""

import numpy as np
import pytest
from scipy import stats
from sklearn.mixture import GaussianMixture

from btd_jax.data.errors import DataError
from btd_jax.scoring.variants import density


def _two_modes(n, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.multivariate_normal([0.0, 0.0, 0.0], np.diag([1.0, 0.5, 0.2]), n // 2)
    b = rng.multivariate_normal([6.0, -3.0, 1.0], [[1.0, 0.6, 0.0], [0.6, 1.0, 0.0], [0.0, 0.0, 0.3]], n - n // 2)
    return np.concatenate([a, b])


def test_mixture_negative_log_density_matches_scikit_learn_and_a_loop():
    real = _two_modes(200)
    mix = density.fit_mixture(real, 2)
    assert np.asarray(mix["means"]).shape == (2, 3) and np.asarray(mix["precisions"]).shape == (2, 3, 3)
    g = GaussianMixture(2, covariance_type="full", reg_covar=density.MIXTURE_REG, n_init=density.MIXTURE_INITS,
                        random_state=0).fit(real)
    np.testing.assert_allclose(mix["weights"], g.weights_, rtol=1e-12)
    f = np.concatenate([real[:5], [[3.0, -1.5, 0.5], [20.0, 20.0, 20.0]]])
    got = density.mixture_nll(f, mix)
    np.testing.assert_allclose(got, -g.score_samples(f), rtol=1e-9)
    want = [-np.log(sum(w * stats.multivariate_normal(m, np.linalg.inv(p)).pdf(x)
                        for w, m, p in zip(mix["weights"], mix["means"], mix["precisions"]))) for x in f[:-1]]
    np.testing.assert_allclose(got[:-1], want, rtol=1e-9)
    assert np.isfinite(got[-1]) and got[-1] > got[:-1].max()  # far outside: finite and largest
    assert got[5] > np.median(got[:5])  # between the two modes is improbable, though near the overall mean


def test_mixture_checks_refuse_malformed_or_underdetermined_fits():
    real = _two_modes(200)
    mix = density.fit_mixture(real, 2)
    assert density.check_mixture(mix, 3) == mix
    for change in ({"weights": [0.5, 0.6]}, {"weights": [1.0, -0.0]}, {"means": [[0.0] * 3]},
                   {"precisions": [np.eye(3).tolist(), (-np.eye(3)).tolist()]},
                   {"precisions": [np.eye(3).tolist(), [[1, 2, 0], [0, 1, 0], [0, 0, 1]]]},
                   {"means": [[np.nan] * 3, [0.0] * 3]}):
        with pytest.raises(DataError, match="positive weights summing to 1"):
            density.check_mixture({**mix, **change}, 3)
    with pytest.raises(DataError, match="malformed mixture"):
        density.check_mixture({"weights": [1.0]}, 3)
    with pytest.raises(DataError, match="needs at least 15 real patches to fit, got 14"):
        density.fit_mixture(real[:14], 3)


def test_empirical_log_p_reads_the_share_of_real_values_at_or_above():
    null = np.arange(1.0, 10.0)  # M = 9: the k-th smallest has p = (9 - k) / 10
    got = density.empirical_log_p(np.array([1.0, 5.0, 9.0, 11.0, 0.0]), null)
    np.testing.assert_allclose(got, -np.log([0.9, 0.5, 0.1, 0.1 * np.exp(-2.0), 0.9]), rtol=1e-12)

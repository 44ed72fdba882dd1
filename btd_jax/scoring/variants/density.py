"""Densities of real patches' features and p-values read from real patches, for one-class scores.

* :func:`fit_mixture` / :func:`mixture_nll`: a Gaussian mixture (full covariances) fitted to real
  features, and the negative log-density of new ones under it, in float64 NumPy;
* :func:`empirical_log_p`: ``-log p`` of a statistic, p read from its sorted values over real patches.

Real patches are not one population: tissue, fat, air-filled organs and the body's edge give
features with several modes and heavy tails, which one Gaussian covers with a broad ellipse that
also holds most fakes; a few Gaussians follow the modes.
"""

from __future__ import annotations

from typing import Dict, List, Mapping

import numpy as np
from scipy.special import logsumexp
from sklearn.mixture import GaussianMixture

from btd_jax.data.errors import DataError

__all__ = ["MIXTURE_REG", "MIXTURE_INITS", "patches_needed", "fit_mixture", "mixture_nll", "check_mixture",
           "empirical_log_p"]

MIXTURE_REG = 1e-3  # added to each covariance's diagonal (features are logs: unit ~ a factor e)
MIXTURE_INITS = 3  # k-means initialisations; the best likelihood is kept


def patches_needed(components: int, features: int) -> int:
    """Real patches a fit of ``components`` Gaussians over ``features`` needs (a mean, a covariance
    that shrinkage or the diagonal term keeps invertible, and two to spare, per Gaussian)."""
    return components * (features + 2)


def fit_mixture(f: np.ndarray, components: int, seed: int = 0) -> Dict[str, List]:
    """(N, F) real features -> {'weights': (K,), 'means': (K, F), 'precisions': (K, F, F)} of a
    ``components``-Gaussian mixture (maximum likelihood, EM from ``seed``'s k-means starts)."""
    f = np.asarray(f, np.float64)
    need = patches_needed(components, f.shape[1])
    if len(f) < need:
        raise DataError(f"oneclass: a mixture of {components} Gaussians over {f.shape[1]} features needs at least "
                        f"{need} real patches to fit, got {len(f)}; fit more, or components=1")
    g = GaussianMixture(components, covariance_type="full", reg_covar=MIXTURE_REG, n_init=MIXTURE_INITS,
                        random_state=seed).fit(f)
    return {"weights": g.weights_.tolist(), "means": g.means_.tolist(), "precisions": g.precisions_.tolist()}


def check_mixture(mixture: Mapping[str, object], features: int) -> Dict[str, List]:
    """The mixture's arrays as lists, after checking shapes, finiteness, weights and positive-definite
    precisions; a malformed mixture raises DataError."""
    try:
        w, mu, p = (np.asarray(mixture[k], np.float64) for k in ("weights", "means", "precisions"))
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"oneclass reference: malformed mixture ({e!r})") from None
    k = len(w)
    ok = (w.ndim == 1 and k >= 1 and mu.shape == (k, features) and p.shape == (k, features, features)
          and all(np.isfinite(a).all() for a in (w, mu, p)) and np.all(w > 0) and abs(w.sum() - 1) < 1e-6)
    if ok:
        ok = all(np.allclose(pk, pk.T) and np.linalg.eigvalsh(pk).min() > 0 for pk in p)
    if not ok:
        raise DataError(f"oneclass reference: the mixture needs positive weights summing to 1, (K, {features}) "
                        f"means and symmetric positive-definite (K, {features}, {features}) precisions; got "
                        f"weights {w.shape}, means {mu.shape}, precisions {p.shape}")
    return {"weights": w.tolist(), "means": mu.tolist(), "precisions": p.tolist()}


def mixture_nll(f: np.ndarray, mixture: Mapping[str, object]) -> np.ndarray:
    """(N, F) features -> (N,) float64 ``-log density`` under the mixture:
    ``-logsumexp_k [log w_k + log N(f; mu_k, P_k^-1)]``."""
    f = np.asarray(f, np.float64)
    w, mu, p = (np.asarray(mixture[k], np.float64) for k in ("weights", "means", "precisions"))
    d = f[:, None, :] - mu[None]  # (N, K, F)
    quad = np.einsum("nkf,kfg,nkg->nk", d, p, d)
    log_det = np.linalg.slogdet(p)[1]  # log |P_k| = -log |Sigma_k|
    log_n = 0.5 * (log_det - quad - f.shape[1] * np.log(2 * np.pi))
    return -logsumexp(np.log(w) + log_n, axis=1)


def empirical_log_p(x: np.ndarray, null: np.ndarray) -> np.ndarray:
    """(N,) values -> (N,) ``-log p``, p the share of the (M,) sorted ``null`` values at or above x.

    The k-th smallest null value has p = (M - k) / (M + 1); log p is interpolated between them and
    falls by one per unit above the largest (``x`` is a ``-log p`` or a negative log-density there)."""
    null = np.asarray(null, np.float64)
    m = len(null)
    log_p = np.interp(x, null, np.log((m - np.arange(m)) / (m + 1.0)))
    return np.where(x > null[-1], np.log(m + 1.0) + (x - null[-1]), -log_p)

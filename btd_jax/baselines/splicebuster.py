"""SpliceBuster-style detector: co-occurrence features of the noise residual, a per-image 2-component GMM.

Reference: D. Cozzolino, G. Poggi, L. Verdoliva, "Splicebuster: a new blind image splicing detector",
IEEE WIFS 2015 (the "Splice Buster" of the BTD paper's baselines, section 4). The original
computes a high-pass noise residual (third-order linear predictor), quantises and truncates it
(step q, T = 1), takes co-occurrence histograms of four neighbouring residuals in sliding windows
as local features (square-rooted, PCA-reduced), and fits a two-class model per image with EM --
Gaussian mixture or Gaussian + uniform outlier -- whose posterior map segments the spliced region.

Here (NumPy / scikit-learn): the same residual ``x[j-1] - 3x[j] + 3x[j+1] - x[j+2]`` horizontally
and vertically, T = 1, horizontal and vertical 4-pixel co-occurrences pooled into one 81-bin
histogram per ``window`` x ``window`` block (stride ``stride``), square root, PCA to ``pca_dims``
and a per-image ``sklearn.mixture.GaussianMixture(2)``. What differs: (1) the windows are far
smaller (16 px instead of 128 px) because the patches are 96-128 px; (2) q and the PCA basis are
learned from the real training patches (the original fixes q and uses the image's own PCA), which
is what ``fit`` does; (3) the symmetry-based bin merging and the Gaussian+uniform variant are not
used, the mixture has diagonal covariances; (4) the output must be one number per patch, so the
score is how differently the mixture treats the centre and the surroundings: with
``llr = log N(f; comp 0) - log N(f; comp 1)`` per window (clipped to +-50), the score is
``|mean llr(centre windows) - mean llr(other windows)|`` (label-switch invariant), the centre being
a square of ``center`` px (default ``center_fraction`` of the side). On the tiny synthetic test
this likelihood contrast separated better than the posterior contrast (AUC ~0.9 vs ~0.85).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Optional

import numpy as np
from scipy import ndimage
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits

from btd_jax.baselines import base

__all__ = ["Config", "TINY", "residuals", "cooccurrence_codes", "window_histograms", "centre_windows",
           "llr_contrast", "fit", "score", "BASELINE"]

_PREDICTOR = np.array([-1.0, 3.0, -3.0, 1.0])  # x[j-1] - 3x[j] + 3x[j+1] - x[j+2] (correlation order)
_T = 1
_BINS = (2 * _T + 1) ** 4
_LLR_CLIP = 50.0
_CHUNK = 16  # patches per histogram pass: the one-hot codes take N*H*W*81 floats


@dataclasses.dataclass(frozen=True)
class Config:
    window: int = 16
    stride: int = 4
    pca_dims: int = 8
    q_scale: float = 1.0  # q = q_scale * std of the training residuals
    center_fraction: float = 1 / 3
    max_train_patches: int = 500  # subsample for q and the PCA fit
    seed: int = 0


TINY = Config(window=4, stride=2, pca_dims=4, center_fraction=0.5)


def residuals(x: np.ndarray) -> tuple:
    """(N,H,W) -> horizontal and vertical third-order residuals, each (N,H,W) (reflect padding)."""
    w = -_PREDICTOR  # correlate1d: sum_k w[k] x[j + k - 1]
    return (ndimage.correlate1d(x, w, axis=2, mode="reflect", origin=-1),
            ndimage.correlate1d(x, w, axis=1, mode="reflect", origin=-1))


def cooccurrence_codes(r: np.ndarray, q: float, axis: int) -> np.ndarray:
    """Quantised, truncated residual r (N,H,W) -> (N,H,W) int code in [0, 81) of 4 neighbours along ``axis``."""
    rq = np.clip(np.round(r / q), -_T, _T).astype(np.int64) + _T
    pad = [(0, 0)] * 3
    pad[axis] = (0, 3)
    rp = np.pad(rq, pad, mode="edge")
    n = r.shape[axis]
    code = np.zeros(r.shape, np.int64)
    for k in range(4):
        code += np.take(rp, np.arange(k, k + n), axis=axis) * (2 * _T + 1) ** k
    return code


def window_histograms(x: np.ndarray, q: float, window: int, stride: int) -> np.ndarray:
    """(N,H,W) -> (N, P, 81) normalised co-occurrence histograms of the P sliding windows."""
    n, h, w = x.shape
    if not 0 < window <= min(h, w):
        raise ValueError(f"window {window} does not fit {h}x{w} patches")
    rh, rv = residuals(x)
    codes = np.stack([cooccurrence_codes(rh, q, 2), cooccurrence_codes(rv, q, 1)], axis=-1)  # (N,H,W,2)
    flat = (np.arange(n * h * w)[:, None] * _BINS + codes.reshape(-1, 2)).ravel()
    onehot = np.bincount(flat, minlength=n * h * w * _BINS).reshape(n, h, w, _BINS).astype(np.float32)
    integral = np.pad(onehot.cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0), (0, 0)))
    top = np.arange(0, h - window + 1, stride)
    left = np.arange(0, w - window + 1, stride)
    t, l = np.meshgrid(top, left, indexing="ij")
    t, l = t.ravel(), l.ravel()
    box = (integral[:, t + window, l + window] - integral[:, t, l + window]
           - integral[:, t + window, l] + integral[:, t, l])
    return box / (2 * window * window)


def centre_windows(side: int, window: int, stride: int, center: int) -> np.ndarray:
    """(P,) bool: windows whose centre lies strictly inside the central ``center`` x ``center`` square."""
    mids = np.arange(0, side - window + 1, stride) + window / 2
    lo, hi = (side - center) / 2, (side + center) / 2
    inside = (mids > lo) & (mids < hi)
    return (inside[:, None] & inside[None, :]).ravel()


def _features(x: np.ndarray, arrays, cfg: Config) -> np.ndarray:
    hist = np.sqrt(window_histograms(x, float(arrays["q"]), cfg.window, cfg.stride))
    return (hist - arrays["pca_mean"]) @ arrays["pca_components"].T


def fit(train_patches: np.ndarray, cfg: Optional[Config] = None, key=None) -> base.State:
    """Learns the quantisation step q and the PCA basis of the window features from real patches."""
    del key  # deterministic given cfg.seed
    cfg = cfg or Config()
    x = base.check_patches(train_patches, "train_patches").astype(np.float64)
    rng = np.random.default_rng(cfg.seed)
    if len(x) > cfg.max_train_patches:
        x = x[rng.choice(len(x), cfg.max_train_patches, replace=False)]
    rh, rv = residuals(x)
    q = cfg.q_scale * float(np.sqrt(np.mean(np.concatenate([rh.ravel(), rv.ravel()]) ** 2))) + 1e-12
    feats = np.sqrt(np.concatenate([window_histograms(x[i:i + _CHUNK], q, cfg.window, cfg.stride).reshape(-1, _BINS)
                                    for i in range(0, len(x), _CHUNK)]))
    mean = feats.mean(axis=0)
    _, _, vt = np.linalg.svd(feats - mean, full_matrices=False)
    comps = vt[:cfg.pca_dims]
    return base.State("splicebuster", cfg, {"q": np.float64(q), "pca_mean": mean, "pca_components": comps,
                                            "side": np.int32(x.shape[1])})


def _diag_logpdf(f: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """(P,D) features -> (P,) log N(f; mean, diag(var))."""
    return -0.5 * np.sum((f - mean) ** 2 / var + np.log(2 * np.pi * var), axis=1)


def llr_contrast(f: np.ndarray, centre: np.ndarray, seed: int = 0) -> float:
    """|mean LLR(centre) - mean LLR(rest)| of a 2-component diagonal GMM fitted to one image's features.

    ``f`` (P,D) local features, ``centre`` (P,) bool. Shared with the SpliceRadar-style baseline.
    """
    gmm = GaussianMixture(2, covariance_type="diag", reg_covar=1e-4, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.fit(f)
    llr = _diag_logpdf(f, gmm.means_[0], gmm.covariances_[0]) - _diag_logpdf(f, gmm.means_[1], gmm.covariances_[1])
    llr = np.clip(llr, -_LLR_CLIP, _LLR_CLIP)  # one far outlier window must not dominate the mean
    return float(abs(llr[centre].mean() - llr[~centre].mean()))


def score(state: base.State, patches: np.ndarray, center: Optional[int] = None, batch_size: int = _CHUNK) -> np.ndarray:
    """Per-image GMM log-likelihood-ratio contrast of centre vs surrounding windows -> (N,) >= 0."""
    cfg, side = state.config, int(state.arrays["side"])
    x = base.check_patches(patches, side=side).astype(np.float64)
    center = int(round(cfg.center_fraction * side)) if center is None else center
    centre = centre_windows(side, cfg.window, cfg.stride, center)
    if centre.all() or not centre.any():
        raise ValueError(f"center={center} leaves no windows inside or outside the centre "
                         f"(window {cfg.window}, stride {cfg.stride}, side {side})")
    out = np.empty(len(x))
    step = max(1, min(batch_size, _CHUNK))
    with threadpool_limits(1):  # many tiny EM fits: BLAS threads only contend (40x slower measured)
        for i in range(0, len(x), step):
            feats = _features(x[i:i + step], state.arrays, cfg)
            out[i:i + len(feats)] = [llr_contrast(f, centre, cfg.seed) for f in feats]
    return out


BASELINE = base.Baseline("splicebuster", Config, TINY, fit, score,
                         "noise-residual co-occurrence features + per-image 2-component GMM",
                         display_name="Splice Buster")

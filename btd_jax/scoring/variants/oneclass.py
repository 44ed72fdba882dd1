"""``oneclass``: is this region's behaviour under the model unusual *for this patch*? Fitted on real patches.

The paper's score assumes a fake leaves a *larger* residual than real tissue; content made by a
diffusion model is often reconstructed *better* than real tissue (DIRE, AEROBLADE, ZED: "surprise"
in both directions). This variant describes each patch by a few context-referenced features of its
d = 1 residual map ``r`` and of its image's high-pass energy ``h = (x - gauss(x, 1))^2`` (the patch is
its own reference: ratios of the central window to the same patch's surround remove patient and
scanner level), models real patches' features by a density, and scores

    -log p(density term)  -  sum over tails of log p(+-z(f_tail))

Fisher's combination of a two-sided p-value (how improbable the features are under the density) and
one-sided tails (a feature standardised over real patches, read in one direction). The density is a
mixture of :data:`DEFAULT_COMPONENTS` Gaussians (real patches have several modes, :mod:`.density`;
its term: the negative log-density) or, with ``components=1``, one Ledoit-Wolf Gaussian (as PaDiM;
its term: the Mahalanobis distance). Each p-value is the share of the reference's own real patches at
least as extreme (``null="empirical"``: interpolated between them, the model's tail beyond; each
real patch's value from a model fitted without its fold), so that real features with heavier tails
than the model do not dominate the sum; ``null="gaussian"`` (one Gaussian) reads the chi-square and
normal laws. The default tails (:data:`DEFAULT_TAILS`) are the paper's (``+log_energy``: what BTD
catches stays caught) and two of generated content (``-hp_log_ratio``, ``-hp_log_inner_ratio``: a
centre smoother than its surround, as diffusion and latent in-painting leave: 0.45-0.79 of the
surround's noise, against 0.94-1.15 for real patches). Windows: ``center`` (the config's, else half
the patch) and its inner half; the surround is the patch outside ``center``.

Features (default :data:`DEFAULT_FEATURES`; a reference records the ones it uses and is refused by any other):

* ``log_energy``: log mean of r over the centre (the paper's score, in logs);
* ``log_ratio`` / ``log_max_ratio`` / ``log_inner_ratio``: log of r's centre mean / centre max /
  inner-window mean over r's surround mean;
* ``hp_log_ratio`` / ``hp_log_inner_ratio``: the same two means of h;
* ``t<k>_log_ratio`` / ``t<k>_log_inner_ratio`` / ``t<k>_log_max_ratio``: of the residual of one
  reverse step from start time k (needs a model trained at that t and a key), for k in ``start_ts``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage as ndi
from scipy import stats
from sklearn.covariance import LedoitWolf

from btd_jax import keys
from btd_jax.configs import ScoreConfig
from btd_jax.data.errors import DataError
from btd_jax.scoring.variants import reference as ref_file
from btd_jax.scoring.variants.density import (check_mixture, empirical_log_p, fit_mixture, mixture_nll,
                                              patches_needed)
from btd_jax.scoring.variants.maps import map_options
from btd_jax.scoring.variants.registry import Call, Variant, register

__all__ = ["REFERENCE_FILE", "DEFAULT_FEATURES", "DEFAULT_TAILS", "DEFAULT_COMPONENTS", "NULLS", "EPS", "windows",
           "highpass_energy", "features", "OneClassReference", "fit_features", "gaussian_components", "empirical_log_p",
           "score_features", "feature_maps", "score", "fit", "from_maps"]

REFERENCE_FILE = "oneclass_reference.json"  # its default name in a workdir
EPS = 1e-10  # added before every log: a clipped residual can be exactly 0
HP_SIGMA = 1.0
DEFAULT_FEATURES: Tuple[str, ...] = ("log_energy", "log_ratio", "log_max_ratio", "log_inner_ratio", "hp_log_ratio",
                                     "hp_log_inner_ratio")
# One-sided tails: '+name' flags values above the real patches', '-name' below.
DEFAULT_TAILS: Tuple[str, ...] = ("+log_energy", "-hp_log_ratio", "-hp_log_inner_ratio")
PAPER_TAIL = "+log_energy"
NULLS = ("empirical", "gaussian")  # where each component's p-value is read; see the module docstring
NULL_FOLDS = 5  # the empirical null's values are cross-fitted over this many folds
DEFAULT_COMPONENTS = 3  # Gaussians in the density of real features (1: one Ledoit-Wolf Gaussian)


def windows(size: int, center: Optional[int]) -> Tuple[int, int]:
    """(centre k, inner k) for ``size``-pixel patches: ``center`` (default size // 2) and its half."""
    k = size // 2 if center is None else int(center)
    if not 2 <= k < size:
        raise DataError(f"oneclass needs a central window of 2 .. {size - 1} pixels inside the {size}-pixel patch "
                        f"(a surround to compare with), got {k}")
    return k, max(k // 2, 1)


def highpass_energy(images: np.ndarray, sigma: float = HP_SIGMA) -> np.ndarray:
    """(N, H, W[, C]) -> (N, H, W) float64 ``(x - gaussian(x, sigma))^2`` averaged over channels."""
    x = np.asarray(images, np.float64)
    x = x[..., None] if x.ndim == 3 else x
    smooth = ndi.gaussian_filter(x, (0, sigma, sigma, 0), mode="reflect")
    return np.mean((x - smooth) ** 2, axis=-1)


def _window(maps, k: int):
    h, w = maps.shape[-2:]
    r, c = (h - k) // 2, (w - k) // 2
    return maps[..., r:r + k, c:c + k]


def _stats(m, center: int, inner: int, xp) -> Dict[str, Any]:
    """log centre mean, log centre max, log inner mean and log surround mean of (N, H, W) maps."""
    n, h, w = m.shape
    cen = _window(m, center).reshape(n, -1)
    total = m.reshape(n, -1).sum(axis=1)
    sur_mean = (total - cen.sum(axis=1)) / (h * w - center * center)
    return {"c": xp.log(cen.mean(axis=1) + EPS), "max": xp.log(cen.max(axis=1) + EPS),
            "in": xp.log(_window(m, inner).reshape(n, -1).mean(axis=1) + EPS), "s": xp.log(sur_mean + EPS)}


_KINDS = ("energy", "ratio", "max_ratio", "inner_ratio")


def _parse(name: str) -> Tuple[str, str]:
    """'hp_log_inner_ratio' -> ('hp', 'inner_ratio'); 'log_ratio' -> ('r', 'ratio'); 'log_energy' -> ('r', 'energy')."""
    prefix, sep, kind = name.rpartition("log_")
    if not sep or kind not in _KINDS or (prefix and not (prefix == "hp_" or (prefix[0] == "t" and prefix[1:-1].isdigit()
                                                                             and prefix.endswith("_")))):
        raise DataError(f"unknown oneclass feature {name!r}; known: {', '.join(DEFAULT_FEATURES)}, "
                        "t<k>_log_ratio, t<k>_log_inner_ratio, t<k>_log_max_ratio")
    if kind == "energy" and prefix:
        raise DataError(f"unknown oneclass feature {name!r}: only the residual has 'log_energy'")
    return (prefix[:-1] if prefix else "r"), kind


def features(maps: Mapping[str, Any], names: Sequence[str], center: int, inner: int, xp: Any = np) -> Any:
    """(N, F) features ``names`` from ``maps``: 'r' (the d = 1 residual), 'hp' (high-pass energy) and
    't<k>' (residuals from start time k), each (N, H, W); ``xp`` is numpy or jax.numpy."""
    cache: Dict[str, Dict[str, Any]] = {}
    out = []
    for name in names:
        key, kind = _parse(name)
        if key not in cache:
            if key not in maps:
                raise ValueError(f"feature {name!r} needs the {key!r} map, which was not computed")
            cache[key] = _stats(maps[key], center, inner, xp)
        s = cache[key]
        out.append(s["c"] if kind == "energy" else {"ratio": s["c"], "max_ratio": s["max"],
                                                     "inner_ratio": s["in"]}[kind] - s["s"])
    return xp.stack(out, axis=1)


def _check_names(names: Sequence[str]) -> Tuple[str, ...]:
    names = tuple(str(n) for n in names)
    if "log_energy" not in names:
        raise DataError("oneclass features must include 'log_energy' (the paper's score keeps its one-sided tail)")
    if len(set(names)) != len(names):
        raise DataError(f"oneclass features repeat a name: {names}")
    for n in names:
        _parse(n)
    return names


def _check_tails(tails: Sequence[str], names: Sequence[str]) -> Tuple[str, ...]:
    """'+feature' / '-feature' tails of features in ``names``; the paper's ``+log_energy`` is always one."""
    tails = tuple(str(t) for t in tails)
    if PAPER_TAIL not in tails:
        raise DataError(f"oneclass tails must include {PAPER_TAIL!r} (the paper's one-sided score)")
    if len(set(tails)) != len(tails):
        raise DataError(f"oneclass tails repeat a name: {tails}")
    for t in tails:
        if t[:1] not in "+-" or t[1:] not in names:
            raise DataError(f"oneclass tail {t!r}: expected '+' or '-' and one of the features {', '.join(names)}")
    return tails


def _check_null(null: str, null_sorted=None, components: int = 0, gaussians: int = 1) -> None:
    """``null`` is one of :data:`NULLS` (the laws only for one Gaussian); with ``null_sorted``, the
    empirical null's rows are valid."""
    if null not in NULLS:
        raise DataError(f"oneclass: null {null!r}; known: {', '.join(NULLS)}")
    if null == "gaussian" and gaussians != 1:
        raise DataError(f"oneclass: null 'gaussian' reads the chi-square law of one Gaussian; a mixture of "
                        f"{gaussians} has no law: use null='empirical' or components=1")
    if null == "gaussian" or null_sorted is None:
        return
    v = np.asarray(null_sorted, np.float64)
    if v.ndim != 2 or v.shape[0] != components or v.shape[1] < 2 or not np.isfinite(v).all() \
            or np.any(np.diff(v, axis=1) < 0):
        raise DataError(f"oneclass reference: the empirical null needs {components} sorted, finite rows of the "
                        f"real patches' values, got shape {v.shape}")


@dataclasses.dataclass(frozen=True)
class OneClassReference:
    """A density of real patches' features and its one-sided tails.

    ``features``: names in order; ``tails``: '+feature' / '-feature' read one-sided, with
    ``tail_mean``/``tail_std`` over the real patches; ``center``/``inner``: the windows;
    ``start_ts``: start times of ``t<k>`` features; ``score``: the ScoreConfig fields the maps were
    made with; ``model``: the fingerprint of the parameters; ``n``: real patches; ``shrinkage``:
    Ledoit-Wolf's; ``components``: Gaussians in the density (``mean``/``precision`` are the one
    Gaussian's; ``mixture``: weights, means, precisions when more); ``null``: one of :data:`NULLS`;
    ``null_sorted``: for the empirical null, each term over the real patches (cross-fitted), sorted
    (the density term, then the tails).
    """

    features: Tuple[str, ...]
    mean: Tuple[float, ...]
    precision: Tuple[Tuple[float, ...], ...]
    tails: Tuple[str, ...]
    tail_mean: Tuple[float, ...]
    tail_std: Tuple[float, ...]
    center: int
    inner: int
    n: int
    shrinkage: float = 0.0
    start_ts: Tuple[int, ...] = ()
    score: Dict[str, Any] = dataclasses.field(default_factory=dict)
    model: Optional[str] = None
    null: str = "gaussian"
    null_sorted: Tuple[Tuple[float, ...], ...] = ()
    components: int = 1
    mixture: Dict[str, Any] = dataclasses.field(default_factory=dict)
    variant = "oneclass"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(features=list(self.features), mean=list(self.mean), precision=[list(r) for r in self.precision],
                 tails=list(self.tails), tail_mean=list(self.tail_mean), tail_std=list(self.tail_std),
                 start_ts=list(self.start_ts), null_sorted=[list(r) for r in self.null_sorted], variant=self.variant)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "OneClassReference":
        try:
            names = _check_names(d["features"])
            ref = cls(features=names, mean=tuple(float(v) for v in d["mean"]),
                      precision=tuple(tuple(float(v) for v in r) for r in d["precision"]),
                      tails=_check_tails(d["tails"], names), tail_mean=tuple(float(v) for v in d["tail_mean"]),
                      tail_std=tuple(float(v) for v in d["tail_std"]), center=int(d["center"]),
                      inner=int(d["inner"]), n=int(d["n"]),
                      shrinkage=float(d.get("shrinkage", 0.0)), start_ts=tuple(int(t) for t in d.get("start_ts", ())),
                      score=dict(d.get("score", {})), model=d.get("model"), null=str(d.get("null", "gaussian")),
                      null_sorted=tuple(tuple(float(v) for v in r) for r in d.get("null_sorted", ())),
                      components=int(d.get("components", 1)), mixture=dict(d.get("mixture", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"oneclass reference: malformed ({e!r})") from None
        k = len(ref.features)
        p = np.asarray(ref.precision)
        if len(ref.mean) != k or p.shape != (k, k) or not np.isfinite(p).all() or not np.isfinite(ref.mean).all():
            raise DataError(f"oneclass reference: mean/precision do not match its {k} features")
        t_mean, t_std = np.asarray(ref.tail_mean), np.asarray(ref.tail_std)
        if t_mean.shape != (len(ref.tails),) or t_std.shape != t_mean.shape or not np.isfinite(t_mean).all() \
                or not np.all(t_std > 0):
            raise DataError(f"oneclass reference: needs a finite mean and a positive std for each of its "
                            f"{len(ref.tails)} tails")
        _check_null(ref.null, ref.null_sorted, 1 + len(ref.tails), ref.components)
        if ref.components != 1 or ref.mixture:
            mixture = check_mixture(ref.mixture, k)
            if len(mixture["weights"]) != ref.components:
                raise DataError(f"oneclass reference: {ref.components} components but a mixture of "
                                f"{len(mixture['weights'])}")
        return ref

    def save(self, path: str) -> str:
        """Writes JSON to ``path`` (a file, or a folder: ``path/oneclass_reference.json``); returns the file."""
        return ref_file.save(self.to_dict(), path, REFERENCE_FILE)

    @classmethod
    def load(cls, path: str) -> "OneClassReference":
        return ref_file.read(path, {cls.variant: cls.from_dict}, name=REFERENCE_FILE)


def fit_features(f: np.ndarray, names: Sequence[str], center: int, inner: int,
                 tails: Sequence[str] = (PAPER_TAIL,), null: str = "empirical",
                 components: int = DEFAULT_COMPONENTS, **meta: Any) -> OneClassReference:
    """Fits the reference to (N, F) features of REAL patches: a density of ``components`` Gaussians
    (1: Ledoit-Wolf covariance) and one-sided ``tails``; ``null="empirical"`` also keeps each term's
    cross-fitted values over these patches."""
    names = _check_names(names)
    tails = _check_tails(tails, names)
    f = np.asarray(f, np.float64)
    if f.ndim != 2 or f.shape[1] != len(names):
        raise DataError(f"features: expected (N, {len(names)}), got {f.shape}")
    need = patches_needed(1, len(names))
    if len(f) < need:
        raise DataError(f"oneclass: need at least {need} real patches to fit {len(names)} features, got {len(f)}")
    bad = ~np.isfinite(f).all(axis=1)
    if bad.any():
        raise DataError(f"real patches: features of item {int(np.argmax(bad))} are NaN or inf")
    if int(components) < 1:
        raise DataError(f"oneclass: components must be at least 1, got {components}")
    _check_null(null, gaussians=int(components))
    ref = _fit_model(f, names, center, inner, tails, int(components), **meta)
    if null == "gaussian":
        return ref
    null_sorted = tuple(tuple(np.sort(c).tolist()) for c in _cross_fitted_terms(f, ref))
    return dataclasses.replace(ref, null=null, null_sorted=null_sorted)


def _fit_model(f: np.ndarray, names: Tuple[str, ...], center: int, inner: int, tails: Tuple[str, ...],
               components: int, **meta: Any) -> OneClassReference:
    """The density and the tails' statistics of checked features ``f``, without a null."""
    lw = LedoitWolf().fit(f)
    cols = f[:, [names.index(t[1:]) for t in tails]]
    return OneClassReference(features=names, mean=tuple(lw.location_.tolist()),
                             precision=tuple(tuple(r) for r in lw.precision_.tolist()), tails=tails,
                             tail_mean=tuple(cols.mean(axis=0).tolist()),
                             tail_std=tuple(np.maximum(cols.std(axis=0, ddof=1), 1e-6).tolist()), center=center,
                             inner=inner, n=len(f), shrinkage=float(lw.shrinkage_), components=components,
                             mixture=fit_mixture(f, components) if components > 1 else {}, **meta)


def _cross_fitted_terms(f: np.ndarray, ref: OneClassReference) -> np.ndarray:
    """(1 + tails, N) terms of each real patch under a model fitted without its fold, so that the null
    sees the real patches as a new patch is seen (out of sample); folds interleave the rows."""
    fold = np.arange(len(f)) % NULL_FOLDS
    need = patches_needed(ref.components, len(ref.features))
    if int(np.sum(fold != 0)) < need:
        way_out = "null='gaussian'" if ref.components == 1 else "components=1"
        raise DataError(f"oneclass: the empirical null needs at least {need} real patches outside each of its "
                        f"{NULL_FOLDS} folds (got {len(f)} patches); fit more, or {way_out}")
    out = np.empty((1 + len(ref.tails), len(f)))
    for k in range(NULL_FOLDS):
        rest = fold != k
        out[:, ~rest] = gaussian_components(f[~rest], _fit_model(f[rest], ref.features, ref.center, ref.inner,
                                                                 ref.tails, ref.components))
    return out


def gaussian_components(f: np.ndarray, ref: OneClassReference) -> np.ndarray:
    """(N, F) features -> (1 + tails, N) float64 terms under the model: the density term (one Gaussian:
    ``-log p_chi2`` of the Mahalanobis distance; a mixture: the negative log-density), then
    ``-log p_normal`` of each one-sided tail."""
    f = np.asarray(f, np.float64)
    if ref.components > 1:
        out = [mixture_nll(f, ref.mixture)]
    else:
        d = f - np.asarray(ref.mean)
        d2 = np.einsum("nf,fg,ng->n", d, np.asarray(ref.precision), d)
        out = [-stats.chi2.logsf(np.maximum(d2, 0.0), len(ref.features))]
    for t, mu, sd in zip(ref.tails, ref.tail_mean, ref.tail_std):
        sign = 1.0 if t[0] == "+" else -1.0
        out.append(-stats.norm.logsf(sign * (f[:, ref.features.index(t[1:])] - mu) / sd))
    return np.stack(out)


def score_features(f: np.ndarray, ref: OneClassReference) -> np.ndarray:
    """(N, F) features -> (N,) float64: the sum of the terms' ``-log p`` (Fisher), each read from the
    reference's null (:data:`NULLS`)."""
    c = gaussian_components(f, ref)
    if ref.null == "gaussian":
        return c.sum(axis=0)
    return sum(empirical_log_p(ci, np.asarray(ni)) for ci, ni in zip(c, ref.null_sorted))


def _start_ts(names: Sequence[str]) -> Tuple[int, ...]:
    return tuple(sorted({int(_parse(n)[0][1:]) for n in names if _parse(n)[0].startswith("t")}))


def _image_maps(images, residual, names: Sequence[str]) -> Dict[str, np.ndarray]:
    """{'r': the d = 1 residual maps, 'hp': the images' high-pass energy when ``names`` use it}."""
    maps = {"r": np.asarray(residual, np.float64)}
    if any(n.startswith("hp_") for n in names):
        maps["hp"] = highpass_energy(images)
    return maps


def _score_maps(maps: Mapping[str, np.ndarray], ref: OneClassReference) -> np.ndarray:
    return score_features(features(maps, ref.features, ref.center, ref.inner), ref)


def feature_maps(model, images, s: ScoreConfig, call: Call, names: Sequence[str]) -> Dict[str, np.ndarray]:
    """The maps ``names`` need: 'r' at ``s.start_t``, 'hp' from the images, 't<k>' from start time k."""
    opts = map_options(s)
    maps = _image_maps(images, model.residual_map(images, steps=s.steps, start_t=s.start_t, key=call.key,
                                                  batch_size=s.batch_size, progress=call.progress, **opts), names)
    for t in _start_ts(names):
        if call.key is None:
            raise ValueError(f"oneclass feature t{t}_* adds noise: pass key=jax.random.key(seed)")
        maps[f"t{t}"] = np.asarray(model.residual_map(images, steps=1, start_t=t, key=keys.item_key(call.key, t),
                                                      batch_size=s.batch_size, **opts))
    return maps


def score(model, images, s: ScoreConfig, call: Call) -> np.ndarray:
    """Scores with the reference's own features, windows and scoring settings."""
    ref = call.reference
    if ref is None:
        raise ValueError("variant 'oneclass' needs a reference fitted on real patches (btd-jax score --variant "
                         "oneclass --fit_reference REF.json --input REAL)")
    return _score_maps(feature_maps(model, images, ref_file.settings_of(ref, s), call, ref.features), ref)


def from_maps(images, maps, s: ScoreConfig, ref: OneClassReference) -> np.ndarray:
    """Windows' images (N, H, W[, C]) and d = 1 residual maps (N, H, W) at the reference's settings ->
    (N,) scores; features of other start times (``t<k>_*``) need more passes and are refused."""
    if ref.start_ts:
        raise ValueError(f"this oneclass reference uses features of start times {list(ref.start_ts)}, which need "
                         "one more pass per window; screening takes references of one residual map")
    return _score_maps(_image_maps(images, maps, ref.features), ref)


def fit(model, real_images, s: ScoreConfig, call: Call) -> OneClassReference:
    """The reference of REAL patches; ``call.options``: ``features`` (default :data:`DEFAULT_FEATURES`),
    ``tails`` (default :data:`DEFAULT_TAILS`, those of them whose feature is used), ``components``
    (default :data:`DEFAULT_COMPONENTS`) and ``null`` (default ``"empirical"``)."""
    names = _check_names(call.options.get("features") or DEFAULT_FEATURES)
    tails = call.options.get("tails") or tuple(t for t in DEFAULT_TAILS if t[1:] in names)
    size = int(np.shape(real_images)[1])
    center, inner = windows(size, s.center)
    maps = feature_maps(model, real_images, s, call, names)
    return fit_features(features(maps, names, center, inner), names, center, inner, tails,
                        null=call.options.get("null") or "empirical",
                        components=int(call.options.get("components", DEFAULT_COMPONENTS)),
                        start_ts=_start_ts(names), score=s.scoring_dict(), model=ref_file.model_fingerprint(model))


register(Variant("oneclass", "Fisher's combination of a Gaussian-mixture density of context-referenced residual "
                 "and high-pass features of real patches (two-sided), the paper's one-sided tail and too-smooth-centre "
                 "tails, each p-value read from the real patches' own distribution", score, fit=fit,
                 decode=OneClassReference.from_dict, reference_file=REFERENCE_FILE, from_maps=from_maps))

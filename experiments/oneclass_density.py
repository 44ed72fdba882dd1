"""Which density of real patches' features the one-class score reads: one Gaussian or a few, and others.

    python -m experiments.oneclass_density --work WORK --out experiments/results/oneclass_density.json

``WORK`` is the cache of ``experiments.oneclass`` (its detectors and sets). For CT and MRI and the
``demo`` detectors trained 800 and 5,000 steps (low-t law), the features of the 512 real reference
patches and of every set are computed once; then each density is fitted on the real patches and
scored with the same tails and the same empirical null (cross-fitted over 5 folds): one Ledoit-Wolf
Gaussian (``components=1``), mixtures of 2-5 Gaussians (3 is the default; 3 also from two other
seeds of its k-means starts), a Gaussian copula
(each feature mapped to normal scores through the real patches' ranks, then one Gaussian) and the
mean distance to the k = 5 nearest real patches (standardised features). Plain AUC per set (no
bootstrap: the choice is compared on the same patches), and per detector the lowest AUC over the
generative sets and over the hand-made ones, the mean, and the largest loss against the paper's score
where that is >= 0.85. Also, per detector, the real features' skewness and excess kurtosis and the
BIC of mixtures of 1-6 Gaussians fitted to them (``real_features``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import NearestNeighbors

from btd_jax import evaluate
from btd_jax.score import Scorer
from btd_jax.scoring.variants import density, oneclass as oc
from experiments import attacks_common as common
from experiments import oneclass as experiment

WINDOWS = oc.windows(experiment.SIZE, experiment.CENTER)  # (centre, inner)
Stat = Callable[[np.ndarray], np.ndarray]  # (N, F) features -> (N,) larger = less like real patches


def features_of(scorer: Scorer, images: np.ndarray) -> np.ndarray:
    maps = {"r": np.asarray(scorer.residual_map(images), np.float64), "hp": oc.highpass_energy(images)}
    return oc.features(maps, oc.DEFAULT_FEATURES, *WINDOWS)


def _mixture(k: int, seed: int = 0) -> Callable[[np.ndarray], Stat]:
    def fit(real):
        mix = density.fit_mixture(real, k, seed)
        return lambda f: density.mixture_nll(f, mix)
    return fit


def _gaussian(real: np.ndarray) -> Stat:
    ref = oc.fit_features(real, oc.DEFAULT_FEATURES, *WINDOWS, null="gaussian", components=1)
    return lambda f: oc.gaussian_components(f, ref)[0]


def _copula(real: np.ndarray) -> Stat:
    srt, n = np.sort(real, axis=0), len(real)
    z, sd = stats.norm.ppf(np.arange(1, n + 1) / (n + 1.0)), real.std(axis=0)

    def to_normal(f):
        out = np.stack([np.interp(f[:, j], srt[:, j], z) for j in range(f.shape[1])], 1)
        out = np.where(f > srt[-1], z[-1] + (f - srt[-1]) / sd, out)  # linear beyond the real range
        return np.where(f < srt[0], z[0] + (f - srt[0]) / sd, out)
    inner = _gaussian(to_normal(real))
    return lambda f: inner(to_normal(f))


def _knn(real: np.ndarray, k: int = 5) -> Stat:
    mu, sd = real.mean(axis=0), real.std(axis=0)
    nn = NearestNeighbors(n_neighbors=k).fit((real - mu) / sd)
    return lambda f: nn.kneighbors((f - mu) / sd)[0].mean(axis=1)


DENSITIES: Dict[str, Callable[[np.ndarray], Stat]] = {
    "one Gaussian": _gaussian, **{f"mixture of {k}": _mixture(k) for k in (2, 3, 4, 5)},
    **{f"mixture of 3, seed {s}": _mixture(3, s) for s in (1, 2)},
    "Gaussian copula": _copula, "5 nearest real": _knn}


def scorer_for(real: np.ndarray, fit: Callable[[np.ndarray], Stat]) -> Stat:
    """The density's term with the empirical null (5 interleaved folds) plus the default tails, as oneclass."""
    fold = np.arange(len(real)) % oc.NULL_FOLDS
    term = np.empty(len(real))
    for j in range(oc.NULL_FOLDS):
        term[fold == j] = fit(real[fold != j])(real[fold == j])
    stat, null = fit(real), np.sort(term)
    tails = oc.fit_features(real, oc.DEFAULT_FEATURES, *WINDOWS, oc.DEFAULT_TAILS, components=1)

    def score(f):
        c = oc.gaussian_components(f, tails)
        return density.empirical_log_p(stat(f), null) + sum(
            density.empirical_log_p(ci, np.asarray(ni)) for ci, ni in zip(c[1:], tails.null_sorted[1:]))
    return score


def real_shape(real: np.ndarray) -> Dict[str, Dict]:
    """Skewness and excess kurtosis of each real feature, and BIC of mixtures of 1-6 Gaussians."""
    bic = {k: GaussianMixture(k, covariance_type="full", reg_covar=density.MIXTURE_REG,
                              n_init=density.MIXTURE_INITS, random_state=0).fit(real).bic(real)
           for k in range(1, 7)}
    return {"skewness": dict(zip(oc.DEFAULT_FEATURES, np.round(stats.skew(real), 2).tolist())),
            "excess_kurtosis": dict(zip(oc.DEFAULT_FEATURES, np.round(stats.kurtosis(real), 1).tolist())),
            "bic": {k: round(float(v), 1) for k, v in bic.items()}, "bic_best": int(min(bic, key=bic.get))}


def summary(aucs: Dict[str, float], paper: Dict[str, float]) -> Dict[str, float]:
    gen = [v for k, v in aucs.items() if not k.startswith("hand-made")]
    hand = [v for k, v in aucs.items() if k.startswith("hand-made")]
    loss = [paper[k] - v for k, v in aucs.items() if paper[k] >= experiment.WORKS]
    return {"generative_min": round(min(gen), 3), "hand_made_min": round(min(hand), 3),
            "mean": round(float(np.mean(list(aucs.values()))), 3), "max_loss": round(max(loss, default=0.0), 3),
            "generative_at_least_0.95": int(sum(v >= 0.95 for v in gen))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="the experiments.oneclass cache folder")
    ap.add_argument("--out", default="experiments/results/oneclass_density.json")
    ap.add_argument("--steps", type=int, nargs="*", default=[800, 5000])
    args = ap.parse_args(argv)
    t0, work = time.perf_counter(), Path(args.work)
    results: List[Dict] = []
    shapes: List[Dict] = []
    for mod in ("CT", "MRI"):
        real_images = experiment.real_validation(mod)
        for steps in args.steps:
            scorer = Scorer.load(str(common.detector(work, "lowt", steps, modality=mod)))
            real = features_of(scorer, real_images)
            shapes.append({"modality": mod, "steps": steps, **real_shape(real)})
            sets = {}
            for kind, root in experiment.roots(work, mod).items():
                for attack in ("injection", "removal"):
                    p, y, meta = evaluate.load_eval_set(str(root), mod, attack, size=experiment.SIZE)
                    for name, idx in evaluate.dataset_indices(y, meta, mod, attack).items():
                        sets[f"{kind}|{name}"] = (features_of(scorer, p[idx]), y[idx])
            paper = {k: roc_auc_score(y, f[:, 0]) for k, (f, y) in sets.items()}
            for name, fit in DENSITIES.items():
                score = scorer_for(real, fit)
                aucs = {k: roc_auc_score(y, score(f)) for k, (f, y) in sets.items()}
                results.append({"modality": mod, "steps": steps, "density": name, **summary(aucs, paper),
                                "auc": {k: round(v, 4) for k, v in aucs.items()}})
                common.log(f"{mod} {steps} {name}: {results[-1]['generative_min']} / {results[-1]['mean']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results, "real_features": shapes, "command": "python -m experiments.oneclass_density --work WORK",
                               "total_seconds": time.perf_counter() - t0}, indent=1))
    print(markdown(results))
    return 0


def markdown(results: List[Dict]) -> str:
    """Densities down, detectors across: lowest generative AUC / lowest hand-made / largest loss."""
    dets = list(dict.fromkeys((r["modality"], r["steps"]) for r in results))
    lines = ["| density | " + " | ".join(f"{m} {s}" for m, s in dets) + " |", "|---|" + "---|" * len(dets)]
    for name in DENSITIES:
        cells = [next(f"{r['generative_min']:.3f} / {r['hand_made_min']:.3f} / {r['mean']:.3f} / {r['max_loss']:.3f}"
                      for r in results if r["density"] == name and (r["modality"], r["steps"]) == d) for d in dets]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

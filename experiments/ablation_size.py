"""Ablation (paper Fig. 4): BTD score vs tumour size, scores normalised to a FPR-0.1 threshold.

Needs a size column (``--size_column``, default ``size``) in the test set's metadata, the ``.npz``
or the scored CSV. Scores are divided by the threshold at ``--target_fpr`` (from the workdir's
``calibration.json`` when it matches d and the window, else fitted on the real test scores), so
values >= 1 are flagged. As in the paper, removal plots omit real images (they have no tumour) but
the reals still set the threshold. Writes ``ablation_size.json`` and ``ablation_size.png``::

    python -m experiments.ablation_size --workdir runs/mri --dataset ROOT --modality MRI --attack injection --out DIR
    python -m experiments.ablation_size --scores scored.csv --attack injection --out DIR   # CSV with a size column
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Optional

import numpy as np

from btd_jax import calibration, evaluate, plots
from btd_jax.data.errors import DataError
from experiments import ablation_common


def sizes_from(meta: dict, column: str, source: str) -> np.ndarray:
    if column not in meta:
        raise DataError(f"{source}: no size column {column!r} (columns: {', '.join(sorted(meta)) or 'none'}); "
                        "pass --size_column")
    try:
        return np.asarray(meta[column], dtype=np.float64)
    except ValueError:
        raise DataError(f"{source}: size column {column!r} is not numeric") from None


def analyse(scores: np.ndarray, labels: np.ndarray, sizes: np.ndarray, meta: dict, modality: str, attack: str,
            target_fpr: float = 0.1, cal: Optional[calibration.Calibration] = None, n_bins: int = 4,
            tamper: Optional[str] = None) -> dict:
    """Per tamper dataset: normalised scores, Spearman rho (size vs score) and flag rate per size bin."""
    from scipy import stats

    out = {"target_fpr": target_fpr, "datasets": {}}
    for ds, idx in evaluate.dataset_indices(labels, meta, modality, attack, tamper).items():
        y, s, z = labels[idx], scores[idx], sizes[idx]
        c = cal or calibration.fit(s[y == 0], target_fpr=target_fpr)
        norm = c.normalize(s)
        shown = np.ones(y.size, bool) if attack == "injection" else (y == 1)  # removal: no tumour in reals
        ok = shown & np.isfinite(z)
        entry = {"threshold": c.threshold, "threshold_source": "calibration.json" if cal else "test reals",
                 "points": {"size": z[ok].tolist(), "normalized_score": norm[ok].tolist(), "label": y[ok].tolist()}}
        for cls, name in ((1, "fake"), (0, "real")):
            m = ok & (y == cls)
            if m.sum() < 3:
                continue
            rho, pval = stats.spearmanr(z[m], norm[m])
            edges = np.unique(np.quantile(z[m], np.linspace(0, 1, n_bins + 1)))
            bins = []
            for lo, hi in zip(edges[:-1], edges[1:]):
                b = m & (z >= lo) & ((z <= hi) if hi == edges[-1] else (z < hi))
                if b.any():
                    bins.append({"lo": float(lo), "hi": float(hi), "n": int(b.sum()),
                                 "flag_rate": float((norm[b] >= 1).mean()), "median_norm": float(np.median(norm[b]))})
            entry[name] = {"n": int(m.sum()), "spearman_rho": float(rho), "spearman_p": float(pval),
                           "flag_rate": float((norm[m] >= 1).mean()), "bins": bins}
        out["datasets"][ds] = entry
    return out


def plot(result: dict, path: str) -> str:
    plt = plots.pyplot()
    names = list(result["datasets"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        pts = result["datasets"][name]["points"]
        z, s, y = (np.asarray(pts[k]) for k in ("size", "normalized_score", "label"))
        for cls, lab, col in ((0, "real", "tab:blue"), (1, "fake", "tab:orange")):
            if (y == cls).any():
                ax.scatter(z[y == cls], s[y == cls], s=8, alpha=0.6, label=lab, color=col)
        ax.axhline(1.0, color="red", ls="--", lw=1)
        ax.set(title=name, xlabel="tumour size", ylabel=f"score / threshold (FPR {result['target_fpr']})")
        if s.size and np.all(s > 0):
            ax.set_yscale("log")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=None)
    p.add_argument("--dataset", default=None, help="test-set root (authors' layout) or .npz with patches/labels/size")
    p.add_argument("--scores", default=None, help="scored CSV with label, score and size columns (no model)")
    p.add_argument("--modality", default="CT", choices=("CT", "MRI"))
    p.add_argument("--attack", default="injection", choices=("injection", "removal"))
    p.add_argument("--tamper", default=None)
    p.add_argument("--size_column", default="size")
    p.add_argument("--center", type=int, default=None, help="central window (default: 32 injection, full removal)")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--target_fpr", type=float, default=0.1)
    p.add_argument("--max_per_class", type=int, default=128, help="per class and tamper method; 0 = all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--out", default="experiments/out/ablation_size")
    args = p.parse_args(argv)

    center = (32 if args.attack == "injection" else None) if args.center is None else (args.center or None)
    cal = None
    if args.scores:
        labels, all_scores, meta = evaluate.read_scores_csv(args.scores)
        red = evaluate.reduction_name(center)
        key = red if red in all_scores else next(iter(all_scores))
        scores, source = all_scores[key], args.scores
    else:
        if not (args.workdir and args.dataset):
            raise SystemExit("need --workdir and --dataset, or --scores")
        from btd_jax.score import Scorer

        import jax

        scorer = Scorer.load(args.workdir)
        patches, labels, meta = ablation_common.load_dataset(args.dataset, args.modality, args.attack,
                                                             size=scorer.cfg.image_size)
        sizes_from(meta, args.size_column, args.dataset)  # fail before scoring
        keep = ablation_common.subsample(labels, args.max_per_class, args.seed, meta.get("method"))
        patches, labels, meta = patches[keep], labels[keep], {k: v[keep] for k, v in meta.items()}
        key = jax.random.key(args.seed) if args.steps > 1 else None
        scores = evaluate.score_reductions(scorer, patches, centers=[center], steps=args.steps,
                                           batch_size=args.batch_size, key=key)[evaluate.reduction_name(center)]
        source = args.dataset
        if os.path.exists(os.path.join(args.workdir, calibration.FILENAME)):
            c = calibration.Calibration.load(args.workdir)
            if c.center == center and (c.steps or 1) == args.steps and c.target_fpr == args.target_fpr:
                cal = c
    sizes = sizes_from(meta, args.size_column, source)
    result = analyse(np.asarray(scores, np.float64), labels, sizes, meta, args.modality, args.attack,
                     args.target_fpr, cal, tamper=args.tamper)
    result.update(source=os.path.abspath(source), center=center, steps=args.steps, size_column=args.size_column)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ablation_size.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot(result, os.path.join(args.out, "ablation_size.png"))
    for name, e in result["datasets"].items():
        for cls in ("fake", "real"):
            if cls in e:
                print(f"{name} {cls}: n={e[cls]['n']} rho={e[cls]['spearman_rho']:.3f} "
                      f"flagged={e[cls]['flag_rate']:.2f}")
    print(f"wrote {args.out}/ablation_size.json and .png")
    return result


if __name__ == "__main__":
    main()

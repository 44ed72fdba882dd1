"""Ablation (paper Fig. 3): BTD detection vs the number of backward diffusion steps d.

For every d the test patches are scored once (full patch and central windows from the same residual
maps) and AUC/EER are computed per tamper dataset with the scanner-balanced bootstrap. Writes
``ablation_steps.json`` and ``ablation_steps.png`` (AUC vs d, log axis) into ``--out``::

    python -m experiments.ablation_steps --workdir runs/ct --dataset TESTSET_ROOT --modality CT \
        --attack injection --out experiments/out/steps                      # small CPU default
    python -m experiments.ablation_steps ... --paper --max_per_class 0      # the paper's grid, all data

The default is small (d in 1 2 5 10, 64 patches per class and method, 20 bootstrap iterations) so
it runs on a CPU; ``--paper`` uses d in 1 2 5 10 50 100 200 400 1000 (capped at the model's T).
"""

from __future__ import annotations

import argparse
import json
import os
import time

from btd_jax import evaluate, plots
from experiments import ablation_common

PAPER_STEPS = (1, 2, 5, 10, 50, 100, 200, 400, 1000)


def run_ablation(scorer, patches, labels, meta, modality: str, attack: str, steps_list, centers, tamper=None,
                 n_boot: int = 20, seed: int = 0, batch_size: int = 256, log=print) -> dict:
    """Scores for every d; returns {'steps': [...], 'rows': [row + {'steps': d, 'seconds': s}], ...}."""
    import jax

    rows = []
    for d in steps_list:
        t0 = time.perf_counter()
        key = jax.random.key(seed) if d > 1 else None
        scores = evaluate.score_reductions(scorer, patches, centers=centers, steps=d, batch_size=batch_size, key=key)
        sec = time.perf_counter() - t0
        for r in evaluate.evaluate_scored(scores, labels, meta, modality, attack, tamper, n_boot=n_boot, seed=seed):
            rows.append(dict(r, steps=int(d), seconds=sec))
            log(f"d={d:4d} {r['dataset']:18s} {r['reduction']:9s} AUC {r['auc_mean']:.3f} EER {r['eer_mean']:.3f} "
                f"({sec:.1f} s)")
    return {"steps": [int(d) for d in steps_list], "rows": rows}


def plot(result: dict, path: str, title: str = "") -> str:
    plt = plots.pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    keys = list(dict.fromkeys((r["dataset"], r["reduction"]) for r in result["rows"]))
    for ds, red in keys:
        pts = sorted((r["steps"], r["auc_mean"]) for r in result["rows"] if (r["dataset"], r["reduction"]) == (ds, red))
        ax.plot(*zip(*pts), marker="o", label=f"{ds} ({red})")
    ax.set_xscale("log")
    ax.set(xlabel="backward steps d", ylabel="AUC (bootstrap mean)", title=title or "BTD vs diffusion steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True)
    p.add_argument("--dataset", required=True, help="test-set root (authors' layout) or .npz with patches/labels")
    p.add_argument("--modality", default="CT", choices=("CT", "MRI"))
    p.add_argument("--attack", default="injection", choices=("injection", "removal"))
    p.add_argument("--tamper", default=None)
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2, 5, 10])
    p.add_argument("--paper", action="store_true", help=f"use d in {PAPER_STEPS}")
    p.add_argument("--centers", type=int, nargs="*", default=[32], help="central windows besides the full patch")
    p.add_argument("--max_per_class", type=int, default=64, help="per class and tamper method; 0 = all")
    p.add_argument("--n_boot", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--out", default="experiments/out/ablation_steps")
    args = p.parse_args(argv)

    from btd_jax.score import Scorer

    scorer = Scorer.load(args.workdir)
    T = scorer.cfg.diffusion.timesteps
    steps = [d for d in (PAPER_STEPS if args.paper else args.steps) if 1 <= d <= T]
    patches, labels, meta = ablation_common.load_dataset(args.dataset, args.modality, args.attack,
                                                         size=scorer.cfg.image_size)
    keep = ablation_common.subsample(labels, args.max_per_class, args.seed, meta.get("method"))
    meta = {k: v[keep] for k, v in meta.items()}
    result = run_ablation(scorer, patches[keep], labels[keep], meta, args.modality, args.attack, steps,
                          [None] + args.centers, args.tamper, args.n_boot, args.seed, args.batch_size)
    result.update(workdir=os.path.abspath(args.workdir), dataset=os.path.abspath(args.dataset),
                  n_samples=int(keep.size), max_per_class=args.max_per_class, n_boot=args.n_boot, seed=args.seed)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ablation_steps.json"), "w") as f:
        json.dump(result, f, indent=1)
    plot(result, os.path.join(args.out, "ablation_steps.png"), f"BTD vs d ({args.modality} {args.attack})")
    print(f"wrote {args.out}/ablation_steps.json and .png")
    return result


if __name__ == "__main__":
    main()

"""AUC per attack style of the BTD score variants on the models of training_schedule.py.

    python -m experiments.training_schedule --out experiments/out/training_schedule   # trains, saves params
    python -m experiments.score_variants --runs experiments/out/training_schedule \
        --out experiments/out/score_variants

For every saved run (schedule x seed) the EMA weights score the demo test sets (CT Inject and CT Remove,
every tamper style) plus a synthetic *Denoise* set (the real injection-set patches with
their centre Gaussian-smoothed, sigma 1: native noise removed, nothing added; paired with the same
real patches) using:

* ``paper``: d = 1 at t = 0, mean residual over the central window (injection) or patch (removal);
* pooling: ``max`` / ``p90`` / ``p99`` over the same window;
* ``multi_t``: the residual map averaged over start times (0, 1, 2, 3) or (0, 2, 5, 10) (one reverse step
  from each, noise from a fixed key), mean-pooled;
* ``two_sided``: |log E - mu| / sigma of the paper's / multi_t energy, (mu, sigma) fitted on held-out
  real training-region patches (``--n_val`` of training_schedule.py, never trained on).

Writes ``results.json`` (AUC per run, and mean/std over seeds per schedule) and ``variants.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Dict

import numpy as np

from btd_jax import plots
from experiments.training_schedule import load_data, make_config

MULTI = {"multi_t0123": (0, 1, 2, 3), "multi_t02510": (0, 2, 5, 10)}


def denoise_centre(patches: np.ndarray, radius: float, sigma: float = 1.0) -> np.ndarray:
    """(N, H, W) -> copies with a central disc of ``radius`` replaced by its Gaussian-smoothed version."""
    from scipy import ndimage as ndi

    n, h, w = patches.shape
    yy, xx = np.mgrid[:h, :w]
    disc = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2) <= radius
    out = patches.copy()
    for i in range(n):
        out[i][disc] = ndi.gaussian_filter(patches[i].astype(np.float64), sigma)[disc]
    return out


def maps_by_t(scorer, images, ts, key) -> Dict[int, np.ndarray]:
    """Residual maps per start time, with multi_t_maps's noise convention (fold_in(key, t))."""
    import jax

    return {t: np.asarray(scorer.residual_map(images, start_t=t, key=jax.random.fold_in(key, t) if t else None),
                          np.float64) for t in ts}


def variant_scores(by_t, center) -> Dict[str, np.ndarray]:
    """Every non-calibrated variant's pooled energy (N,) from per-t maps."""
    from btd_jax.scoring import variants as sv

    m0 = by_t[0]
    out = {"paper": sv.pool_maps(m0, center), "max": sv.pool_maps(m0, center, "max"),
           "p90": sv.pool_maps(m0, center, "percentile:90"), "p99": sv.pool_maps(m0, center, "percentile:99")}
    for name, ts in MULTI.items():
        out[name] = sv.pool_maps(sv.average_maps([by_t[t] for t in ts]), center)
    return out


def evaluate_run(params, cfg, sets, val, center: int, seed: int) -> Dict[str, float]:
    import jax

    from btd_jax import metrics
    from btd_jax.score import Scorer
    from btd_jax.scoring import variants as sv

    scorer = Scorer.from_params(params, cfg)
    key = jax.random.key(seed)
    ts = sorted({t for v in MULTI.values() for t in v})
    aucs = {}
    val_by_t = maps_by_t(scorer, val, ts, key)
    for name, (patches, labels, method, attack) in sets.items():
        win = center if attack in ("Inject", "Denoise") else None
        scores = variant_scores(maps_by_t(scorer, patches, ts, key), win)
        ref_scores = variant_scores(val_by_t, win)
        for base in ("paper", "multi_t0123"):
            ref = sv.fit_reference(ref_scores[base])
            scores[f"two_sided_{base}"] = sv.two_sided(scores[base], ref)
        for style in sorted(set(method) - {"real"}):
            sel = (method == "real") | (method == style)
            for v, s in scores.items():
                aucs[f"{attack}/{style}/{v}"] = round(metrics.auc(labels[sel], s[sel]), 4)
    return aucs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="experiments/out/training_schedule", help="training_schedule.py --out")
    ap.add_argument("--out", default="experiments/out/score_variants")
    args = ap.parse_args(argv)

    import jax
    from flax import serialization

    from btd_jax.models.unet import init_params

    with open(os.path.join(args.runs, "results.json")) as f:
        sched = json.load(f)
    targs = argparse.Namespace(**sched["args"])
    _, val, tests, _ = load_data(targs)
    inj = tests["Inject"]
    real = inj.patches[inj.columns["method"] == "real"]
    sets = {a: (ts.patches, ts.labels, ts.columns["method"], a) for a, ts in tests.items()}
    sets["Denoise"] = (np.concatenate([real, denoise_centre(real, targs.center / 2)]),
                       np.r_[np.zeros(len(real)), np.ones(len(real))].astype(np.int64),
                       np.array(["real"] * len(real) + ["Denoise"] * len(real)), "Denoise")
    os.makedirs(args.out, exist_ok=True)
    runs, t0 = [], time.time()
    for r in sched["runs"]:
        cfg = make_config(targs, r["schedule"])
        path = os.path.join(args.runs, "params", f"{r['schedule']}_s{r['seed']}.msgpack")
        template = init_params(cfg.model, cfg.image_size, jax.random.key(0))
        with open(path, "rb") as f:
            params = serialization.from_bytes(template, f.read())
        auc = evaluate_run(params, cfg, sets, val, targs.center, r["seed"])
        runs.append({"schedule": r["schedule"], "seed": r["seed"], "step": r["evals"][-1]["step"], "auc": auc})
        print(r["schedule"], r["seed"], " ".join(f"{k}={v:.3f}" for k, v in auc.items()
                                                 if k.split("/")[2] in ("paper", "two_sided_paper")), flush=True)
    summary: Dict[str, dict] = {}
    for sch in sorted({r["schedule"] for r in runs}):
        rs = [r["auc"] for r in runs if r["schedule"] == sch]
        summary[sch] = {k: {"mean": round(float(np.mean([a[k] for a in rs])), 4),
                            "std": round(float(np.std([a[k] for a in rs])), 4), "n": len(rs)} for k in rs[0]}
    res = {"runs_dir": args.runs, "train_args": sched["args"], "multi_t": {k: list(v) for k, v in MULTI.items()},
           "runs": runs, "summary": summary, "wall_s": round(time.time() - t0, 1)}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    plot(summary, os.path.join(args.out, "variants.png"))
    print(f"wrote {args.out}/results.json")


def plot(summary: dict, path: str) -> None:
    plt = plots.pyplot()
    first = next(iter(summary.values()))
    styles = sorted({k.rsplit("/", 1)[0] for k in first})
    variants = sorted({k.rsplit("/", 1)[1] for k in first}, key=lambda v: (v != "paper", v))
    fig, axes = plt.subplots(1, len(summary), figsize=(6 * len(summary), 3.8), sharey=True, squeeze=False)
    for ax, (sch, s) in zip(axes[0], summary.items()):
        width = 0.8 / len(variants)
        for j, v in enumerate(variants):
            ax.bar(np.arange(len(styles)) + j * width, [s[f"{st}/{v}"]["mean"] for st in styles], width,
                   yerr=[s[f"{st}/{v}"]["std"] for st in styles], label=v)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_xticks(np.arange(len(styles)) + 0.4 - width / 2)
        ax.set_xticklabels(styles, rotation=20, fontsize=8)
        ax.set_title(f"trained with t ~ {sch}")
    axes[0][0].set_ylabel("AUC (mean ± sd over seeds)")
    axes[0][-1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()

"""AUC per attack style vs training steps for the training timestep distributions.

    python -m experiments.training_schedule --out experiments/out/training_schedule \
        --schedules uniform truncated mixture lowt --seeds 0 1 2 --eval_steps 50 100 200 300 500

Same model, data, optimiser and budget for every schedule; only ``train.t_sampling`` differs.
Data: the offline demo benchmark (:mod:`btd_jax.attacks.demo_data`, pydicom's real CT slices with
simulated injection/removal, every tamper style the demo data has). Every ``eval_steps`` the EMA weights score the CT Inject and Remove
test sets with the paper's BTD score (d = 1, t = 0; mean residual over the central window for
injection, the whole patch for removal) and a few pooling variants, and AUCs per style are recorded.
Writes ``results.json`` (appended after every run, so a partial sweep is usable), ``schedule.png``,
and each run's final EMA params (``params/<schedule>_s<seed>.msgpack``) for
``experiments/score_variants.py``. Training uses the library's ``make_train_step``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from typing import Dict, List

import numpy as np

from btd_jax import plots

ATTACKS = ("Inject", "Remove")


def make_config(args, t_sampling: str):
    from btd_jax import configs

    mults = tuple(int(m) for m in args.mults.split(","))
    return configs.Config(
        f"sched-{t_sampling}", "CT",
        configs.ModelConfig(dim=args.dim, dim_mults=mults, full_attn=(False,) * (len(mults) - 1) + (True,),
                            attn_heads=2, attn_dim_head=16),
        configs.DiffusionConfig(image_size=args.size, timesteps=args.timesteps,
                                sampling_timesteps=min(250, args.timesteps)),
        configs.TrainConfig(learning_rate=args.lr, batch_size=args.batch, grad_accum=1, num_steps=max(args.eval_steps),
                            ema_decay=args.ema, ema_update_every=1, ema_update_after_step=0,
                            t_sampling=t_sampling, t_max=args.t_max, mixture_uniform_frac=args.mixture_frac),
        configs.ScoreConfig(batch_size=256))


def load_data(args):
    from btd_jax.attacks import demo_data
    from btd_jax.data import datasets

    root = os.path.join(args.out, f"data_{args.size}")
    if not os.path.isfile(os.path.join(root, "train.npz")):
        demo_data.build(root, "CT", size=args.size, n_train=args.n_train + args.n_val, n_test=args.n_test,
                        seed=args.data_seed)
    x = datasets.load_patches(os.path.join(root, "train.npz"))
    tests = {a: datasets.load_testset(os.path.join(root, "testset"), "CT", a, size=args.size) for a in ATTACKS}
    return x[:args.n_train], x[args.n_train:], tests, root


def score_sets(pooled: Dict[str, np.ndarray], tests) -> Dict[str, float]:
    """AUC per '<attack>/<style>/<score name>' from pooled scores per attack."""
    from btd_jax import metrics

    out = {}
    for attack, ts in tests.items():
        method = ts.columns["method"]
        for name, s in pooled[attack].items():
            for style in sorted(set(method) - {"real"}):
                sel = (method == "real") | (method == style)
                out[f"{attack}/{style}/{name}"] = round(metrics.auc(ts.labels[sel], s[sel]), 4)
    return out


def evaluate(params, cfg, tests, center: int) -> Dict[str, float]:
    """AUCs of the paper's score and pooling variants (one residual map per test patch, d = 1, t = 0)."""
    from btd_jax.score import Scorer
    from btd_jax.scoring import variants as sv

    scorer = Scorer.from_params(params, cfg)
    pooled = {}
    for attack, ts in tests.items():
        maps = np.asarray(scorer.residual_map(ts.patches), np.float64)
        pooled[attack] = {"paper": sv.pool_maps(maps, center if attack == "Inject" else None),
                          "center_mean": sv.pool_maps(maps, center), "full_mean": sv.pool_maps(maps),
                          "center_p90": sv.pool_maps(maps, center, "percentile:90"),
                          "center_max": sv.pool_maps(maps, center, "max")}
    return score_sets(pooled, tests)


def run_one(args, schedule: str, seed: int, data) -> dict:
    import jax
    from flax import serialization

    from btd_jax.train.state import create_train_state
    from btd_jax.train.step import make_train_step

    train_x, _, tests, _ = data
    cfg = dataclasses.replace(make_config(args, schedule), train=dataclasses.replace(
        make_config(args, schedule).train, seed=seed))
    state = create_train_state(cfg, jax.random.PRNGKey(seed))
    step = make_train_step(cfg)
    rng = np.random.default_rng((seed, 1234))  # same batches for every schedule of a seed
    record = {"schedule": schedule, "seed": seed, "evals": []}
    t0, done, losses = time.time(), 0, []
    for target in sorted(args.eval_steps):
        while done < target:
            idx = rng.integers(0, len(train_x), args.batch)
            state, m = step(state, train_x[idx][None, ..., None])
            losses.append(m["loss"])
            done += 1
        auc = evaluate(state.ema_params, cfg, tests, args.center)
        loss = float(np.mean(jax.device_get(losses[-50:])))
        record["evals"].append({"step": done, "train_loss": loss, "auc": auc, "elapsed_s": round(time.time() - t0, 1)})
        print(f"{schedule:9s} seed {seed} step {done:5d} loss {loss:.4f} "
              + " ".join(f"{k.split('/')[1]}={v:.3f}" for k, v in auc.items() if k.endswith("/paper"))
              + f" [{time.time() - t0:.0f}s]", flush=True)
    os.makedirs(os.path.join(args.out, "params"), exist_ok=True)
    with open(os.path.join(args.out, "params", f"{schedule}_s{seed}.msgpack"), "wb") as f:
        f.write(serialization.to_bytes(jax.device_get(state.ema_params)))
    return record


def summarise(runs: List[dict]) -> dict:
    """mean/std over seeds of every AUC, per schedule and step."""
    out: Dict[str, dict] = {}
    for sch in sorted({r["schedule"] for r in runs}):
        rs = [r for r in runs if r["schedule"] == sch]
        steps = sorted({e["step"] for r in rs for e in r["evals"]})
        out[sch] = {}
        for s in steps:
            evs = [e for r in rs for e in r["evals"] if e["step"] == s]
            keys = evs[0]["auc"].keys()
            out[sch][str(s)] = {k: {"mean": round(float(np.mean([e["auc"][k] for e in evs])), 4),
                                    "std": round(float(np.std([e["auc"][k] for e in evs])), 4), "n": len(evs)}
                                for k in keys}
    return out


def compare(summary: dict, baseline: str = "uniform", score: str = "paper") -> dict:
    """Per schedule and style: final AUC vs the baseline's final AUC (equal steps), and the first
    evaluated step whose mean AUC reaches the baseline's final mean AUC (None: never)."""
    out: Dict[str, dict] = {}
    if baseline not in summary:
        return out
    base_final = summary[baseline][str(max(int(s) for s in summary[baseline]))]
    for sch, by_step in summary.items():
        steps = sorted(int(s) for s in by_step)
        final = by_step[str(steps[-1])]
        out[sch] = {}
        for key in (k for k in final if k.endswith("/" + score)):
            target = base_final[key]["mean"]
            reach = next((s for s in steps if by_step[str(s)][key]["mean"] >= target), None)
            out[sch][key.rsplit("/", 1)[0]] = {
                "final": final[key]["mean"], "baseline_final": target,
                "delta_equal_steps": round(final[key]["mean"] - target, 4), "steps_to_baseline_final": reach,
                "fraction_of_baseline_steps": None if reach is None else round(reach / steps[-1], 3)}
    return out


def plot(summary: dict, path: str, score: str = "paper") -> None:
    plt = plots.pyplot()
    keys = next(iter(next(iter(summary.values())).values()))
    panels = sorted({tuple(k.split("/")[:2]) for k in keys})
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), sharey=True)
    for ax, (attack, style) in zip(axes, panels):
        key = f"{attack}/{style}/{score}"
        for sch, by_step in summary.items():
            steps = sorted(int(s) for s in by_step)
            m = np.array([by_step[str(s)][key]["mean"] for s in steps])
            sd = np.array([by_step[str(s)][key]["std"] for s in steps])
            ax.plot(steps, m, marker="o", label=sch)
            ax.fill_between(steps, m - sd, m + sd, alpha=0.15)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set_title(f"{attack} / {style}")
        ax.set_xlabel("training steps")
    axes[0].set_ylabel(f"AUC ({score} score, mean ± sd over seeds)")
    axes[-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="experiments/out/training_schedule")
    ap.add_argument("--schedules", nargs="+", default=["uniform", "truncated", "mixture", "lowt"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--eval_steps", type=int, nargs="+", default=[50, 100, 200, 300, 500])
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--center", type=int, default=8, help="central window of the injection score")
    ap.add_argument("--n_train", type=int, default=4096)
    ap.add_argument("--n_val", type=int, default=512, help="held-out real patches (for score_variants.py)")
    ap.add_argument("--n_test", type=int, default=100, help="rows per class and attack")
    ap.add_argument("--data_seed", type=int, default=0)
    ap.add_argument("--dim", type=int, default=8)
    ap.add_argument("--mults", default="1,2")
    ap.add_argument("--timesteps", type=int, default=1000)
    ap.add_argument("--t_max", type=int, default=10)
    ap.add_argument("--mixture_frac", type=float, default=0.25)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.99)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--summarise_only", action="store_true", help="only redo summary, comparison and plot")
    args = ap.parse_args(argv)

    os.makedirs(args.out, exist_ok=True)
    res_path = os.path.join(args.out, "results.json")
    if args.summarise_only:  # recompute summary/comparison/plot of an existing results.json
        with open(res_path) as f:
            result = json.load(f)
        result["summary"] = summarise(result["runs"])
        result["vs_uniform"] = {sc: compare(result["summary"], score=sc) for sc in ("paper", "center_mean")}
        with open(res_path, "w") as f:
            json.dump(result, f, indent=1)
        plot(result["summary"], os.path.join(args.out, "schedule.png"))
        return
    data = load_data(args)
    runs = []
    t0 = time.time()
    for seed in args.seeds:  # seed-major: a partial sweep still compares every schedule
        for schedule in args.schedules:
            runs.append(run_one(args, schedule, seed, data))
            summary = summarise(runs)
            result = {"args": vars(args), "data": data[3], "runs": runs, "summary": summary,
                      "vs_uniform": {sc: compare(summary, score=sc) for sc in ("paper", "center_mean")},
                      "wall_s": round(time.time() - t0, 1)}
            with open(res_path, "w") as f:
                json.dump(result, f, indent=1)
            plot(result["summary"], os.path.join(args.out, "schedule.png"))
    print(f"wrote {res_path} ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()

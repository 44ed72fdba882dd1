"""Tuning sweep for the `btd-jax demo` preset: train a small model on the demo data, report AUCs.

    python -m experiments.demo_tune --data experiments/out/demo_data --steps 1500 --dim 16 --t_sampling lowt \
        --start_t 0 5 20 --center 0 16 --out experiments/out/demo_tune.json

Builds the demo data if ``--data`` has none, trains (``btd_jax.train.train_and_evaluate``), scores
every test patch for each (start_t, centre window) and prints/writes AUC per attack style.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="experiments/out/demo_data")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--n_train", type=int, default=4096)
    ap.add_argument("--n_test", type=int, default=150)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--mults", default="1,2,4")
    ap.add_argument("--timesteps", type=int, default=1000)
    ap.add_argument("--schedule", default="sigmoid")
    ap.add_argument("--t_sampling", default="uniform")
    ap.add_argument("--t_max", type=int, default=10)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--start_t", type=int, nargs="+", default=[0])
    ap.add_argument("--center", type=int, nargs="+", default=[0, 16])
    ap.add_argument("--use_ema", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    from btd_jax import configs, metrics, train
    from btd_jax.attacks import demo_data
    from btd_jax.data import datasets
    from btd_jax.score import Scorer

    if not os.path.isfile(os.path.join(args.data, "train.npz")):
        demo_data.build(args.data, "CT", size=args.size, n_train=args.n_train, n_test=args.n_test)
    mults = tuple(int(m) for m in args.mults.split(","))
    cfg = configs.Config(
        "demo-tune", "CT",
        configs.ModelConfig(dim=args.dim, dim_mults=mults, full_attn=(False,) * (len(mults) - 1) + (True,),
                            attn_heads=2, attn_dim_head=16),
        configs.DiffusionConfig(image_size=args.size, timesteps=args.timesteps, sampling_timesteps=min(
            250, args.timesteps), beta_schedule=args.schedule),
        configs.TrainConfig(learning_rate=args.lr, batch_size=args.batch, grad_accum=1, num_steps=args.steps,
                            ema_decay=0.995, ema_update_every=1, ema_update_after_step=0,
                            t_sampling=args.t_sampling, t_max=args.t_max, log_every=100, eval_every=10**9,
                            checkpoint_every=10**9, lr_schedule="cosine", warmup_steps=50),
        configs.ScoreConfig(batch_size=256))
    tag = f"d{args.dim}_m{args.mults.replace(',', '')}_T{args.timesteps}_{args.t_sampling}{args.t_max}_s{args.steps}"
    workdir = args.workdir or os.path.join("experiments", "out", "demo_tune", tag)
    x = datasets.load_patches(os.path.join(args.data, "train.npz"))
    t0 = time.time()
    train.train_and_evaluate(cfg, workdir, x, progress=False)
    t_train = time.time() - t0
    scorer = Scorer.load(workdir, which="ema" if args.use_ema else "params")
    results = {"tag": tag, "train_s": t_train, "args": vars(args), "auc": {}}
    for attack in ("Inject", "Remove"):
        ts = datasets.load_testset(os.path.join(args.data, "testset"), "CT", attack, size=args.size)
        for st in args.start_t:
            import jax

            maps = scorer.residual_map(ts.patches, start_t=st, key=jax.random.key(0) if st > 0 else None)
            for c in args.center:
                k = c or args.size
                lo = (args.size - k) // 2
                s = maps[:, lo:lo + k, lo:lo + k].mean(axis=(1, 2))
                real = ts.columns["method"] == "real"
                for m in sorted(set(ts.columns["method"]) - {"real"}):
                    sel = real | (ts.columns["method"] == m)
                    auc = metrics.auc(ts.labels[sel], s[sel])
                    per_sc = {sc: round(metrics.auc(ts.labels[sel & (ts.columns["scanner"] == sc)],
                                                    s[sel & (ts.columns["scanner"] == sc)]), 3)
                              for sc in sorted(set(ts.columns["scanner"]))}
                    results["auc"][f"{attack}/{m}/t{st}/c{k}"] = (round(auc, 3), per_sc)
                    print(f"{tag} {attack:6s} {m:8s} start_t={st:3d} center={k:2d} AUC={auc:.3f} {per_sc}", flush=True)
    print(f"train {t_train:.0f}s")
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(results) + "\n")


if __name__ == "__main__":
    main()

"""Table 1 of the paper on one dataset: BTD and the eight baselines, AUC/EER with bootstrap intervals.

On the authors' data (a trained BTD workdir and real training patches)::

    python -m experiments.compare_methods --dataset ROOT --train train.npz --workdir runs/ct \
        --modality CT --attack injection --out experiments/out/compare_ct_inject

Offline, on the demo data built from the DICOM slices that pydicom ships (built if missing; a small
BTD model -- the ``btd-jax demo`` preset -- is trained on it first unless ``--workdir`` is given)::

    python -m experiments.compare_methods --demo experiments/out/demo_data --attack injection --center 16 \
        --btd-steps 800 --preset tiny --baseline-steps 300 --out experiments/out/compare_demo_inject

Writes results.md / results.csv / results.json (Table-1 layout plus per-row bootstrap mean, std,
95% CI), scores.csv, comparison.png and a ``run.json`` with timings and settings; the same outputs
as ``btd-jax compare`` (both use :mod:`btd_jax.baselines.comparison`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from experiments.paths import recorded

def _demo_btd_config(steps: int, modality: str):
    """The ``btd-jax demo`` preset (32 px, dim 8, low-t training) with ``steps`` training steps."""
    from btd_jax import demo

    return demo.demo_config("demo", steps=steps, modality=modality)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", help="test-set root (authors' layout) or .npz with patches/labels")
    ap.add_argument("--train", help="real training patches (.npy/.npz)")
    ap.add_argument("--demo", help="demo-data folder (built with btd_jax.attacks.demo_data if missing)")
    ap.add_argument("--workdir", help="trained BTD model (for the demo: where to train one if missing)")
    ap.add_argument("--btd-steps", type=int, default=800, help="demo only: training steps of the BTD model")
    ap.add_argument("--modality", default="CT", choices=("CT", "MRI"))
    ap.add_argument("--attack", default="injection", choices=("injection", "removal"))
    ap.add_argument("--tamper", default=None)
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--preset", default="default", choices=("default", "tiny"))
    ap.add_argument("--baseline-steps", type=int, default=None)
    ap.add_argument("--max-train", type=int, default=None)
    ap.add_argument("--center", type=int, default=32)
    ap.add_argument("--n-boot", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--checkpoints", default=None, help="where fitted baselines go (default OUT/baselines)")
    ap.add_argument("--reuse", action="store_true", help="load baselines already saved under --checkpoints")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    from btd_jax import baselines, evaluate
    from btd_jax.baselines import comparison
    from btd_jax.data import datasets
    from btd_jax.score import Scorer

    t_start = time.time()
    if args.demo:
        from btd_jax.attacks import demo_data

        if not os.path.isfile(os.path.join(args.demo, "train.npz")):
            demo_data.build(args.demo, args.modality, size=32)  # the demo preset's patch size
        args.train = os.path.join(args.demo, "train.npz")
        args.dataset = os.path.join(args.demo, "testset")
        if args.workdir is None:
            args.workdir = os.path.join(args.demo, f"btd_{args.btd_steps}")
        if not os.path.isfile(os.path.join(args.workdir, "config.json")) and args.btd_steps > 0:
            from btd_jax import train

            print(f"training a demo BTD model for {args.btd_steps} steps in {args.workdir}", file=sys.stderr)
            train.train_and_evaluate(_demo_btd_config(args.btd_steps, args.modality), args.workdir,
                                     datasets.load_patches(args.train), progress=False)
    if not args.dataset or not args.train:
        ap.error("need --dataset and --train, or --demo")

    scorer = Scorer.load(args.workdir) if args.workdir and os.path.exists(args.workdir) else None
    train_patches = datasets.load_patches(args.train)
    if args.max_train and len(train_patches) > args.max_train:
        keep = np.random.default_rng(args.seed).choice(len(train_patches), args.max_train, replace=False)
        train_patches = train_patches[keep]
    size = scorer.cfg.image_size if scorer is not None else train_patches.shape[1]
    patches, labels, meta = evaluate.load_eval_set(args.dataset, args.modality, args.attack, size=size)
    result = comparison.compare(
        train_patches, patches, labels, meta, modality=args.modality, attack=args.attack, scorer=scorer,
        methods=tuple(args.methods) if args.methods else baselines.NAMES, tamper=args.tamper, preset=args.preset,
        baseline_steps=args.baseline_steps, center=args.center, n_boot=args.n_boot, seed=args.seed,
        batch_size=args.batch_size, checkpoint_dir=args.checkpoints or os.path.join(args.out, "baselines"),
        reuse=args.reuse,
        progress=lambda m: print(m, file=sys.stderr, flush=True))
    paths = comparison.write_outputs(result, args.out, dataset=recorded(args.dataset))
    with open(os.path.join(args.out, "run.json"), "w") as f:
        json.dump({"args": recorded(vars(args)), "info": result.info, "total_seconds": time.time() - t_start,
                   "outputs": recorded(paths)}, f, indent=2, default=str)
    print(evaluate.table1_markdown(result.rows))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

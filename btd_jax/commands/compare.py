"""``btd-jax compare``: BTD and the paper's eight baselines on one test set (the paper's Table 1).

    btd-jax compare --dataset ROOT --modality CT --attack injection --train PATCHES.npz --out DIR
                    [--workdir BTD_WORKDIR] [--methods ae ocvae ...] [--preset tiny] [--baseline-steps N]

Every baseline is fitted on ``--train`` (real patches in [0,1], .npy/.npz, cut at the test patch
size) and scored on ``--dataset`` (authors' layout, or a .npz with patches/labels[/scanner/method]);
``--workdir`` adds BTD itself and lets OOD-DDPM reuse BTD's DDPM. Writes ``results.md`` /
``results.csv`` / ``results.json`` (AUC/EER per dataset, scanner-balanced bootstrap mean and 95%
CI), ``scores.csv``, ``comparison.png`` (bar chart) and the fitted baselines under
``DIR/baselines/`` (``--reuse`` loads them instead of fitting again). Every output (the fitted
baselines included) is checked before any work: existing ones are replaced only with ``--overwrite``
(with ``--reuse`` existing baselines are read, never replaced), a non-empty ``--out`` that compare
did not write needs it too, and nothing is written into the inputs; ``--lenient`` skips bad
test-set rows and lists them in ``DIR/skipped.csv``. The work is
:func:`btd_jax.baselines.comparison.compare_files`.
"""

from __future__ import annotations

import argparse
import os
import sys

from btd_jax import baselines, evaluate
from btd_jax.baselines import comparison
from btd_jax.commands._flags import (
    add_deprecated_alias, existing_file, existing_folder, existing_path, non_negative_int, positive_int,
)
from btd_jax.commands._safety import add_lenient_flag, add_overwrite_flag, output_plan, say_skipped, skipped_file


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("compare", help="BTD vs the paper's baselines (Table 1) on one test set",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, type=existing_path,
                   help="test-set root (authors' layout) or .npz with patches/labels")
    p.add_argument("--train", required=True, type=existing_file,
                   help="real training patches (.npy/.npz) in [0,1] for the baselines")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--workdir", default=None, type=existing_folder, help="trained BTD model directory (adds the BTD row)")
    p.add_argument("--modality", default="CT", choices=("CT", "MRI"))
    p.add_argument("--attack", required=True, choices=("injection", "removal"))
    p.add_argument("--tamper", default=None, help="only this tamper method, e.g. CTGAN or SD (default: all)")
    p.add_argument("--methods", nargs="*", default=None, help="baselines to run (default: all eight)")
    p.add_argument("--preset", default="default", choices=("default", "tiny"), help="baseline sizes")
    p.add_argument("--baseline_steps", "--baseline-steps", type=positive_int, default=None,
                   help="training steps of every neural baseline (default: each one's config)")
    p.add_argument("--max_train", "--max-train", type=positive_int, default=None,
                   help="use at most this many training patches")
    p.add_argument("--size", type=positive_int, default=None, help="patch side cut from the test images "
                   "(default: the BTD model's, else the training patches')")
    p.add_argument("--center", type=positive_int, default=32,
                   help="injection window k (paper: 32); removal uses the whole patch")
    p.add_argument("--reverse_steps", type=positive_int, default=1, help="BTD reverse diffusion steps d (paper: 1)")
    add_deprecated_alias(p, "--steps", "--reverse_steps", "reverse_steps", type=positive_int)
    p.add_argument("--n_boot", "--n-boot", type=positive_int, default=100, help="bootstrap iterations (paper: 100)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--batch_size", "--batch-size", type=positive_int, default=256)
    p.add_argument("--reuse", action="store_true", help="load baselines already saved under OUT/baselines/")
    add_overwrite_flag(p)
    add_lenient_flag(p)
    return p


FILES = ("results.md", "results.csv", "results.json", "scores.csv", "comparison.png")


def plan_outputs(args, methods):
    """Every path this run writes (the fitted baselines included), checked before any work. With
    ``--reuse`` the baselines already saved are inputs, read and never replaced."""
    saved = os.path.join(args.out, "baselines")
    fits = [os.path.join(saved, f"{m}.npz") for m in methods]
    reused = [f for f in fits if args.reuse and os.path.isfile(f)]
    plan = output_plan(args, inputs=[args.dataset, args.train, *reused], workdirs=[args.workdir])
    plan.folder(args.out)
    for path in [os.path.join(args.out, n) for n in FILES] + [skipped_file(args.out, folder=True)]:
        plan.file(path)
    for path in fits:
        if path not in reused:
            plan.file(path)
    return plan.check()


def run(args: argparse.Namespace) -> int:
    methods = tuple(args.methods) if args.methods is not None else baselines.NAMES
    for m in methods:
        baselines.get(m)  # unknown names fail before any work
    plan_outputs(args, methods)
    result = comparison.compare_files(
        args.dataset, args.train, args.out, model=args.workdir, modality=args.modality, attack=args.attack,
        methods=methods, tamper=args.tamper, preset=args.preset, baseline_steps=args.baseline_steps,
        max_train=args.max_train, size=args.size, center=args.center, btd_steps=args.reverse_steps,
        n_boot=args.n_boot, seed=args.seed, batch_size=args.batch_size, reuse=args.reuse, strict=not args.lenient,
        progress=lambda msg: print(msg, file=sys.stderr))
    say_skipped("compare", result.skipped, skipped_file(args.out, folder=True))
    paths = result.paths
    print(evaluate.table1_markdown(result.rows))
    print(f"wrote {paths['markdown']}, {paths['csv']}, {paths['json']}, {paths['scores']} and {paths['figure']}")
    return 0

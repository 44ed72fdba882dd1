"""``btd-jax evaluate``: the paper's Table 1 for one test set (or an already scored CSV).

    btd-jax evaluate --workdir DIR --dataset ROOT --modality CT --attack injection [--tamper CTGAN] --out DIR
    btd-jax evaluate --scores scored.csv --modality CT --attack injection --out DIR
    btd-jax evaluate --workdir DIR --dataset ROOT --attack removal --variant oneclass --out DIR   (fitted reference)

Writes ``results.md`` / ``results.csv`` / ``results.json`` (AUC and EER per dataset such as
CTGAN-CT-Inject, full-patch and centre reductions, scanner-balanced bootstrap mean and 95% CI),
``scores.csv`` (per-sample scores, re-usable with ``--scores``), ``roc_<dataset>.png`` and
``hist_<dataset>_<reduction>.png``. With ``--calibrate VAL`` (real-only validation patches) it
also fits a threshold at ``--target-fpr`` and saves ``calibration.json`` in the workdir. Every
output (the figures included) is checked before any work: existing ones are replaced only with
``--overwrite``, a non-empty ``--out`` that evaluate did not write needs it too, and nothing is
written into the test set; ``--lenient`` skips bad test-set rows and lists them in ``OUT/skipped.csv``.
The work is :func:`btd_jax.evaluate.evaluate`.
"""

from __future__ import annotations

import argparse
import os
import sys

from btd_jax import calibration, evaluate
from btd_jax.commands._flags import (
    add_deprecated_alias, add_reduction_flag, existing_file, existing_folder, existing_path, non_negative_int,
    open_fraction, positive_int,
)
from btd_jax.commands._safety import (add_lenient_flag, add_overwrite_flag, output_plan, reference_read, say_skipped,
                                      skipped_file)
from btd_jax.scoring import variants


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("evaluate", help="AUC/EER tables (paper Table 1), ROC curves and histograms",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=existing_folder, help="trained model directory (config.json + checkpoints)")
    p.add_argument("--dataset", type=existing_path,
                   help="test-set root in the authors' layout, or a .npz with patches/labels[/scanner/method]")
    p.add_argument("--scores", type=existing_file, help="already scored CSV with 'label' and 'score' or 'score_<reduction>' columns "
                                    "(optional 'scanner', 'method'); no model needed")
    p.add_argument("--modality", default="CT", choices=("CT", "MRI"))
    p.add_argument("--attack", required=True, choices=("injection", "removal"))
    p.add_argument("--tamper", default=None, help="only this tamper method, e.g. CTGAN or SD (default: all)")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--reverse_steps", type=positive_int, default=None,
                   help="reverse diffusion steps d (default: the model config's score.steps, paper 1)")
    add_deprecated_alias(p, "--steps", "--reverse_steps", "reverse_steps", type=positive_int)
    p.add_argument("--centers", type=positive_int, nargs="*", default=[32],
                   help="central window sizes k reported besides the full patch (paper: 32)")
    add_reduction_flag(p, "each window")
    p.add_argument("--n_boot", "--n-boot", type=positive_int, default=100, help="bootstrap iterations (paper: 100)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="bootstrap seed and, for d > 1, the noise key")
    p.add_argument("--group_column", "--group-column", default="scanner",
                   help="metadata column the bootstrap balances over (paper: scanner)")
    p.add_argument("--batch_size", "--batch-size", type=positive_int, default=None,
                   help="patches per device chunk (default: the model config's)")
    p.add_argument("--clip_inputs", action="store_true", help="clip inputs to [0, 1] instead of refusing them")
    add_deprecated_alias(p, "--clip", "--clip_inputs", "clip_inputs", flag=True)
    p.add_argument("--calibrate", default=None, type=existing_file,
                   help="real-only validation patches (.npy/.npz) to fit calibration.json")
    p.add_argument("--target_fpr", "--target-fpr", type=open_fraction, default=0.1, help="calibration FPR (paper Fig. 4: 0.1)")
    p.add_argument("--variant", default="btd", choices=variants.names(),
                   help="score variant (default the paper's btd); another gives one score column named after it, "
                        "made at the first --centers window or, with a reference, at the reference's settings")
    p.add_argument("--reference", default=None, type=existing_file,
                   help="the variant's reference JSON (default: its file in the workdir; fit one with btd-jax "
                        "score --variant V --fit_reference)")
    add_overwrite_flag(p)
    add_lenient_flag(p)
    return p


def plan_outputs(args):
    """Every path this run writes (results, scores, figures, skipped list, calibration), checked before any work."""
    plan = output_plan(args, inputs=[args.dataset, args.scores, args.calibrate, reference_read(args)],
                       workdirs=[args.workdir])
    plan.folder(args.out)
    names = ("results.md", "results.csv", "results.json") + (() if args.scores else ("scores.csv",))
    for path in [os.path.join(args.out, n) for n in names] + [skipped_file(args.out, folder=True)]:
        plan.file(path)
    plan.pattern(args.out, "roc_*.png")
    plan.pattern(args.out, "hist_*.png")
    if args.calibrate and args.workdir:
        plan.file(os.path.join(args.workdir, calibration.FILENAME))
    return plan.check()


def run(args) -> int:
    if args.scores and args.calibrate:
        raise ValueError("--calibrate needs a model (--workdir), not --scores")
    if not args.scores and not (args.workdir and args.dataset):
        raise ValueError("need --workdir and --dataset (or --scores scored.csv)")
    plan_outputs(args)
    done = evaluate.evaluate(
        args.workdir, args.dataset, args.out, scores=args.scores, modality=args.modality, attack=args.attack,
        tamper=args.tamper, centers=args.centers, reduction=args.reduction, steps=args.reverse_steps,
        n_boot=args.n_boot, seed=args.seed, group_column=args.group_column, batch_size=args.batch_size,
        clip_inputs=args.clip_inputs, calibrate=args.calibrate, target_fpr=args.target_fpr, strict=not args.lenient,
        variant=args.variant, reference=args.reference)
    say_skipped("evaluate", done.skipped, skipped_file(args.out, folder=True))
    if args.group_column not in done.metadata:
        print(f"note: no {args.group_column!r} column; the bootstrap balances classes only", file=sys.stderr)
    cal = done.calibration
    if cal is not None:
        print(f"calibration: threshold {cal.threshold:.6g} at FPR {cal.empirical_fpr:.3f} "
              f"(target {cal.target_fpr}, {cal.n} real patches) -> {os.path.join(args.workdir, calibration.FILENAME)}")
    print(evaluate.table1_markdown(done.rows))
    print(f"wrote {done.paths['markdown']}, {done.paths['csv']}, {done.paths['json']} and figures to {args.out}")
    return 0

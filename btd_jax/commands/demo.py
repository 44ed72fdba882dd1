"""``btd-jax demo``: the offline end-to-end demo on the CT slices that pydicom ships.

    btd-jax demo                                # -> btd_demo/report/report.md (about 2 minutes on 2 CPU cores; budget 10)
    btd-jax demo --out DIR --minutes 5 --config demo --seed 0
    btd-jax demo --quick                        # a few training steps: checks the pipeline in about a minute

Builds real training patches and a test set of real and tampered patches (simulated injection and
removal attacks, several styles) from the DICOM slices shipped with pydicom / pydicom-data, trains a
small BTD model within ``--minutes``, scores every test patch, and writes ``DIR/report/``: report.md
(AUC/EER with bootstrap intervals per attack style), results.json/.csv, per-sample scores, roc.png
and heatmaps.png. Needs no network and no GPU. A rerun with the same ``--out`` replaces the earlier
demo's outputs; a folder holding ``data/``, ``workdir/``, ``report/`` or ``generative/`` that no demo
wrote is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse

from absl import logging

from btd_jax import demo
from btd_jax.commands._flags import add_deprecated_alias, non_negative_int, positive_float, positive_int


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="offline end-to-end demo on pydicom's real CT slices (train, score, report)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="btd_demo", help="output folder (data/, workdir/, report/); default btd_demo")
    p.add_argument("--config", default="demo",
                   help="preset (demo: 32 px, default; tiny: 16 px; ct8: 96 px; ...) or JSON config file")
    p.add_argument("--minutes", type=positive_float, default=10.0, help="wall-clock budget of the whole demo (default 10)")
    p.add_argument("--num_steps", "--num-steps", type=positive_int, default=None,
                   help="optimiser steps of the detector (default: the preset's, budget permitting)")
    add_deprecated_alias(p, "--steps", "--num_steps", "num_steps", type=positive_int)
    p.add_argument("--modality", choices=("CT", "MRI"), default="CT", help="CT (default) or MRI slices")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny model, few steps and patches: a pipeline check")
    p.add_argument("--no_progress", "--no-progress", action="store_true",
                   help="plain log lines instead of progress bars (for log files)")
    p.add_argument("--verbose", action="store_true", help="keep the libraries' INFO logs (checkpointing, ...)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace data/, workdir/, report/, generative/ in --out even if no demo wrote them "
                        "(a rerun in a demo's own folder needs no flag)")
    return p


def run(args: argparse.Namespace) -> int:
    if not args.verbose:  # orbax logs every checkpoint at INFO; the progress bar says enough
        logging.set_verbosity(logging.WARNING)

    rep = demo.run_demo(args.out, config=args.config, minutes=args.minutes, seed=args.seed, quick=args.quick,
                        modality=args.modality, steps=args.num_steps, progress=not args.no_progress,
                        overwrite=args.overwrite)
    print()
    for r in (r for r in rep["results"] if r["reduction"] == rep["reduction"]):
        print(f"  {r['dataset']:22s} {r['reduction']} AUC {r['auc']:.3f} (bootstrap {r['auc_mean']:.3f} "
              f"[{r['auc_ci_low']:.3f}, {r['auc_ci_high']:.3f}])  EER {r['eer']:.3f}")
    t = rep["train"]
    print(f"trained {t['steps']} steps in {t['seconds']:.0f} s; demo took {rep['timings']['total']:.0f} s")
    print(f"report: {rep['report']}")
    return 0

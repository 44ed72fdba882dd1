"""``btd-jax score``: BTD scores for a set of patches -> CSV (and optional residual maps / PNG overlays).

    btd-jax score --workdir DIR --input patches.npy --out scores.csv [--reverse_steps 1 --center 32]
    btd-jax score --workdir DIR --input TESTSET_ROOT --modality CT --attack injection --out scores.csv
    btd-jax score --workdir DIR --input DICOM_DIR --locations points.csv --out scores.csv --maps maps.npz --png overlays/

``--input`` is any input format (``--format``): a ``.npy``/``.npz`` array of patches in [0, 1], a folder in
the authors' test-set layout, or scans (a DICOM file/folder, NIfTI, ...). With ``--locations`` (CSV with
columns ``path, x, y`` and optional ``frame`` or ``slice``; paths relative to the CSV or to ``--input``)
the patches are cut around those points; without it scans give ``--n_per_slice`` random patches per
slice. The work is :func:`btd_jax.scoring.score_input`. The CSV has ``id, score``, ``label`` for test sets, and
every metadata column of the input (scanner, method, patient, path, x, y, ...). Every output
(``--out``, ``OUT.skipped.csv``, ``--maps`` with the ``.npz`` NumPy adds, ``--fit_reference``, the
PNGs in ``--png``) is checked before any work: existing ones are replaced only with ``--overwrite``,
never an input, a file inside an input folder or the workdir's files; ``--lenient`` skips bad DICOM
files, CSV rows and array files and lists them in ``OUT.skipped.csv``. Scores that are NaN/inf are
never written.
"""

from __future__ import annotations

import argparse

from btd_jax.commands._flags import (
    add_deprecated_alias, add_reduction_flag, existing_file, existing_folder, existing_path, non_negative_int,
    positive_int,
)
from btd_jax.commands._safety import (add_lenient_flag, add_overwrite_flag, output_plan, reference_read, say_skipped,
                                      skipped_file)
from btd_jax.data import readers
from btd_jax.runtime.atomic import numpy_name
from btd_jax.scoring import reference_path, score_input, variants


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("score", help="BTD scores of patches -> CSV (+ residual maps, PNG overlays)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, type=existing_folder,
                   help="trained model directory (config.json + checkpoints)")
    p.add_argument("--input", required=True, type=existing_path,
                   help=f"patches, a test set or scans, of a format --format names: {', '.join(readers.names('score'))}")
    p.add_argument("--format", default="auto", choices=("auto", *readers.names("score")),
                   help=f"input format (default auto: detected): {readers.help_text('score')}")
    p.add_argument("--out", required=True, help="output CSV")
    p.add_argument("--locations", default=None, type=existing_file,
                   help="CSV of points (path, x, y[, frame|slice]) to cut from scans (DICOM files, NIfTI, .npy, ...)")
    p.add_argument("--reverse_steps", type=positive_int, default=None,
                   help="reverse diffusion steps d (default: the config's score.steps, paper 1)")
    add_deprecated_alias(p, "--steps", "--reverse_steps", "reverse_steps", type=positive_int)
    p.add_argument("--center", type=positive_int, default=None,
                   help="score the central k x k window (paper: 32 for injection)")
    add_reduction_flag(p)
    p.add_argument("--variant", default="btd", choices=variants.names(),
                   help="; ".join(f"{v.name}: {v.help}" for v in variants.VARIANTS.values()))
    p.add_argument("--start_ts", type=non_negative_int, nargs="+", default=None,
                   help="multi_t start times (default 0 1 2 3)")
    p.add_argument("--reference", default=None, type=existing_file,
                   help="the variant's reference JSON (default: its file in the workdir, e.g. "
                        f"{variants.REFERENCE_FILE}, {variants.get('oneclass').reference_file})")
    p.add_argument("--fit_reference", default=None, nargs="?", const="", metavar="JSON",
                   help="treat --input as REAL validation patches (fakes in it are refused): fit the reference of "
                        "--variant (btd and multi_t: the two_sided reference over their energies) and save it here "
                        "(no value: beside the checkpoints, WORKDIR/<the variant's reference file>)")
    p.add_argument("--components", type=positive_int, default=None,
                   help="with --variant oneclass --fit_reference: Gaussians in the density of real patches' features "
                        f"(default {variants.oneclass.DEFAULT_COMPONENTS}; 1: one Ledoit-Wolf Gaussian)")
    p.add_argument("--sampler", default=None, choices=("ddpm", "ddim"), help="default: the config's (paper ddpm)")
    p.add_argument("--start_t", type=non_negative_int, default=None,
                   help="lowest timestep (default: the config's, paper 0)")
    p.add_argument("--maps", default=None,
                   help="write residual maps (N, H, W) + ids + scores to this .npz ('.npz' is added if missing)")
    p.add_argument("--png", default=None, help="folder for PNG overlays (patch | residual | overlay)")
    p.add_argument("--png_max", type=non_negative_int, default=32, help="at most this many PNGs (the highest scores)")
    p.add_argument("--batch_size", type=positive_int, default=None,
                   help="patches per device chunk (default: the config's)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="noise key for d > 1; random DICOM patch locations")
    p.add_argument("--clip_inputs", action="store_true", help="clip inputs to [0, 1] instead of refusing them")
    add_deprecated_alias(p, "--clip", "--clip_inputs", "clip_inputs", flag=True)
    p.add_argument("--modality", default=None, help="CT or MRI (picks the test set / DICOM series)")
    p.add_argument("--attack", default=None, help="injection or removal (picks the test set)")
    p.add_argument("--tamper", default=None, help="test sets: only this tamper method, e.g. CTGAN")
    p.add_argument("--n_per_slice", type=positive_int, default=4,
                   help="DICOM without --locations: random patches per slice")
    add_overwrite_flag(p)
    add_lenient_flag(p)
    return p


def plan_outputs(args):
    """Every path this run writes, checked before any work (``--maps`` as NumPy names it)."""
    read = None if args.fit_reference is not None else reference_read(args)  # fitting writes it instead
    plan = output_plan(args, inputs=[args.input, args.locations, read], workdirs=[args.workdir])
    args.maps = plan.file(numpy_name(args.maps, ".npz") if args.maps else None)
    if args.fit_reference is not None:
        args.fit_reference = reference_path(args.workdir, args.variant, args.fit_reference)
    for path in (args.out, skipped_file(args.out), args.fit_reference):
        plan.file(path)
    if args.png:
        plan.pattern(args.png, "*.png")
    return plan.check()


def run(args) -> int:
    if args.components is not None and (args.variant != "oneclass" or args.fit_reference is None):
        raise ValueError("--components sets the oneclass density: it needs --variant oneclass --fit_reference")
    plan_outputs(args)
    done = score_input(
        args.workdir, args.input, args.out, locations=args.locations, steps=args.reverse_steps, center=args.center,
        reduction=args.reduction, sampler=args.sampler, start_t=args.start_t, batch_size=args.batch_size,
        clip_inputs=args.clip_inputs, variant=args.variant, start_ts=args.start_ts, reference=args.reference,
        fit_reference=args.fit_reference,
        fit_options=None if args.components is None else {"components": args.components},
        maps=args.maps, png=args.png, png_max=args.png_max, seed=args.seed,
        modality=args.modality, attack=args.attack, tamper=args.tamper, n_per_slice=args.n_per_slice,
        strict=not args.lenient, fmt=args.format)
    say_skipped("score", done.skipped, skipped_file(args.out))
    s = done.settings
    if done.reference is not None:
        print(f"reference of {done.reference.n} real patches -> {done.paths['reference']}")
    print(f"scored {len(done.scores)} patches ({args.variant}, d={s.steps}, center={s.center}, {s.reduction}) "
          f"-> {args.out}")
    if args.maps:
        print(f"residual maps {done.maps.shape} -> {args.maps}")
    if args.png:
        print(f"{done.overlays} PNG overlays -> {args.png}")
    return 0

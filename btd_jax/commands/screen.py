"""``btd-jax screen``: whole-scan screening -> findings, suspicion volume (NIfTI/DICOM) and overlays.

    btd-jax screen --workdir DIR --input DICOM_FOLDER --out DIR
    btd-jax screen --workdir DIR --input scan.nii.gz --out DIR --proposal fullconv
    btd-jax screen --workdir DIR --input real1/ --input real2/ ... --calibrate --target_fpr 0.05
    btd-jax screen --workdir DIR --input DICOM_FOLDER --out DIR --variant oneclass   (its fitted reference)

``--input``: a scan of any format with volumes (``--format``): a DICOM series (file or folder), a
NIfTI volume, one series of a slice store (``btd-jax prepare``; already in [0, 1]), a ``.npy``
(S, H, W), ...; values are raw (HU for CT, scanner values for MRI) unless ``--units unit`` says
they are already in [0, 1]. The work is :func:`btd_jax.screen.screen`. Writes
``findings.json``/``findings.csv`` (best first: slice, row, col, score, x/y/z mm in DICOM patient
coordinates, SOPInstanceUID, file), ``suspicion.npy`` and ``suspicion.nii.gz`` (with nibabel),
for DICOM input ``dicom/suspicion_pm.dcm`` (Parametric Map, with highdicom) and ``dicom/sc/``
(Secondary Capture overlays of the slices with findings), and ``overlays/*.png``.
The scan decision uses ``screen_calibration.json`` from the workdir (or ``--calibration``): fit one
with ``--calibrate`` on real scans, screened with the same settings. Every output above is checked
before any work: existing ones are replaced only with ``--overwrite``, a non-empty ``--out`` that
screen did not write needs it too, and nothing is ever written into an input (a DICOM series folder
stays as it was); ``--lenient`` skips unreadable DICOM files and lists them in ``skipped.csv``
beside the findings.
"""

from __future__ import annotations

import argparse
import os

from btd_jax import configs, screen
from btd_jax.commands._flags import (
    add_deprecated_alias, add_reduction_flag, existing_file, existing_folder, existing_path, fraction, non_negative_int,
    open_fraction, positive_int,
)
from btd_jax.commands._safety import (add_lenient_flag, add_overwrite_flag, output_plan, reference_read, say_skipped,
                                      skipped_file)
from btd_jax.data import readers
from btd_jax.data.errors import DataError
from btd_jax.scoring import variants
from btd_jax.screen import files as screen_files


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("screen", help="whole-scan screening: findings, suspicion volume (NIfTI/DICOM)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, type=existing_folder, help="trained model directory")
    p.add_argument("--input", required=True, action="append", type=existing_path,
                   help=f"a scan of a format --format names (repeatable): {', '.join(readers.names('screen'))}")
    p.add_argument("--format", default="auto", choices=("auto", *readers.names("screen")),
                   help=f"input format (default auto: detected): {readers.help_text('screen')}")
    p.add_argument("--out", default=None, help="output directory (created); one subfolder per input if several")
    p.add_argument("--units", choices=("raw", "unit"), default="raw")
    p.add_argument("--series_uid", default=None, help="which series when a folder or slice store holds several")
    p.add_argument("--top_k", type=positive_int, default=10)
    p.add_argument("--center", type=non_negative_int, default=None,
                   help="central window k (0: whole window; default: config)")
    p.add_argument("--reverse_steps", type=positive_int, default=None, help="backward diffusion steps d (default: config)")
    add_deprecated_alias(p, "--steps", "--reverse_steps", "reverse_steps", type=positive_int)
    add_reduction_flag(p)
    p.add_argument("--proposal", choices=screen.PROPOSALS, default="grid", help="first, cheap pass")
    p.add_argument("--stride", type=positive_int, default=16, help="grid of the exact windows (as btd-jax localize)")
    p.add_argument("--proposal_stride", type=positive_int, default=None, help="grid proposal step (default: the patch)")
    p.add_argument("--proposal_center", type=non_negative_int, default=None,
                   help="central part of each proposal window that makes the map (default: --center)")
    p.add_argument("--proposal_scale", type=positive_int, default=1,
                   help="the proposal pass sees the slice shrunk by this factor (default 1: full resolution)")
    p.add_argument("--proposal_span", choices=screen.SPANS, default=screen.Cascade.proposal_span,
                   help="grid proposal over the pixels some window's centre covers (centres) or the whole slice")
    p.add_argument("--per_slice", type=positive_int, default=2, help="candidates kept per slice")
    p.add_argument("--max_candidates", type=non_negative_int, default=0,
                   help="cap on the candidates scored exactly per volume (0: none, per_slice per slice)")
    p.add_argument("--shortlist", type=non_negative_int, default=0,
                   help="candidates per slice scored exactly to choose the per_slice refined (0: per_slice)")
    p.add_argument("--refine", type=non_negative_int, default=1, help="exact neighbours of a candidate, in grid steps")
    p.add_argument("--no_climb", dest="climb", action="store_false",
                   help="score only the neighbourhood of each refined candidate (default: move to the best "
                        "neighbour until it is a local maximum)")
    p.add_argument("--tissue_min", type=fraction, default=screen.Cascade.tissue_min,
                   help="skip windows with a smaller fraction of body tissue (default 0.01: almost all air; "
                        "0 scores every window; 0.25: in tissue)")
    p.add_argument("--dtype", choices=configs.DTYPES, default=None, help="compute dtype (default: config)")
    p.add_argument("--batch_size", type=positive_int, default=None,
                   help="windows per batch (default: 32 on CPU, the config's score.batch_size elsewhere)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="noise key for d > 1")
    p.add_argument("--variant", default="btd", choices=[n for n, v in variants.VARIANTS.items() if v.from_maps],
                   help="window score: the paper's btd, or a variant fitted on real patches (oneclass, two_sided: "
                        "at its reference's settings; fit it with btd-jax score --variant V --fit_reference)")
    p.add_argument("--reference", default=None, type=existing_file,
                   help="the variant's reference JSON (default: its file in the workdir)")
    p.add_argument("--calibration", default=None,
                   help=f"scan-level calibration (default: workdir/{screen.CALIBRATION_FILE}); written with --calibrate")
    p.add_argument("--calibrate", action="store_true", help="the inputs are real scans: fit and save the calibration")
    p.add_argument("--target_fpr", type=open_fraction, default=0.1,
                   help="with --calibrate: false positives per real scan")
    p.add_argument("--no_dicom", action="store_true", help="skip the DICOM outputs")
    add_overwrite_flag(p)
    add_lenient_flag(p)
    return p


def plan_outputs(args):
    """Every path this run writes, checked before any work."""
    cal = screen_files.calibration_path(args.workdir, args.calibration)
    plan = output_plan(args, inputs=[*args.input, None if args.calibrate else args.calibration, reference_read(args)],
                       workdirs=[args.workdir])
    if args.calibrate:
        plan.file(cal)
        plan.file(skipped_file(cal))
        return plan.check()
    if args.calibration is not None and not os.path.isfile(args.calibration):
        raise DataError(f"{args.calibration}: no such calibration file")
    if len(args.input) > 1:
        plan.folder(args.out)
    for out in screen_files.output_folders(args.out, len(args.input)):
        plan.folder(out)
        for name in screen_files.FILES if not args.no_dicom else screen_files.FILES[:-1]:
            plan.file(os.path.join(out, name))
        plan.pattern(os.path.join(out, "overlays"), "slice_*.png")
        if not args.no_dicom:
            plan.pattern(os.path.join(out, "dicom", "sc"), "sc_*.dcm")
    return plan.check()


def run(args) -> int:
    if args.out is None and not args.calibrate:
        raise ValueError("--out is required (except with --calibrate)")
    plan_outputs(args)
    done = screen.screen(
        args.workdir, args.input, args.out, calibrate=args.calibrate, calibration=args.calibration,
        target_fpr=args.target_fpr, units=args.units, series_uid=args.series_uid, fmt=args.format, top_k=args.top_k,
        center=args.center, steps=args.reverse_steps, reduction=args.reduction, batch_size=args.batch_size,
        seed=args.seed, dicom=not args.no_dicom, strict=not args.lenient, dtype=args.dtype, variant=args.variant,
        reference=args.reference, proposal=args.proposal, stride=args.stride, proposal_stride=args.proposal_stride,
        proposal_center=args.proposal_center, proposal_scale=args.proposal_scale,
        proposal_span=args.proposal_span, per_slice=args.per_slice,
        shortlist=args.shortlist or None, max_candidates=args.max_candidates or None, refine=args.refine,
        climb=args.climb, tissue_min=args.tissue_min)
    if done.calibration is not None:
        say_skipped("screen", done.skipped, skipped_file(done.calibration_path))
        cal = done.calibration
        print(f"scan-level calibration on {cal.n} real scan(s): threshold {cal.threshold:.6g} "
              f"(empirical FPR {cal.empirical_fpr:.3g}, target {cal.target_fpr}) -> {done.calibration_path}")
        return 0
    for out, one in zip(screen_files.output_folders(args.out, len(args.input)), done.screened):
        say_skipped("screen", one.volume.skipped, skipped_file(out, folder=True))
        res, vol = one.result, one.volume
        d = res.decision
        verdict = ("FLAGGED" if d["flagged"] else "not flagged") + f" (p={d['p_value']:.3g})" if d["calibrated"] \
            else "uncalibrated (fit one with --calibrate on real scans)"
        print(f"{vol.source}: {len(vol.pixels)} slices, {res.work['seconds']:.1f} s, "
              f"{res.work['exact_windows']} exact windows; scan {verdict}")
        for f in res.findings[:5]:
            mm = f" ({f['x_mm']:.1f}, {f['y_mm']:.1f}, {f['z_mm']:.1f}) mm" if "x_mm" in f else ""
            print(f"  {f['rank']}. slice {f['slice']} row {f['row']} col {f['col']} score {f['score']:.6g}{mm}")
        print(f"  -> {one.paths['json']}")
    return 0

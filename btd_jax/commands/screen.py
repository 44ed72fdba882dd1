"""``btd-jax screen``: whole-scan screening -> findings, suspicion volume (NIfTI/DICOM) and overlays.

    btd-jax screen --workdir DIR --input DICOM_FOLDER --out DIR
    btd-jax screen --workdir DIR --input scan.nii.gz --out DIR --proposal fullconv
    btd-jax screen --workdir DIR --input real1/ --input real2/ ... --calibrate --target_fpr 0.05

``--input``: a DICOM series (file or folder), a NIfTI volume, one series of a slice store
(``btd-jax prepare``; already in [0, 1]) or a ``.npy`` (S, H, W); values are raw (HU for CT,
scanner values for MRI) unless ``--units unit`` says they are already in [0, 1]. Writes
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

import jax
import numpy as np

from btd_jax import calibration, clinical_io, configs, screen
from btd_jax.commands._flags import (
    add_deprecated_alias, add_reduction_flag, existing_folder, existing_path, fraction, non_negative_int,
    open_fraction, positive_int,
)
from btd_jax.commands._safety import add_lenient_flag, add_overwrite_flag, output_plan, report_skipped, skipped_file
from btd_jax.data import volume as volume_io
from btd_jax.data.errors import DataError
from btd_jax.runtime.atomic import save_npy
from btd_jax.score import Scorer

CALIBRATION_FILE = "screen_calibration.json"
# The files of one screened volume (``dicom/`` only for DICOM input, ``suspicion.nii.gz`` with nibabel).
FILES = ("findings.json", "findings.csv", "suspicion.npy", "suspicion.nii.gz", "skipped.csv",
         os.path.join("dicom", "suspicion_pm.dcm"))


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("screen", help="whole-scan screening: findings, suspicion volume (NIfTI/DICOM)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, type=existing_folder, help="trained model directory")
    p.add_argument("--input", required=True, action="append", type=existing_path,
                   help="DICOM series, NIfTI, slice store or .npy (repeatable)")
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
    p.add_argument("--calibration", default=None,
                   help=f"scan-level calibration (default: workdir/{CALIBRATION_FILE}); written with --calibrate")
    p.add_argument("--calibrate", action="store_true", help="the inputs are real scans: fit and save the calibration")
    p.add_argument("--target_fpr", type=open_fraction, default=0.1,
                   help="with --calibrate: false positives per real scan")
    p.add_argument("--no_dicom", action="store_true", help="skip the DICOM outputs")
    add_overwrite_flag(p)
    add_lenient_flag(p)
    return p


def _scorer(args) -> Scorer:
    scorer = Scorer.load(args.workdir)
    if args.dtype and args.dtype != scorer.cfg.model.dtype:
        scorer = Scorer.from_params(scorer.params, configs.override(scorer.cfg, {"model.dtype": args.dtype}))
    return scorer


def _screen_kw(args) -> dict:
    kw = dict(center=args.center, steps=args.reverse_steps, reduction=args.reduction, batch_size=args.batch_size,
              proposal=args.proposal, stride=args.stride, proposal_stride=args.proposal_stride,
              proposal_center=args.proposal_center, proposal_scale=args.proposal_scale,
              per_slice=args.per_slice, shortlist=args.shortlist or None, max_candidates=args.max_candidates or None,
              refine=args.refine, climb=args.climb, tissue_min=args.tissue_min)
    if (args.reverse_steps or 1) > 1:
        kw["key"] = jax.random.key(args.seed)
    return kw


def _calibration(args):
    path = args.calibration or os.path.join(args.workdir, CALIBRATION_FILE)
    if args.calibration is None and not os.path.exists(path):
        return None
    return calibration.Calibration.load(path)


def write_outputs(out: str, vol: volume_io.Volume, res: screen.ScreenResult, report: dict, dicom: bool = True) -> dict:
    """Everything :mod:`btd_jax.clinical_io` can write for one screened volume; returns the paths."""
    paths = {"suspicion_npy": save_npy(os.path.join(out, "suspicion.npy"), res.suspicion)}
    notes = []
    try:
        paths["nifti"] = clinical_io.write_nifti(os.path.join(out, "suspicion.nii.gz"), res.suspicion, vol.geometry)
    except DataError as e:
        notes.append(str(e))
    vmax = float(np.percentile(res.suspicion, 99.5)) if res.suspicion.size else 1.0
    slices = list(dict.fromkeys(f["slice"] for f in res.findings))
    rgbs = []
    for s in slices:
        boxes = [f["window"] for f in res.findings if f["slice"] == s]
        rgbs.append(clinical_io.overlay_rgb(vol.pixels[s], res.suspicion[s], vmax, boxes))
    paths["overlays"] = [clinical_io.write_png(os.path.join(out, "overlays", f"slice_{s:04d}.png"), r)
                         for s, r in zip(slices, rgbs)]
    g = vol.geometry
    if dicom and g is not None and g.sop_instance_uids is not None:
        try:
            paths["parametric_map"] = clinical_io.write_parametric_map(
                os.path.join(out, "dicom", "suspicion_pm.dcm"), res.suspicion, g)
        except DataError as e:
            notes.append(str(e))
        if slices:
            paths["secondary_captures"] = clinical_io.write_secondary_captures(
                os.path.join(out, "dicom", "sc"), np.stack(rgbs), slices, g)
    paths.update(clinical_io.write_findings(out, res.findings, {**report, "outputs": paths, "notes": notes}))
    return paths


def _report(args, vol, res: screen.ScreenResult, scorer) -> dict:
    g = vol.geometry
    return {"input": os.path.abspath(vol.source), "workdir": os.path.abspath(args.workdir),
            "config": scorer.cfg.name, "dtype": scorer.cfg.model.dtype, "shape": list(vol.pixels.shape),
            "coordinates": "DICOM patient (LPS), mm" if g is not None else None,
            "series_uid": g.series_uid if g is not None else None,
            "decision": res.decision, "settings": res.settings, "work": res.work}


def _outs(args) -> list:
    """The output folder of each input: --out itself, or one numbered subfolder per input."""
    n = len(args.input)
    return [args.out] if n == 1 else [os.path.join(args.out, f"{i:03d}") for i in range(n)]


def plan_outputs(args):
    """Every path this run writes, checked before any work."""
    cal = args.calibration or os.path.join(args.workdir, CALIBRATION_FILE)
    plan = output_plan(args, inputs=[*args.input, None if args.calibrate else args.calibration],
                       workdirs=[args.workdir])
    if args.calibrate:
        plan.file(cal)
        plan.file(skipped_file(cal))
        return plan.check()
    if args.calibration is not None and not os.path.isfile(args.calibration):
        raise DataError(f"{args.calibration}: no such calibration file")
    if len(args.input) > 1:
        plan.folder(args.out)
    for out in _outs(args):
        plan.folder(out)
        for name in FILES if not args.no_dicom else FILES[:-1]:
            plan.file(os.path.join(out, name))
        plan.pattern(os.path.join(out, "overlays"), "slice_*.png")
        if not args.no_dicom:
            plan.pattern(os.path.join(out, "dicom", "sc"), "sc_*.dcm")
    return plan.check()


def run(args) -> int:
    if args.out is None and not args.calibrate:
        raise ValueError("--out is required (except with --calibrate)")
    plan_outputs(args)
    scorer = _scorer(args)
    kw = _screen_kw(args)
    vols = [volume_io.read_volume(p, scorer.cfg.modality, args.units, args.series_uid, strict=not args.lenient)
            for p in args.input]
    if not args.calibrate:
        for out, vol in zip(_outs(args), vols):
            report_skipped("screen", out, vol.skipped, folder=True)
    else:
        report_skipped("screen", args.calibration or os.path.join(args.workdir, CALIBRATION_FILE),
                       [s for v in vols for s in v.skipped])
    if args.calibrate:
        cal = screen.calibrate(scorer, [v.pixels for v in vols], target_fpr=args.target_fpr, top_k=1, **kw)
        path = cal.save(args.calibration or os.path.join(args.workdir, CALIBRATION_FILE))
        print(f"scan-level calibration on {cal.n} real scan(s): threshold {cal.threshold:.6g} "
              f"(empirical FPR {cal.empirical_fpr:.3g}, target {cal.target_fpr}) -> {path}")
        return 0
    cal = _calibration(args)
    for out, vol in zip(_outs(args), vols):
        res = screen.screen_volume(scorer, vol.pixels, vol.geometry, top_k=args.top_k, calibration=cal,
                                   name=vol.source, **kw)
        paths = write_outputs(out, vol, res, _report(args, vol, res, scorer), dicom=not args.no_dicom)
        d = res.decision
        verdict = ("FLAGGED" if d["flagged"] else "not flagged") + f" (p={d['p_value']:.3g})" if d["calibrated"] \
            else "uncalibrated (fit one with --calibrate on real scans)"
        print(f"{vol.source}: {len(vol.pixels)} slices, {res.work['seconds']:.1f} s, "
              f"{res.work['exact_windows']} exact windows; scan {verdict}")
        for f in res.findings[:5]:
            mm = f" ({f['x_mm']:.1f}, {f['y_mm']:.1f}, {f['z_mm']:.1f}) mm" if "x_mm" in f else ""
            print(f"  {f['rank']}. slice {f['slice']} row {f['row']} col {f['col']} score {f['score']:.6g}{mm}")
        print(f"  -> {paths['json']}")
    return 0


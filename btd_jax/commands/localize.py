"""``btd-jax localize``: sliding-window BTD over a whole slice or volume -> suspicion map + top-k.

    btd-jax localize --workdir DIR --input SLICE.npy --stride 16 --out DIR
    btd-jax localize --workdir DIR --input DICOM_FOLDER --stride 16 --slices 40:60 --out DIR

``--input``: a ``.npy`` slice (H, W) or volume (S, H, W), or a DICOM file/folder. Values are raw
(HU for CT, windowed to [-700, 2000]; MRI standardised) unless ``--units unit`` says they are
already in [0, 1]. Writes ``suspicion.npy`` ((H, W) or (S, H, W)), ``localize.json`` (top-k
locations as slice/row/col/score, plus p-values when the workdir has a matching calibration.json)
and ``overlay.png`` (the slice holding the best location). The outputs are checked before any
work: existing ones are replaced only with ``--overwrite``, a non-empty ``--out`` that localize did
not write needs it too, and nothing is written into the input. ``--lenient`` skips unreadable DICOM
files and lists them in ``OUT/skipped.csv``.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

from btd_jax import calibration, localize
from btd_jax.commands._flags import (
    add_deprecated_alias, existing_folder, existing_path, non_negative_float, non_negative_int, positive_int,
)
from btd_jax.commands._safety import add_lenient_flag, add_overwrite_flag, output_plan, report_skipped, skipped_file
from btd_jax.data import dicom, preprocess
from btd_jax.data.validate import check_real, load_npy
from btd_jax.runtime.atomic import save_npy, write_json
from btd_jax.score import Scorer

FILES = ("suspicion.npy", "overlay.png", "localize.json")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("localize", help="sliding-window BTD suspicion map and top-k suspicious locations",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, type=existing_folder, help="trained model directory")
    p.add_argument("--input", required=True, type=existing_path, help=".npy slice/volume or DICOM file/folder")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--stride", type=positive_int, default=16, help="window step in pixels")
    p.add_argument("--center", type=non_negative_int, default=32,
                   help="central window k for scores and map (0: whole window)")
    p.add_argument("--reverse_steps", type=positive_int, default=None,
                   help="reverse diffusion steps d (default: the model config's score.steps, paper 1)")
    add_deprecated_alias(p, "--steps", "--reverse_steps", "reverse_steps", type=positive_int)
    p.add_argument("--top_k", "--top-k", type=positive_int, default=5)
    p.add_argument("--nms_radius", "--nms-radius", type=non_negative_float, default=None,
                   help="default: half the patch")
    p.add_argument("--units", choices=("raw", "unit"), default="raw",
                   help="raw: HU (CT) / scanner values (MRI), preprocessed as in the paper; unit: already [0, 1]")
    p.add_argument("--slices", default=None, help="volume slice range START:STOP (default: all)")
    p.add_argument("--batch_size", "--batch-size", type=positive_int, default=None,
                   help="windows per device chunk (default: the model config's)")
    p.add_argument("--clip_inputs", action="store_true", help="clip values to [0, 1] instead of refusing them")
    add_deprecated_alias(p, "--clip", "--clip_inputs", "clip_inputs", flag=True)
    p.add_argument("--seed", type=non_negative_int, default=0, help="noise key for d > 1")
    add_overwrite_flag(p)
    add_lenient_flag(p)
    return p


def _load_input(path: str, modality: str, units: str, skipped=None):
    """-> float32 (S, H, W) in [0, 1] and whether the input was a single 2-D slice.

    With a list ``skipped``, unreadable DICOM files are left out and recorded there."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.endswith(".npy"):
        x = load_npy(path)
    else:
        series = dicom.load_series(path, modality=modality, strict=skipped is None)
        x = series.pixels  # (S, H, W), HU for CT
        if skipped is not None:
            skipped.extend(series.skipped)
    x = check_real(x, path)
    single = x.ndim == 2
    if single:
        x = x[None]
    if units == "raw":
        x = preprocess.to_unit_range(x, modality)  # MRI: standardised over the whole volume (per patient)
    return np.asarray(x, dtype=np.float32), single


def _slice_range(spec, n: int):
    if spec is None:
        return range(n)
    a, sep, b = spec.partition(":")
    try:
        start, stop = int(a or 0), int(b) if b else n
    except ValueError:
        raise ValueError(f"--slices must look like START:STOP, got {spec!r}") from None
    if not sep or not 0 <= start < stop <= n:
        raise ValueError(f"--slices {spec!r} is not a valid range in a volume of {n} slices")
    return range(start, stop)


def plan_outputs(args):
    """Every path this run writes, checked before any work."""
    plan = output_plan(args, inputs=[args.input], workdirs=[args.workdir])
    plan.folder(args.out)
    for path in [os.path.join(args.out, n) for n in FILES] + [skipped_file(args.out, folder=True)]:
        plan.file(path)
    return plan.check()


def run(args) -> int:
    center = args.center or None
    plan_outputs(args)
    scorer = Scorer.load(args.workdir)
    if center is not None and center > scorer.cfg.image_size:
        raise ValueError(f"--center {center} is larger than the model's patch size {scorer.cfg.image_size}")
    skipped = [] if args.lenient else None
    vol, single = _load_input(args.input, scorer.cfg.modality, args.units, skipped)
    report_skipped("localize", args.out, skipped or [], folder=True)
    if args.clip_inputs:
        vol = np.clip(vol, 0.0, 1.0)  # NaN stays NaN and is still refused
    steps = args.reverse_steps if args.reverse_steps is not None else scorer.cfg.score.steps
    batch_size = args.batch_size or scorer.cfg.score.batch_size
    cal = None
    if os.path.exists(os.path.join(args.workdir, calibration.FILENAME)):
        c = calibration.Calibration.load(args.workdir)
        if c.center == center and (c.steps or 1) == steps:
            cal = c
    key = jax.random.key(args.seed) if steps > 1 else None
    idx = list(_slice_range(args.slices, vol.shape[0]))
    t0 = time.perf_counter()
    results, top = localize.localize_volume(
        scorer, vol[idx], top_k=args.top_k, key=key, stride=args.stride, center=center, steps=steps,
        nms_radius=args.nms_radius, batch_size=batch_size, calibration=cal, patch=scorer.cfg.image_size)
    seconds = time.perf_counter() - t0
    for t in top:
        t["slice"] = idx[t["slice"]]

    maps = np.stack([r.suspicion for r in results])
    save_npy(os.path.join(args.out, "suspicion.npy"), maps[0] if single else maps)
    best = idx.index(top[0]["slice"]) if top else 0
    localize.save_overlay(vol[idx[best]], results[best], os.path.join(args.out, "overlay.png"),
                          title=f"{os.path.basename(args.input)} slice {idx[best]}: BTD suspicion")
    report = {
        "input": os.path.abspath(args.input), "workdir": os.path.abspath(args.workdir), "shape": list(vol.shape),
        "slices": [idx[0], idx[-1] + 1], "patch": scorer.cfg.image_size, "stride": args.stride, "center": center,
        "steps": steps, "windows_per_slice": int(results[0].scores.size), "seconds": seconds,
        "seconds_per_slice": seconds / len(idx), "calibrated": cal is not None, "top": top,
        "per_slice_top": {str(i): r.top for i, r in zip(idx, results)},
    }
    write_json(os.path.join(args.out, "localize.json"), report, indent=1)
    for i, t in enumerate(top):
        extra = f"  p={t['p_value']:.3g}" if "p_value" in t else ""
        print(f"{i + 1}. slice {t['slice']} row {t['row']} col {t['col']} score {t['score']:.6g}{extra}")
    print(f"{len(idx)} slice(s), {results[0].scores.size} windows each, {seconds:.2f} s -> {args.out}")
    return 0

"""``btd-jax localize``: sliding-window BTD over a whole slice or volume -> suspicion map + top-k.

    btd-jax localize --workdir DIR --input SLICE.npy --stride 16 --out DIR
    btd-jax localize --workdir DIR --input DICOM_FOLDER --stride 16 --slices 40:60 --out DIR

``--input``: a scan of any format with volumes (``--format``): a ``.npy`` slice (H, W) or volume
(S, H, W), a DICOM file/folder, a NIfTI volume, a slice store's series, ... Values are raw (HU for CT,
windowed to [-700, 2000]; MRI standardised) unless ``--units unit`` says they are already in [0, 1].
The work is :func:`btd_jax.localize.localize`. Writes ``suspicion.npy`` ((H, W) or (S, H, W)), ``localize.json`` (top-k
locations as slice/row/col/score, plus p-values when the workdir has a matching calibration.json)
and ``overlay.png`` (the slice holding the best location). The outputs are checked before any
work: existing ones are replaced only with ``--overwrite``, a non-empty ``--out`` that localize did
not write needs it too, and nothing is written into the input. ``--lenient`` skips unreadable DICOM
files and lists them in ``OUT/skipped.csv``.
"""

from __future__ import annotations

import argparse
import os

from btd_jax import localize
from btd_jax.commands._flags import (
    add_deprecated_alias, existing_folder, existing_path, non_negative_float, non_negative_int, positive_int,
)
from btd_jax.commands._safety import add_lenient_flag, add_overwrite_flag, output_plan, say_skipped, skipped_file
from btd_jax.data import readers


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("localize", help="sliding-window BTD suspicion map and top-k suspicious locations",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, type=existing_folder, help="trained model directory")
    p.add_argument("--input", required=True, type=existing_path,
                   help=f"a slice or scan of a format --format names: {', '.join(readers.names('localize'))}")
    p.add_argument("--format", default="auto", choices=("auto", *readers.names("localize")),
                   help=f"input format (default auto: detected): {readers.help_text('localize')}")
    p.add_argument("--series_uid", default=None, help="which series when a folder or slice store holds several")
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


def slice_range(spec):
    """``START:STOP`` (either may be left out) -> (start, stop or None)."""
    if spec is None:
        return None
    a, sep, b = spec.partition(":")
    try:
        start, stop = int(a or 0), int(b) if b else None
    except ValueError:
        raise ValueError(f"--slices must look like START:STOP, got {spec!r}") from None
    if not sep:
        raise ValueError(f"--slices must look like START:STOP, got {spec!r}")
    return start, stop


def plan_outputs(args):
    """Every path this run writes, checked before any work."""
    plan = output_plan(args, inputs=[args.input], workdirs=[args.workdir])
    plan.folder(args.out)
    for name in localize.FILES:
        plan.file(os.path.join(args.out, name))
    return plan.check()


def run(args) -> int:
    slices = slice_range(args.slices)
    plan_outputs(args)
    done = localize.localize(args.workdir, args.input, args.out, stride=args.stride, center=args.center or None,
                             steps=args.reverse_steps, top_k=args.top_k, nms_radius=args.nms_radius, units=args.units,
                             slices=slices, batch_size=args.batch_size, clip_inputs=args.clip_inputs, seed=args.seed,
                             strict=not args.lenient, fmt=args.format, series_uid=args.series_uid)
    say_skipped("localize", done.volume.skipped, skipped_file(args.out, folder=True))
    for i, t in enumerate(done.top):
        extra = f"  p={t['p_value']:.3g}" if "p_value" in t else ""
        print(f"{i + 1}. slice {t['slice']} row {t['row']} col {t['col']} score {t['score']:.6g}{extra}")
    rep = done.report
    print(f"{len(done.slices)} slice(s), {rep['windows_per_slice']} windows each, {rep['seconds']:.2f} s -> {args.out}")
    return 0

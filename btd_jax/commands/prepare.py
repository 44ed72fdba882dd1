"""``btd-jax prepare``: build a slice store (windowed slices in ``.npy`` shards + manifest) to train from.

    btd-jax prepare --input LIDC-IDRI/ --out stores/lidc                  # DICOM: patients x series
    btd-jax prepare --input authors_ct/ --out stores/ct                   # their train_csv.csv layout
    btd-jax prepare --input mri_pngs/ --out stores/mri                    # grey PNG/JPEG/TIFF images
    btd-jax prepare --input volumes/ --format nifti --modality CT --out gs://bucket/stores/ct

``--input``: any format of ``--format`` (a DICOM folder, the authors' CT training folder, a folder
of MRI images, NIfTI volumes, fastMRI ``.h5`` files, ...; see ``--format`` for each). ``--out`` may be local or remote (``gs://...``). An interrupted run resumes:
finished shards are kept. A local ``--out`` may not be (inside) the input or an existing file, and
an existing folder that is not a store needs ``--overwrite``; a store begun from other input or
options is started again when it finished nothing, or with ``--overwrite``. ``--lenient`` skips bad
files; they are listed (with the reason) in ``skipped.csv`` beside the store's ``store.json``, in
``store.json`` and on stderr. Then: ``btd-jax train --data STORE``.
"""

from __future__ import annotations

import argparse
import sys

from btd_jax.commands._flags import existing_path, positive_int
from btd_jax.commands._safety import LENIENT_HELP, add_overwrite_flag, output_plan
from btd_jax.data import readers
from btd_jax.data.store import slice_store, sources


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("prepare", help="build a slice store from any scan format (DICOM, NIfTI, fastMRI, "
                              "the authors' layouts, images, ...)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, type=existing_path,
                   help=f"input file or folder of a format --format names ({', '.join(readers.names('prepare'))})")
    p.add_argument("--out", required=True, help="store folder (local or gs://...); a rerun resumes it")
    p.add_argument("--format", default="auto", choices=("auto", *readers.names("prepare")),
                   help=f"input format (default auto: detected): {readers.help_text('prepare')}")
    p.add_argument("--modality", default=None, help="CT or MRI (default: from the input; NIfTI needs it)")
    p.add_argument("--size", type=positive_int, default=None,
                   help="crop side the candidate centres are made for (default: 96 CT, 128 MRI)")
    p.add_argument("--dtype", default="float16", choices=("float16", "float32"),
                   help="stored value type (float16: half the disk, within 2.5e-4 of float32)")
    p.add_argument("--resize", default="authors", choices=("authors", "none"),
                   help="image folders: the authors' MRI transform (shorter side to --size, centre crop) or none")
    p.add_argument("--shard_rows", type=positive_int, default=256, help="slices per shard for file-per-slice inputs")
    p.add_argument("--lenient", action="store_true", help=LENIENT_HELP.format(where="STORE/skipped.csv"))
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    add_overwrite_flag(p)
    return p


def plan_outputs(args):
    """A local --out: never (inside) the input or a file; a store (finished or not) is resumed; any
    other non-empty folder needs --overwrite. A remote --out is checked by the store writer."""
    if "://" in str(args.out):
        return None
    plan = output_plan(args, inputs=[args.input])
    plan.folder(args.out, resume=(slice_store.STORE_FILE, slice_store.PLAN_FILE))
    return plan.check()


def run(args) -> int:
    plan_outputs(args)
    s = sources.prepare(args.input, args.out, fmt=args.format, modality=args.modality, size=args.size,
                        dtype=args.dtype, resize=args.resize, shard_rows=args.shard_rows,
                        strict=not args.lenient, progress=not args.no_progress, overwrite=args.overwrite)
    for k in s["skipped"]:
        print(f"skipped {k['item']}: {k['reason']}", file=sys.stderr)
    print(f"{args.out}: {s['n_slices']} {s['modality']} slices in {len(s['shards'])} shard(s) "
          f"({s['options']['format']} input, {s['candidates']} crop centres, {len(s['skipped'])} skipped)")
    return 0

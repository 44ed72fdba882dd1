"""``btd-jax prepare``: build a slice store (windowed slices in ``.npy`` shards + manifest) to train from.

    btd-jax prepare --input LIDC-IDRI/ --out stores/lidc                  # DICOM: patients x series
    btd-jax prepare --input authors_ct/ --out stores/ct                   # their train_csv.csv layout
    btd-jax prepare --input mri_pngs/ --out stores/mri                    # grey PNG/JPEG/TIFF images
    btd-jax prepare --input volumes/ --format nifti --modality CT --out gs://bucket/stores/ct

``--input`` formats: a DICOM folder, the authors' CT training folder (``train_csv.csv`` with
``unix_path, x, y``; slices as ``.npy`` in HU), a folder of MRI images, NIfTI volumes (needs
``pip install 'btd_jax[nifti]'``) or fastMRI ``.h5`` files (``reconstruction_rss``; needs
``btd_jax[h5]``). ``--out`` may be local or remote (``gs://...``). An interrupted run resumes:
finished shards are kept. A local ``--out`` may not be (inside) the input, and an existing folder
that is not a store needs ``--overwrite``. ``--lenient`` skips bad files; they are listed (with the
reason) in the store's ``store.json`` and on stderr. Then: ``btd-jax train --data STORE``.
"""

from __future__ import annotations

import argparse
import sys

from btd_jax.commands._safety import add_overwrite_flag
from btd_jax.data import sources, store
from btd_jax.runtime.outputs import check_output_dir


FORMATS = ("auto", "authors_ct", "images", "dicom", "nifti", "fastmri")  # btd_jax.data.sources.FORMATS


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("prepare", help="build a slice store from DICOM / the authors' layouts / images "
                              "/ NIfTI / fastMRI", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", required=True, help="input file or folder")
    p.add_argument("--out", required=True, help="store folder (local or gs://...); a rerun resumes it")
    p.add_argument("--format", default="auto", choices=FORMATS, help="input format (default: detected)")
    p.add_argument("--modality", default=None, help="CT or MRI (default: from the input; NIfTI needs it)")
    p.add_argument("--size", type=int, default=None,
                   help="crop side the candidate centres are made for (default: 96 CT, 128 MRI)")
    p.add_argument("--dtype", default="float16", choices=("float16", "float32"),
                   help="stored value type (float16: half the disk, within 2.5e-4 of float32)")
    p.add_argument("--resize", default="authors", choices=("authors", "none"),
                   help="image folders: the authors' MRI transform (shorter side to --size, centre crop) or none")
    p.add_argument("--shard_rows", type=int, default=256, help="slices per shard for file-per-slice inputs")
    p.add_argument("--lenient", action="store_true", help="skip bad files and list them instead of stopping")
    p.add_argument("--no_progress", action="store_true", help="no progress bar")
    add_overwrite_flag(p)
    return p


def _check_out(args) -> None:
    """A local --out: never (inside) the input; an existing store is resumed; any other non-empty folder
    needs --overwrite."""
    if "://" in str(args.out):
        return
    check_output_dir(args.out, overwrite=args.overwrite or store.is_store(args.out), inputs=[args.input])


def run(args) -> int:
    _check_out(args)
    s = sources.prepare(args.input, args.out, fmt=args.format, modality=args.modality, size=args.size,
                        dtype=args.dtype, resize=args.resize, shard_rows=args.shard_rows,
                        strict=not args.lenient, progress=not args.no_progress)
    for k in s["skipped"]:
        print(f"skipped {k['item']}: {k['reason']}", file=sys.stderr)
    print(f"{args.out}: {s['n_slices']} {s['modality']} slices in {len(s['shards'])} shard(s) "
          f"({s['options']['format']} input, {s['candidates']} crop centres, {len(s['skipped'])} skipped)")
    return 0

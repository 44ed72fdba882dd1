"""``btd-jax score``: BTD scores for a set of patches -> CSV (and optional residual maps / PNG overlays).

    btd-jax score --workdir DIR --input patches.npy --out scores.csv [--reverse_steps 1 --center 32]
    btd-jax score --workdir DIR --input TESTSET_ROOT --modality CT --attack injection --out scores.csv
    btd-jax score --workdir DIR --input DICOM_DIR --locations points.csv --out scores.csv --maps maps.npz --png overlays/

``--input`` is a ``.npy``/``.npz`` array of patches in [0, 1], a folder in the authors' test-set layout,
or a DICOM file/folder. With ``--locations`` (CSV with columns ``path, x, y`` and optional ``frame``; paths
relative to the CSV or to ``--input``) the patches are cut around those points; without it a DICOM folder
gives ``--n_per_slice`` random patches per slice. The CSV has ``id, score``, ``label`` for test sets, and
every metadata column of the input (scanner, method, patient, path, x, y, ...). Every output
(``--out``, ``OUT.skipped.csv``, ``--maps`` with the ``.npz`` NumPy adds, ``--fit_reference``, the
PNGs in ``--png``) is checked before any work: existing ones are replaced only with ``--overwrite``,
never an input, a file inside an input folder or the workdir's files; ``--lenient`` skips bad DICOM
files, CSV rows and array files and lists them in ``OUT.skipped.csv``. Scores that are NaN/inf are
never written.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

import jax
import numpy as np
from tqdm import tqdm

from btd_jax import plots
from btd_jax.commands._flags import (
    add_deprecated_alias, add_reduction_flag, existing_file, existing_folder, existing_path, non_negative_int,
    positive_int,
)
from btd_jax.commands._safety import add_lenient_flag, add_overwrite_flag, output_plan, report_skipped, skipped_file
from btd_jax.data import datasets, dicom, preprocess, validate
from btd_jax.data.errors import DataError
from btd_jax.data.records import Skipped
from btd_jax.runtime.atomic import atomic_open, numpy_name, save_npz
from btd_jax.runtime.errors import NonFiniteError
from btd_jax.score import Scorer
from btd_jax.scoring import variants


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("score", help="BTD scores of patches -> CSV (+ residual maps, PNG overlays)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, type=existing_folder,
                   help="trained model directory (config.json + checkpoints)")
    p.add_argument("--input", required=True, type=existing_path,
                   help=".npy/.npz patches, a test-set root, or a DICOM file/folder")
    p.add_argument("--out", required=True, help="output CSV")
    p.add_argument("--locations", default=None, type=existing_file,
                   help="CSV of points (path, x, y[, frame]) to cut from DICOM files")
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
                   help=f"the variant's reference JSON (default WORKDIR/{variants.REFERENCE_FILE})")
    p.add_argument("--fit_reference", default=None, metavar="JSON",
                   help="treat --input as REAL validation patches: fit the reference of --variant (btd and multi_t: "
                        "the two_sided reference over their energies) and save it here")
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


def _resolve(path: str, csv_path: str, root: str) -> str:
    if os.path.isabs(path):
        return path
    for base in (os.path.dirname(csv_path), root if os.path.isdir(root) else os.path.dirname(root)):
        if os.path.exists(os.path.join(base, path)):
            return os.path.join(base, path)
    return os.path.join(os.path.dirname(csv_path), path)


def patches_from_locations(csv_path: str, root: str, size: int, modality=None, skipped=None):
    """Cuts (size, size) patches around the CSV's (x = column, y = row) points of DICOM slices.

    With a list ``skipped``, bad rows are left out and recorded there (:class:`Skipped`) instead of
    raising.

    Returns (patches (N, size, size) float32 in [0, 1], columns {name: (N,) array}). Values are mapped
    per slice with the paper's rule (CT: HU window; MR: standardised over the slice, since a CSV of
    points need not cover a whole series).
    """
    if not os.path.isfile(csv_path):
        raise DataError(f"{csv_path}: locations CSV not found")
    header, rows = validate.read_csv(csv_path)
    missing = [c for c in ("path", "x", "y") if c not in header]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {missing}; found {header}")
    if not rows:
        raise DataError(f"{csv_path}: no rows")
    cache, patches, kept = {}, [], []
    for i, r in enumerate(rows):
        try:
            path = _resolve(r["path"], csv_path, root)
            if path not in cache:
                sl = dicom.read_slice(path)
                cache = {path: (sl, {})}  # rows are usually grouped by file: keep one
            sl, mapped = cache[path]
            frame = int(r.get("frame") or 0)
            if not 0 <= frame < sl.pixels.shape[0]:
                raise DataError(f"frame {frame} out of range (file has {sl.pixels.shape[0]})")
            if frame not in mapped:
                mapped[frame] = preprocess.to_unit_range(sl.pixels[frame], modality or sl.modality)
            patches.append(preprocess.extract_patch(mapped[frame], r["x"], r["y"], size))
            kept.append(r)
        except DataError as e:
            if skipped is None:
                raise DataError(f"{csv_path} row {i + 2} ({r['path']}): {e}") from None
            skipped.append(Skipped(f"{csv_path} row {i + 2} ({r['path']})", str(e)))
    if not patches:
        raise DataError(f"{csv_path}: no usable row (all {len(rows)} skipped)")
    columns = {k: np.array([r.get(k, "") for r in kept]) for k in header}
    return np.stack(patches).astype(np.float32), columns


def _load_input(args, size):
    """-> (patches (N, size, size), labels (N,) or None, columns dict, skipped items)."""
    strict = not args.lenient
    if args.locations:
        skipped = [] if args.lenient else None
        patches, columns = patches_from_locations(args.locations, args.input, size, args.modality, skipped)
        return patches, None, columns, skipped or []
    data = datasets.load_data(args.input, modality=args.modality, attack=args.attack, size=size,
                              n_per_slice=args.n_per_slice, seed=args.seed, strict=strict)
    labels = getattr(data, "labels", None)
    if args.tamper and labels is not None:  # load_data has no tamper filter; reload the one set
        data = datasets.load_testset(args.input, data.modality, data.attack, tamper=args.tamper, size=size,
                                     strict=strict)
        labels = data.labels
    return data.patches, labels, dict(data.columns), list(data.skipped)


def write_scores_csv(path: str, scores, labels=None, columns=None) -> None:
    """CSV with id, score, label (if any), then every metadata column (except id/score/label)."""
    columns = {k: v for k, v in (columns or {}).items() if k not in ("id", "score", "label", "index")}
    with atomic_open(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "score"] + (["label"] if labels is not None else []) + list(columns))
        for i, s in enumerate(scores):
            row = [i, f"{float(s):.8g}"] + ([int(labels[i])] if labels is not None else [])
            w.writerow(row + [columns[k][i] for k in columns])


def _variant_options(args, scorer, patches, s, kw, want_maps) -> None:
    """Adds the score-variant keywords to ``kw``; with --fit_reference fits and saves the reference first.

    ``s``: the resolved ScoreConfig of this run."""
    if want_maps:
        raise ValueError("--maps/--png are only available with --variant btd")
    kw["key"] = kw.get("key") if kw.get("key") is not None else jax.random.key(args.seed)
    kw.update(variant=args.variant, start_ts=args.start_ts, reference=args.reference)
    if args.fit_reference:
        target = args.variant if variants.get(args.variant).needs_reference else "two_sided"
        options = {"base": args.variant} if target == "two_sided" and args.variant != "two_sided" else {}
        ref = variants.fit_variant_reference(scorer, patches, target, s, key=kw["key"], start_ts=args.start_ts,
                                             **options)
        print(f"{target} reference of {ref.n} real patches -> {ref.save(args.fit_reference)}")
        kw["reference"] = ref


def plan_outputs(args):
    """Every path this run writes, checked before any work (``--maps`` as NumPy names it)."""
    plan = output_plan(args, inputs=[args.input, args.locations, args.reference], workdirs=[args.workdir])
    args.maps = plan.file(numpy_name(args.maps, ".npz") if args.maps else None)
    for path in (args.out, skipped_file(args.out), args.fit_reference):
        plan.file(path)
    if args.png:
        plan.pattern(args.png, "*.png")
    return plan.check()


def run(args) -> int:
    plan_outputs(args)
    scorer = Scorer.load(args.workdir)
    cfg = scorer.cfg
    patches, labels, columns, skipped = _load_input(args, cfg.image_size)
    validate.check_shape(patches, args.input, size=cfg.image_size, channels=cfg.model.channels,
                         owner=f"the model ({cfg.name})")  # before any work, not after the first chunk
    report_skipped("score", args.out, skipped)
    given = dict(steps=args.reverse_steps, center=args.center, reduction=args.reduction, sampler=args.sampler,
                 start_t=args.start_t, batch_size=args.batch_size, clip_inputs=args.clip_inputs or None)
    kw = {k: v for k, v in given.items() if v is not None}
    s = scorer.settings(**kw)  # the config's score section with these flags applied
    if s.steps > 1 or s.start_t > 0:
        kw["key"] = jax.random.key(args.seed)
    want_maps = bool(args.maps or args.png)
    if args.variant != "btd" or args.fit_reference:
        _variant_options(args, scorer, patches, s, kw, want_maps)
    with tqdm(total=len(patches), desc="scoring", unit="patch", file=sys.stderr, dynamic_ncols=True) as bar:
        scores, maps = scorer.run(patches, maps=want_maps, progress=bar.update, **kw)
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        raise NonFiniteError(f"{len(bad)} of {len(scores)} scores are NaN/inf (first: patch {bad[0]}); nothing "
                             f"written to {args.out}. The model's weights or these inputs are unusable")
    write_scores_csv(args.out, scores, labels, columns)
    print(f"scored {len(scores)} patches ({args.variant}, d={s.steps}, center={s.center}, {s.reduction}) -> {args.out}")
    ids = np.arange(len(scores))
    if args.maps:
        save_npz(args.maps, maps=maps, ids=ids, scores=scores, **({"labels": labels} if labels is not None else {}))
        print(f"residual maps {maps.shape} -> {args.maps}")
    if args.png:
        n = plots.write_overlays(args.png, np.asarray(patches), maps, scores, ids, args.png_max)
        print(f"{n} PNG overlays -> {args.png}")
    return 0

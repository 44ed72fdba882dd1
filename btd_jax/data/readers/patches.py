"""Generic paths to patches: what ``--data``/``--input`` give training and scoring.

* :func:`read_patches`: the format's own patches (patch arrays, labelled test sets), else random
  patches per slice of its scans (:func:`random_patches`);
* :func:`located_patches`: patches around the points of a CSV (``path, x, y[, frame|slice]``), each
  ``path`` read by its own format as a scan, values mapped per slice.

Strict mode (the default) raises one :class:`DataError` naming the file and the problem; with
``strict=False`` bad items are left out and listed in ``.skipped``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional

import numpy as np

from btd_jax.data import preprocess
from btd_jax.data.errors import DataError
from btd_jax.data.readers.formats import Format, ReadOptions, resolve
from btd_jax.data.readers.volumes import scans_of, unit_range
from btd_jax.data.records import PatchSet, Skipped
from btd_jax.data.validate import read_csv

__all__ = ["PATCH_COLUMNS", "read_patches", "random_patches", "located_patches"]

# The metadata of patches cut from scans, one value per patch (from the scan's slice records).
PATCH_COLUMNS = ("patient", "series", "scanner", "modality", "slice", "frame", "x", "y", "path")


def read_patches(path: str | os.PathLike, *, fmt: str | Format = "auto", modality: Optional[str] = None,
                 attack: Optional[str] = None, tamper: Optional[str] = None, size: Optional[int] = None,
                 n_per_slice: int = 4, seed: int = 0, strict: bool = True) -> PatchSet:
    """Patches of any input: the format's own (a ``.npy``/``.npz`` of patches; a test set, picked by
    ``modality``/``attack``/``tamper``, as a :class:`TestSet`), else ``n_per_slice`` random patches
    per slice of its scans (seeded by ``seed``)."""
    f = resolve(path, fmt)
    opts = ReadOptions(modality=modality, strict=strict, size=size, attack=attack, tamper=tamper)
    if f.patches is not None:
        return f.patches(Path(path), opts)
    if f.scans is not None:
        return random_patches(path, f, opts, n_per_slice=n_per_slice, rng=seed)
    raise DataError(f"{path}: {f.name} input gives no patches (it is read as {', '.join(f.offers)}); "
                    "prepare it into a slice store (btd-jax prepare) and train from that")


def random_patches(path: str | os.PathLike, fmt: str | Format = "auto", opts: ReadOptions = ReadOptions(), *,
                   n_per_slice: int = 4, rng: np.random.Generator | int | None = 0, margin: Optional[int] = None,
                   target_spacing: Optional[float] = None) -> PatchSet:
    """``n_per_slice`` random patch centres per slice (:func:`preprocess.random_locations`, whole patches
    inside the slice) of every scan of ``path``, mapped to [0, 1] as in the paper (CT: HU window; MRI:
    standardised over each volume); ``target_spacing`` resamples every slice to that pixel spacing (mm)
    first, x and y then refer to the resampled slice.

    Returns a :class:`PatchSet` of (N, size, size) float32 (``opts.size``, default the paper's) with
    the columns :data:`PATCH_COLUMNS`.
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    f, refs, skipped, mod = scans_of(path, fmt, opts)
    patches, rows = [], []
    for ref in refs:
        try:
            scan = ref.load()
            skipped += scan.skipped
            vol = unit_range(scan, mod, ref.where)
            m = mod or preprocess.canonical_modality(scan.modality)
            side = int(opts.size or preprocess.PATCH_SIZE[m])
            if target_spacing is not None:
                spacing = scan.records[0].get("pixel_spacing") if scan.records else None
                if not spacing:
                    raise DataError("no PixelSpacing in the input, cannot resample")
                vol = np.clip(preprocess.resample(vol, spacing, target_spacing), 0, 1)
            locs = [preprocess.random_locations(vol.shape, n_per_slice, side, rng, margin=margin)
                    for _ in range(vol.shape[0])]
        except DataError as e:
            if opts.strict:
                raise DataError(f"{path}: {ref.where}: {str(e).removeprefix(ref.where + ': ')}") from None
            skipped.append(Skipped(f"series {ref.series}", str(e)))
            continue
        for k in range(vol.shape[0]):
            rec = dict(scan.records[k], modality=m, slice=scan.records[k].get("slice", k))
            for x, y in locs[k]:
                patches.append(preprocess.extract_patch(vol[k], x, y, side))
                rows.append(dict(rec, x=int(x), y=int(y)))
    if not patches:
        raise DataError(f"{path}: no patches could be cut; first problem: "
                        + (f"{skipped[0].item}: {skipped[0].reason}" if skipped else "none"))
    if len({p.shape for p in patches}) > 1:
        raise DataError(f"{path}: scans of different modalities give different patch sizes; pass modality= or size=")
    cols = {c: np.array([r.get(c, "") for r in rows]) for c in PATCH_COLUMNS}
    return PatchSet(np.stack(patches).astype(np.float32), cols, skipped)


def _resolve(path: str, csv_path: str, root: str) -> str:
    if os.path.isabs(path):
        return path
    for base in (os.path.dirname(csv_path), root if os.path.isdir(root) else os.path.dirname(root)):
        if os.path.exists(os.path.join(base, path)):
            return os.path.join(base, path)
    return os.path.join(os.path.dirname(csv_path), path)


def _slice_index(row: dict) -> int:
    for name in ("slice", "frame"):
        if row.get(name) not in (None, ""):
            try:
                return int(float(row[name]))
            except ValueError:
                raise DataError(f"{name} {row[name]!r} is not a number") from None
    return 0


def located_patches(csv_path: str, root: str, size: int, modality: Optional[str] = None,
                    skipped: Optional[list] = None, fmt: str | Format = "auto") -> PatchSet:
    """(size, size) patches around the CSV's points (``path``, ``x`` = column, ``y`` = row, and ``frame``
    or ``slice``: which slice of the file, default 0); paths relative to the CSV or to ``root``.

    Each file is read by its format's scans (a DICOM file, a NIfTI volume, a ``.npy``, ...) and the
    slice mapped on its own with the paper's rule (CT: HU window; MRI: standardised over the slice,
    since a CSV of points need not cover a whole volume). With a list ``skipped``, bad rows are left
    out and recorded there instead of raising. Columns: every CSV column.
    """
    if not os.path.isfile(csv_path):
        raise DataError(f"{csv_path}: locations CSV not found")
    header, rows = read_csv(csv_path)
    missing = [c for c in ("path", "x", "y") if c not in header]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {missing}; found {header}")
    if not rows:
        raise DataError(f"{csv_path}: no rows")
    cache: dict = {}
    patches, kept = [], []
    for i, r in enumerate(rows):
        try:
            path = _resolve(r["path"], csv_path, root)
            if path not in cache:
                _, refs, _, mod = scans_of(path, fmt, ReadOptions(modality=modality))
                cache = {path: (refs[0].load(), mod, {})}  # rows are usually grouped by file: keep one
            scan, mod, mapped = cache[path]
            k = _slice_index(r)
            if not 0 <= k < len(scan.pixels):
                raise DataError(f"slice/frame {k} out of range (file has {len(scan.pixels)})")
            if k not in mapped:
                one = dataclasses.replace(scan, pixels=scan.pixels[k:k + 1])
                mapped[k] = unit_range(one, mod, f"slice {k}")[0]
            patches.append(preprocess.extract_patch(mapped[k], r["x"], r["y"], size))
            kept.append(r)
        except DataError as e:
            if skipped is None:
                raise DataError(f"{csv_path} row {i + 2} ({r['path']}): {e}") from None
            skipped.append(Skipped(f"{csv_path} row {i + 2} ({r['path']})", str(e)))
    if not patches:
        raise DataError(f"{csv_path}: no usable row (all {len(rows)} skipped)")
    columns = {k: np.array([r.get(k, "") for r in kept]) for k in header}
    return PatchSet(np.stack(patches).astype(np.float32), columns, list(skipped or []))


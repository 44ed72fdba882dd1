"""Datasets: patch arrays, the authors' published test-set layout, patient-level splits.

Training and scoring read data only through this module:

* :func:`load_patches` - a ``.npy``/``.npz`` array of patches in [0, 1];
* :func:`load_testset` / :func:`write_testset` - the authors' layout
  ``CT/<attack>/CT_<attack>.csv`` and ``MRI/MRI_<attack>.csv`` (columns ``path, x, y, type`` plus one
  0/1 indicator column ``<method>-<CT|MRI>-<attack>`` per tamper method, e.g. ``CTGAN-CT-Inject``);
* :func:`patches_from_dicom` - a folder of DICOM series cut into patches, with a manifest;
* :func:`split_patients` - seeded train/validation/test split by patient, stratified by scanner.

Strict mode (the default) raises one :class:`DataError` naming the file and the problem; with
``strict=False`` bad items are skipped and each is listed with its reason in ``.skipped`` (and in
the manifest CSV).
"""

from __future__ import annotations

import csv
import os
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from btd_jax.data import dicom, preprocess
from btd_jax.data.errors import DataError
from btd_jax.data.records import PatchSet, Skipped, TestSet
from btd_jax.data.testset import ATTACKS, LABELS, load_testset, testset_csv_path, write_testset
from btd_jax.data.validate import check_patches, load_npy, load_npz
from btd_jax.runtime.atomic import atomic_open

__all__ = [
    "PatchSet", "TestSet", "Skipped", "ATTACKS", "LABELS", "load_patches", "validate_patches",
    "testset_csv_path", "load_testset", "write_testset", "split_patients", "holdout_parts", "write_manifest",
    "patches_from_dicom", "load_data",
]

_NPZ_KEYS = ("patches", "images", "x", "arr_0")


# ----------------------------------------------------------------------------------------------
# (a) patch arrays

def validate_patches(arr: np.ndarray, name: str = "patches") -> np.ndarray:
    """Check an array of patches and return it as (N, H, W) float32 in [0, 1].

    Accepts (N, H, W) or (N, H, W, 1) floating arrays of square patches, all finite, every value in [0, 1].
    """
    return np.ascontiguousarray(check_patches(arr, name)[..., 0])


def load_patches(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """Load patches from a ``.npy`` or ``.npz`` file -> (N, H, W) float32 in [0, 1].

    For ``.npz``: ``key`` if given, else the only array, else the first of 'patches', 'images',
    'x', 'arr_0' present.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = load_npy(path)
    elif suffix == ".npz":
        z = load_npz(path)
        names = list(z)
        if key is None:
            key = names[0] if len(names) == 1 else next((k for k in _NPZ_KEYS if k in names), None)
        if key not in names:
            raise DataError(f"{path}: cannot tell which array holds the patches; arrays: {names} (pass key=...)")
        arr = z[key]
    else:
        raise DataError(f"{path}: unsupported patch file type {suffix!r}; use .npy or .npz")
    return validate_patches(arr, str(path))


# ----------------------------------------------------------------------------------------------
# splits

def split_patients(patient_ids: Sequence, scanners: Sequence | None = None,
                   fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0) -> np.ndarray:
    """Seeded patient-level split, stratified by scanner.

    Args:
      patient_ids: (N,) patient of every item (repeats allowed: one entry per slice/patch).
      scanners: (N,) scanner of every item; a patient's scanner is its most frequent one.
      fractions: share of patients per part (default train/val/test 0.7/0.15/0.15), summing to 1.
    Returns:
      (N,) int64 part index of every item; all items of a patient get the same part. Within every
      scanner the patients are shuffled with a generator seeded by (seed, scanner) and cut by
      largest-remainder rounding, so the result depends only on the set of (patient, scanner)
      pairs and ``seed``, not on the order of the items.
    """
    pids = np.asarray([str(p) for p in patient_ids])
    if pids.size == 0:
        raise DataError("split_patients: no patients")
    scs = np.full(pids.shape, "", dtype=object) if scanners is None else \
        np.asarray([str(s) for s in scanners])
    if scs.shape != pids.shape:
        raise DataError(f"split_patients: {pids.size} patient ids but {scs.size} scanners")
    fr = np.asarray(fractions, np.float64)
    if fr.ndim != 1 or fr.size < 1 or np.any(fr < 0) or abs(fr.sum() - 1.0) > 1e-6:
        raise DataError(f"split_patients: fractions must be >= 0 and sum to 1, got {tuple(fr)}")
    uniq, inv = np.unique(pids, return_inverse=True)
    scanner_of = {}
    for j in range(uniq.size):
        vals, counts = np.unique(scs[inv == j].astype(str), return_counts=True)
        scanner_of[uniq[j]] = vals[np.argmax(counts)]
    part_of: dict[str, int] = {}
    for sc in sorted(set(scanner_of.values())):
        group = np.array(sorted(p for p, s in scanner_of.items() if s == sc))
        rng = np.random.default_rng([int(seed), zlib.crc32(sc.encode())])
        group = group[rng.permutation(group.size)]
        raw = fr * group.size
        counts = np.floor(raw).astype(int)
        for k in np.argsort(-(raw - counts), kind="stable")[:group.size - counts.sum()]:
            counts[k] += 1
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for part in range(fr.size):
            for p in group[bounds[part]:bounds[part + 1]]:
                part_of[p] = part
    return np.array([part_of[p] for p in pids], np.int64)


def holdout_parts(n: int, patient_ids: Sequence | None, scanners: Sequence | None, fraction: float,
                  seed: int = 0) -> np.ndarray:
    """(n,) int64, 1 for the held-out items: about ``fraction`` of the patients (:func:`split_patients`,
    stratified by scanner), or, with fewer than two patients or too few for both sides, that
    fraction of the items at random (at least one)."""
    part = None
    if patient_ids is not None and len(set(map(str, patient_ids))) >= 2:
        part = split_patients(patient_ids, scanners, fractions=(1 - fraction, fraction), seed=seed)
        if part.min() == part.max():
            part = None
    if part is None:
        part = np.zeros(n, np.int64)
        part[np.random.default_rng((seed, 1)).permutation(n)[:max(1, int(round(fraction * n)))]] = 1
    return part


# ----------------------------------------------------------------------------------------------
# (b) DICOM folders -> patches with a manifest

MANIFEST_COLUMNS = ("patient", "series", "scanner", "modality", "slice", "frame", "x", "y", "path",
                    "status", "reason")


def write_manifest(path: str | os.PathLike, columns: dict[str, np.ndarray],
                   skipped: Sequence[Skipped] = ()) -> Path:
    """Write a manifest CSV: one 'ok' row per patch, then one 'skipped' row per skipped item
    (its file or item in ``path``, why in ``reason``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = [c for c in MANIFEST_COLUMNS if c in columns or c in ("path", "status", "reason")]
    names += [c for c in columns if c not in names]
    n = len(next(iter(columns.values()))) if columns else 0
    with atomic_open(path, newline="") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        for i in range(n):
            w.writerow({c: (columns[c][i] if c in columns else "") for c in names}
                       | {"status": "ok", "reason": ""})
        for s in skipped:
            w.writerow({c: "" for c in names} | {"path": s.item, "status": "skipped",
                                                  "reason": s.reason})
    return path


def patches_from_dicom(folder: str | os.PathLike, size: int | None = None, n_per_slice: int = 4,
                       rng: np.random.Generator | int | None = 0, modality: str | None = None,
                       strict: bool = True, manifest: str | os.PathLike | None = None,
                       margin: int | None = None,
                       target_spacing: float | None = None) -> PatchSet:
    """Cut random training patches out of every image series under ``folder``.

    Each series is mapped to [0, 1] as in the paper (CT: HU window; MR: per-patient standardisation
    over the series volume, :func:`preprocess.normalize_mri`), then ``n_per_slice`` centres per slice
    are drawn by :func:`preprocess.random_locations` (whole patches inside the slice).

    Args:
      folder: folder (searched recursively) or a single DICOM file.
      size: patch side; default 96 for CT and 128 for MR (the paper's).
      rng: numpy Generator or seed for the locations.
      modality: keep only this modality; without it a folder mixing modalities is an error.
      strict: raise on the first bad file/series; else skip and record it.
      manifest: optional CSV path for the manifest (:func:`write_manifest`), skipped items included.
      target_spacing: resample every slice to this pixel spacing (mm) first
        (:func:`preprocess.resample`); x, y then refer to the resampled slice.
    Returns:
      :class:`PatchSet`: patches (N, size, size) float32 and columns patient, series, scanner,
      modality, slice, frame, x, y, path.
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    series, skipped = dicom.load_all_series(folder, modality=modality, strict=strict)
    patches, rows = [], []
    for s in series:
        try:
            mod = preprocess.canonical_modality(s.modality)
            side = int(size or preprocess.PATCH_SIZE[mod])
            vol = preprocess.to_unit_range(s.pixels, mod)
            if target_spacing is not None:
                if s.pixel_spacing is None:
                    raise DataError("no PixelSpacing in the files, cannot resample")
                vol = np.clip(preprocess.resample(vol, s.pixel_spacing, target_spacing), 0, 1)
            locs = [preprocess.random_locations(vol.shape, n_per_slice, side, rng, margin=margin)
                    for _ in range(vol.shape[0])]
        except DataError as e:
            if strict:
                raise DataError(f"{folder}: series {s.series_uid} (patient {s.patient_id}): {e}") \
                    from None
            skipped.append(Skipped(f"series {s.series_uid}", str(e)))
            continue
        for k in range(vol.shape[0]):
            for x, y in locs[k]:
                patches.append(preprocess.extract_patch(vol[k], x, y, side))
                rows.append((s.patient_id, s.series_uid, s.scanner, mod, k, s.frames[k], int(x),
                             int(y), s.paths[k]))
    if not patches:
        raise DataError(f"{folder}: no patches could be cut; first problem: "
                        + (f"{skipped[0].item}: {skipped[0].reason}" if skipped else "none"))
    if len({p.shape for p in patches}) > 1:
        raise DataError(f"{folder}: series of different modalities give different patch sizes; "
                        f"pass modality= or size=")
    cols = {name: np.array([r[i] for r in rows]) for i, name in enumerate(MANIFEST_COLUMNS[:9])}
    out = PatchSet(np.stack(patches).astype(np.float32), cols, skipped)
    if manifest is not None:
        write_manifest(manifest, out.columns, skipped)
    return out


def _find_testset(root: Path) -> list[tuple[str, str]]:
    """(modality, attack) pairs whose CSV exists under ``root``."""
    found = []
    for mod in ("CT", "MRI"):
        for att in ("Inject", "Remove"):
            if testset_csv_path(root, mod, att).is_file():
                found.append((mod, att))
    return found


def load_data(path: str | os.PathLike, modality: str | None = None, attack: str | None = None,
              size: int | None = None, n_per_slice: int = 4, seed: int = 0,
              strict: bool = True) -> PatchSet:
    """One entry point for the CLI's ``--data``/``--input``: what ``path`` holds decides the loader.

    * ``.npy``/``.npz`` file -> :func:`load_patches` (columns: ``index``);
    * folder in the authors' test-set layout -> :func:`load_testset` (``modality``/``attack`` pick
      the CSV when there are several) -> a :class:`TestSet`;
    * DICOM file or folder -> :func:`patches_from_dicom` with ``n_per_slice`` random patches per
      slice (seeded by ``seed``).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file() and path.suffix.lower() in (".npy", ".npz"):
        arr = load_patches(path)
        return PatchSet(arr, {"index": np.arange(arr.shape[0])})
    if path.is_dir():
        found = _find_testset(path)
        if modality is not None:
            found = [f for f in found if f[0] == ("CT" if preprocess.canonical_modality(modality)
                                                   == "CT" else "MRI")]
        if attack is not None:
            found = [f for f in found if f[1] == ATTACKS.get(attack.strip().lower(), attack)]
        if len(found) > 1:
            raise DataError(f"{path}: holds several test sets {found}; pass modality= and attack=")
        if found:
            return load_testset(path, found[0][0], found[0][1], size=size, strict=strict)
    return patches_from_dicom(path, size=size, n_per_slice=n_per_slice, rng=seed,
                              modality=modality, strict=strict)

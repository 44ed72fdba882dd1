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

from btd_jax.data import preprocess
from btd_jax.data.errors import DataError
from btd_jax.data.records import PatchSet, Skipped, TestSet
from btd_jax.data.testset import ATTACKS, LABELS, load_testset, testset_csv_path, write_testset

__all__ = [
    "PatchSet", "TestSet", "Skipped", "ATTACKS", "LABELS", "load_patches", "validate_patches",
    "testset_csv_path", "load_testset", "write_testset", "split_patients", "write_manifest",
    "patches_from_dicom", "load_data",
]

_NPZ_KEYS = ("patches", "images", "x", "arr_0")


# ----------------------------------------------------------------------------------------------
# (a) patch arrays

def validate_patches(arr: np.ndarray, name: str = "patches") -> np.ndarray:
    """Check an array of patches and return it as (N, H, W) float32 in [0, 1].

    Accepts (N, H, W) or (N, H, W, 1) floating arrays, all finite, every value in [0, 1].
    """
    arr = np.asarray(arr)
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"{name}: expected floating patches in [0, 1], got dtype {arr.dtype} "
                        f"(scale integer images to [0, 1] first, e.g. / 255)")
    if arr.ndim == 4 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise DataError(f"{name}: expected shape (N, H, W) or (N, H, W, 1), got {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise DataError(f"{name}: empty array of shape {arr.shape}")
    finite = np.isfinite(arr)
    if not finite.all():
        bad = np.unique(np.nonzero(~finite)[0])
        raise DataError(f"{name}: {int((~finite).sum())} NaN/inf value(s) in {bad.size} patch(es), "
                        f"first at index {int(bad[0])}")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise DataError(f"{name}: values must lie in [0, 1] (the paper's preprocessing), found "
                        f"[{lo:.6g}, {hi:.6g}]")
    return np.ascontiguousarray(arr, dtype=np.float32)


def load_patches(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """Load patches from a ``.npy`` or ``.npz`` file -> (N, H, W) float32 in [0, 1].

    For ``.npz``: ``key`` if given, else the only array, else the first of 'patches', 'images',
    'x', 'arr_0' present.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                names = list(z.files)
                if key is None:
                    key = names[0] if len(names) == 1 else next(
                        (k for k in _NPZ_KEYS if k in names), None)
                if key not in names:
                    raise DataError(f"{path}: cannot tell which array holds the patches; arrays: "
                                    f"{names} (pass key=...)")
                arr = z[key]
        else:
            raise DataError(f"{path}: unsupported patch file type {suffix!r}; use .npy or .npz")
    except DataError:
        raise
    except Exception as e:  # corrupt zip/npy header, pickled objects, truncation
        raise DataError(f"{path}: cannot read array ({type(e).__name__}: {e})") from None
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

"""Datasets: patch arrays, the authors' published test-set layout, DICOM folders cut into patches,
patient-level splits.

* :func:`load_patches` - a ``.npy``/``.npz`` array of patches in [0, 1];
* :func:`load_testset` / :func:`write_testset` - the authors' layout
  ``CT/<attack>/CT_<attack>.csv`` and ``MRI/MRI_<attack>.csv`` (columns ``path, x, y, type`` plus one
  0/1 indicator column ``<method>-<CT|MRI>-<attack>`` per tamper method, e.g. ``CTGAN-CT-Inject``);
* :func:`patches_from_dicom` - a folder of DICOM series cut into patches, with a manifest;
* :func:`load_data` - any ``--data``/``--input`` as patches (:func:`btd_jax.data.readers.read_patches`);
* :func:`split_patients` - seeded train/validation/test split by patient, stratified by scanner.

Strict mode (the default) raises one :class:`DataError` naming the file and the problem; with
``strict=False`` bad items are skipped and each is listed with its reason in ``.skipped`` (and in
the manifest CSV).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from btd_jax.data import readers
from btd_jax.data.readers import PATCH_COLUMNS, ReadOptions, load_patches, validate_patches
from btd_jax.data.records import PatchSet, Skipped, TestSet
from btd_jax.data.splits import holdout_parts, split_patients
from btd_jax.data.testsets.layout import ATTACKS, LABELS, load_testset, testset_csv_path, write_testset
from btd_jax.runtime.atomic import atomic_open

__all__ = [
    "PatchSet", "TestSet", "Skipped", "ATTACKS", "LABELS", "load_patches", "validate_patches",
    "testset_csv_path", "load_testset", "write_testset", "split_patients", "holdout_parts", "write_manifest",
    "patches_from_dicom", "load_data",
]

MANIFEST_COLUMNS = PATCH_COLUMNS + ("status", "reason")


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
    """Cut random training patches out of every image series under ``folder``
    (:func:`btd_jax.data.readers.random_patches` of the DICOM format).

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
    out = readers.random_patches(folder, "dicom", ReadOptions(modality=modality, strict=strict, size=size),
                                 n_per_slice=n_per_slice, rng=rng, margin=margin, target_spacing=target_spacing)
    if manifest is not None:
        write_manifest(manifest, out.columns, out.skipped)
    return out


def load_data(path: str | os.PathLike, modality: str | None = None, attack: str | None = None,
              size: int | None = None, n_per_slice: int = 4, seed: int = 0,
              strict: bool = True) -> PatchSet:
    """One entry point for the CLI's ``--data``/``--input``: :func:`btd_jax.data.readers.read_patches`.

    * ``.npy``/``.npz`` file -> :func:`load_patches` (columns: ``index``);
    * folder in the authors' test-set layout -> :func:`load_testset` (``modality``/``attack`` pick
      the CSV when there are several) -> a :class:`TestSet`;
    * any input with scans (DICOM, NIfTI, ...) -> ``n_per_slice`` random patches per slice (seeded by ``seed``).
    """
    return readers.read_patches(path, modality=modality, attack=attack, size=size, n_per_slice=n_per_slice,
                                seed=seed, strict=strict)

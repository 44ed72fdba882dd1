"""The NIfTI format (``.nii``/``.nii.gz``, read with nibabel: the extra ``nifti``): one scan per file.

NIfTI stores (I, J, K) = (col, row, slice) with a RAS affine; it is read as (S, H, W) with the
affine converted to LPS, so findings are reported in one coordinate system whatever the input.
The files do not say their modality: pass it.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import List, Tuple

import numpy as np

from btd_jax.data.errors import DataError
from btd_jax.data.readers.formats import Format, Probe, ReadOptions, Scan, ScanRef, register
from btd_jax.data.readers.geometry import LPS_TO_RAS, Geometry, slice_affine
from btd_jax.data.records import Skipped
from btd_jax.runtime.errors import require

__all__ = ["FORMAT", "SUFFIXES", "read_nifti", "nifti_scans"]

SUFFIXES = (".nii", ".nii.gz")


def read_nifti(path: str | os.PathLike) -> Tuple[np.ndarray, np.ndarray]:
    """A NIfTI file -> (data (S, H, W) float32 in its stored units, LPS affine (4, 4))."""
    nib = require("nibabel", f"{path}: reading NIfTI")  # a missing package is never a skippable bad file
    try:
        img = nib.load(str(path))
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as e:  # nibabel raises many types for damaged files
        raise DataError(f"{path}: not a readable NIfTI file ({type(e).__name__}: {e})") from None
    data = np.squeeze(data, axis=tuple(range(3, data.ndim))) if data.ndim > 3 else data
    if data.ndim == 2:
        data = data[..., None]
    if data.ndim != 3:
        raise DataError(f"{path}: expected a 3-D volume, got shape {data.shape}")
    return np.ascontiguousarray(np.transpose(data, (2, 1, 0))), LPS_TO_RAS @ np.asarray(img.affine, np.float64)


def _stem(path: Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".nii")


def _load(path: Path) -> Scan:
    data, affine = read_nifti(path)
    spacing = [float(np.linalg.norm(affine[:3, 1])), float(np.linalg.norm(affine[:3, 0]))]
    name = _stem(path)
    records = [dict(patient=name, series=name, scanner="", slice=k, frame=0, path=str(path), pixel_spacing=spacing,
                    affine=slice_affine(affine, k)) for k in range(len(data))]
    geometry = functools.partial(Geometry, affine=affine, paths=(str(path),) * len(data))
    return Scan(data, records, geometry=geometry)


def nifti_scans(path: Path, opts: ReadOptions) -> Tuple[List[ScanRef], List[Skipped]]:
    """One scan per NIfTI file (``path`` itself, or every one under the folder ``path``)."""
    files = [path] if path.is_file() else Probe(path).matching(SUFFIXES)
    return [ScanRef(f"nifti:{f}", _stem(f), str(f), 1, functools.partial(_load, f)) for f in files], []


FORMAT = register(Format(
    "nifti", "NIfTI volumes (.nii/.nii.gz, a file or a folder): one scan per file, slices along the third "
             "axis, LPS affine; needs --modality",
    lambda p: p.any_suffix(SUFFIXES), extra="nifti", scans=nifti_scans))

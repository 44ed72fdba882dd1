"""Slices to attack, from a DICOM file/folder, a slice store or a ``.npy`` array.

Every reader returns :class:`btd_jax.data.demo_data.SourceImage` objects whose whole area may be
attacked: CT in Hounsfield units (the store keeps windowed slices; they are mapped back to HU with
the window's inverse, so values outside [-700, 2000] HU come back clipped), MRI in [0, 1]
(standardised per series, as the paper does).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import numpy as np

from btd_jax.attacks.attacker import as_sources
from btd_jax.data import demo_data, dicom, preprocess, store
from btd_jax.data.errors import DataError

__all__ = ["load_sources"]


def _from_npy(path: Path, mod: str) -> List[demo_data.SourceImage]:
    arr = np.load(path, allow_pickle=False)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{path}: expected (S, H, W) or (H, W) slices ({'HU' if mod == 'CT' else '[0, 1]'}), "
                        f"got {arr.dtype} of shape {arr.shape}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise DataError(f"{path}: contains NaN or inf")
    if mod == "MRI" and (arr.min() < 0.0 or arr.max() > 1.0):
        arr = preprocess.normalize_mri(arr)
    n = len(arr)
    return as_sources(arr, mod, [path.stem] * n, [path.stem] * n, [path.stem] * n, range(n))


def _from_store(path: Path, mod: str, max_slices: Optional[int]) -> List[demo_data.SourceImage]:
    st = store.open_store(path)
    if preprocess.canonical_modality(st.modality) != preprocess.canonical_modality(mod):
        raise DataError(f"{path}: the store holds {st.modality} slices, not {mod}")
    recs = list(st.records())
    out = []
    for row in range(min(len(st), max_slices or len(st))):
        unit = np.asarray(st.slice(row), np.float32)
        img = unit * (preprocess.CT_HI - preprocess.CT_LO) + preprocess.CT_LO if mod == "CT" else unit
        r = recs[row] if row < len(recs) else {}
        name = Path(str(r.get("path") or f"row{row}")).stem
        out += as_sources(img, mod, [name], [str(r.get("scanner", "store"))], [str(r.get("patient", "store"))],
                          [int(r.get("frame", 0) or 0)])
    return out


def _from_dicom(path: Path, mod: str, max_slices: Optional[int],
                skipped: Optional[list] = None) -> List[demo_data.SourceImage]:
    series_list, bad = dicom.load_all_series(path, modality="CT" if mod == "CT" else "MR", strict=skipped is None)
    if skipped is not None:
        skipped.extend(bad)
    out = []
    for s in series_list:
        px = s.pixels.astype(np.float32)
        images = px if mod == "CT" else preprocess.normalize_mri(px)
        n = len(images)
        names = [Path(p).stem for p in s.paths]
        out += as_sources(images, mod, names, [s.scanner or "unknown"] * n, [s.patient_id or "unknown"] * n,
                          s.frames)
    return out[:max_slices] if max_slices else out


def load_sources(path: str | os.PathLike, modality: str = "CT", max_slices: Optional[int] = None,
                 skipped: Optional[list] = None) -> List[demo_data.SourceImage]:
    """Slices to attack from ``path``: a ``.npy`` array, a slice store, or a DICOM file/folder.

    By default a bad DICOM file stops with a :class:`DataError`; with a list ``skipped``, bad files
    and series are left out and recorded there (``.item``, ``.reason``).
    """
    p = Path(path)
    mod = "CT" if preprocess.canonical_modality(modality) == "CT" else "MRI"
    if not p.exists():
        raise DataError(f"{p}: no such input (expected a DICOM file/folder, a slice store or a .npy array)")
    if p.suffix.lower() == ".npy":
        out = _from_npy(p, mod)
    elif p.is_dir() and store.is_store(p):
        out = _from_store(p, mod, max_slices)
    else:
        out = _from_dicom(p, mod, max_slices, skipped)
    if not out:
        raise DataError(f"{p}: no {mod} slice to attack")
    return out[:max_slices] if max_slices else out

"""Slices to attack, from a DICOM file/folder, a slice store, a ``.npy`` array, or the demo's own slices.

Every reader returns :class:`btd_jax.attacks.demo_data.SourceImage` objects: CT in Hounsfield units
(the store keeps windowed slices; they are mapped back to HU with the window's inverse, so values
outside [-700, 2000] HU come back clipped), MRI in [0, 1] (standardised per series, as the paper
does). A path's slices may be attacked over their whole area; the name ``demo``
(:data:`DEMO_INPUT`) is the slices ``btd-jax demo`` uses, split by columns as it splits them, whose
held-out ``test`` region is the part to attack (the demo's detector trained on the rest).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
from scipy import ndimage as ndi

from btd_jax.attacks import demo_data
from btd_jax.data import dicom, preprocess
from btd_jax.data.errors import DataError
from btd_jax.data.store import slice_store
from btd_jax.data.validate import check_real, load_npy

__all__ = ["DEMO_INPUT", "DEMO_SPLIT", "as_sources", "demo_sources", "load_sources"]

DEMO_INPUT = "demo"
# btd-jax demo's column split with the demo preset (32 px): train columns left, test columns right.
DEMO_SPLIT = {"test_frac": 0.35, "min_width": 32}
_CT_BODY_HU = -500.0


def as_sources(images: np.ndarray, modality: str, names: Sequence[str], scanners: Sequence[str],
               patients: Sequence[str], frames: Sequence[int]) -> List[demo_data.SourceImage]:
    """(S, H, W) slices in tamper units (HU for CT; [0, 1] for MRI) -> SourceImages whose train and
    test regions are the whole slice, with a body mask (CT: > -500 HU; MRI: > 10% of the 99th pct)."""
    images = np.asarray(images, np.float32)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3:
        raise DataError(f"slices: expected (H, W) or (S, H, W), got shape {images.shape}")
    ct = preprocess.canonical_modality(modality) == "CT"
    out = []
    for i, img in enumerate(images):
        unit = preprocess.window_ct(img) if ct else np.clip(img, 0.0, 1.0)
        body = img > _CT_BODY_HU if ct else img > 0.1 * np.percentile(img, 99)
        body = ndi.binary_opening(body, iterations=2)
        whole = np.ones(img.shape, bool)
        out.append(demo_data.SourceImage(names[i], scanners[i], patients[i], int(frames[i]), img, unit, body,
                                         whole, whole.copy()))
    return out


def demo_sources(modality: str = "CT") -> List[demo_data.SourceImage]:
    """The demo's own slices with ``btd-jax demo``'s train/test column split (:data:`DEMO_SPLIT`)."""
    return demo_data.load_sources(modality, **DEMO_SPLIT)


def _from_npy(path: Path, mod: str) -> List[demo_data.SourceImage]:
    arr = check_real(load_npy(path), str(path))  # (S, H, W) or (H, W), HU (CT) or raw/[0, 1] (MRI)
    if arr.ndim == 2:
        arr = arr[None]
    if mod == "MRI" and (arr.min() < 0.0 or arr.max() > 1.0):
        arr = preprocess.normalize_mri(arr)
    n = len(arr)
    return as_sources(arr, mod, [path.stem] * n, [path.stem] * n, [path.stem] * n, range(n))


def _from_store(path: Path, mod: str, max_slices: Optional[int]) -> List[demo_data.SourceImage]:
    st = slice_store.open_store(path)
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
    """Slices to attack from ``path``: a ``.npy`` array, a slice store, a DICOM file/folder, or
    ``"demo"`` (:func:`demo_sources`: attack their ``test`` region).

    By default a bad DICOM file stops with a :class:`DataError`; with a list ``skipped``, bad files
    and series are left out and recorded there (``.item``, ``.reason``).
    """
    p = Path(path)
    mod = "CT" if preprocess.canonical_modality(modality) == "CT" else "MRI"
    if str(path) == DEMO_INPUT:
        out = demo_sources(mod)
        return out[:max_slices] if max_slices else out
    if not p.exists():
        raise DataError(f"{p}: no such input (expected a DICOM file/folder, a slice store, a .npy array or "
                        f"{DEMO_INPUT!r})")
    if p.suffix.lower() == ".npy":
        out = _from_npy(p, mod)
    elif p.is_dir() and slice_store.is_store(p):
        out = _from_store(p, mod, max_slices)
    else:
        out = _from_dicom(p, mod, max_slices, skipped)
    if not out:
        raise DataError(f"{p}: no {mod} slice to attack")
    return out[:max_slices] if max_slices else out

"""Whole volumes with their geometry: DICOM series, NIfTI and ``.npy`` -> (S, H, W) in [0, 1].

Screening reports where in the patient a suspicious window lies, so a volume carries a
:class:`Geometry`: the affine from voxel indices ``(col, row, slice)`` to DICOM patient coordinates
(LPS, millimetres) and, for DICOM input, each slice's SOPInstanceUID and source file::

    vol = volume.read_volume("scan_folder/", modality="CT")      # DICOM: HU windowed to [0, 1]
    vol.pixels                                                    # (S, H, W) float32
    vol.geometry.to_mm(slice=3, row=120, col=200)                 # (x, y, z) mm, LPS

A series is refused with one :class:`DataError` when slices are missing (a gap larger than the
series' spacing), the spacing is inconsistent, orientations differ, or positions repeat: mm
coordinates (and any 3-D use of the volume) would be wrong. NIfTI (nibabel, an optional extra) is
stored (I, J, K) = (col, row, slice) with a RAS affine; it is read as (S, H, W) with its affine
converted to LPS, so findings are reported in one coordinate system whatever the input.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Optional, Tuple

import numpy as np

from btd_jax.data import dicom, preprocess, store
from btd_jax.data.dicom_io import floats, functional_attr, read_header
from btd_jax.data.errors import DataError
from btd_jax.data.validate import check_real, load_npy
from btd_jax.runtime.errors import require

__all__ = ["Geometry", "Volume", "LPS_TO_RAS", "geometry_from_series", "read_volume", "read_store_series",
           "read_nifti",
           "check_volume", "NIFTI_SUFFIXES"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse
NIFTI_SUFFIXES = (".nii", ".nii.gz")
_SPACING_RTOL = 0.01  # relative tolerance on slice gaps (positions are written with ~0.01 mm rounding)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where voxels are. ``affine`` (4, 4): ``(col, row, slice, 1) -> (x, y, z, 1)`` in LPS mm.

    DICOM input also fills the per-slice ``sop_instance_uids``/``paths``/``frames`` and the
    study/series/frame-of-reference UIDs that derived objects must reference.
    """

    affine: np.ndarray
    sop_instance_uids: Optional[Tuple[str, ...]] = None
    paths: Optional[Tuple[str, ...]] = None
    frames: Optional[Tuple[int, ...]] = None
    study_uid: str = ""
    series_uid: str = ""
    frame_of_reference_uid: str = ""
    patient_id: str = ""
    modality: str = ""

    def to_mm(self, slice: float, row: float, col: float) -> Tuple[float, float, float]:
        """Voxel (slice, row, col) -> patient (x, y, z) in mm (LPS)."""
        x = self.affine @ np.array([col, row, slice, 1.0])
        return float(x[0]), float(x[1]), float(x[2])

    @property
    def ras_affine(self) -> np.ndarray:
        """The same affine in RAS (NIfTI's convention)."""
        return LPS_TO_RAS @ self.affine

    def describe(self, s: int) -> dict:
        """Per-slice provenance for reports: ``sop_instance_uid``, ``path``, ``frame`` (when known)."""
        out = {}
        if self.sop_instance_uids is not None:
            out["sop_instance_uid"] = self.sop_instance_uids[s]
        if self.paths is not None:
            out["path"] = self.paths[s]
        if self.frames is not None and self.frames[s]:
            out["frame"] = int(self.frames[s])
        return out


@dataclasses.dataclass
class Volume:
    """``pixels`` (S, H, W) float32 in [0, 1]; ``geometry`` None for a bare ``.npy``; ``skipped``: DICOM
    files left out in lenient mode."""

    pixels: np.ndarray
    geometry: Optional[Geometry]
    source: str
    skipped: list = dataclasses.field(default_factory=list)


def _slice_axis(positions: np.ndarray, where: str) -> np.ndarray:
    """(S, 3) sorted positions -> the mean step between slices, checked for gaps and unevenness."""
    steps = np.diff(positions, axis=0)
    gaps = np.linalg.norm(steps, axis=1)
    if (gaps < 1e-3).any():
        i = int(np.argmax(gaps < 1e-3))
        raise DataError(f"{where}: slices {i} and {i + 1} share the position {positions[i].round(3).tolist()} mm "
                        "(duplicate slice?)")
    med = float(np.median(gaps))
    if (gaps > 1.5 * med).any():
        i = int(np.argmax(gaps > 1.5 * med))
        raise DataError(f"{where}: missing slice(s): a gap of {gaps[i]:.3g} mm between slices {i} and {i + 1} "
                        f"where the series' spacing is {med:.3g} mm")
    bad = np.abs(gaps - med) > _SPACING_RTOL * med + 1e-3
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{where}: inconsistent slice spacing: {gaps[i]:.4g} mm between slices {i} and {i + 1}, "
                        f"{med:.4g} mm elsewhere (range {gaps.min():.4g}-{gaps.max():.4g} mm)")
    return steps.mean(axis=0)


def geometry_from_series(series: Any) -> Geometry:
    """Reads the geometry of a :class:`btd_jax.data.dicom.Series` from its files' headers.

    Needs ImagePositionPatient / ImageOrientationPatient / PixelSpacing on every slice; a single
    slice uses SliceThickness (else 1 mm) along the normal. Raises :class:`DataError` on missing
    slices, uneven spacing, mixed orientations or pixel spacings.
    """
    headers = {p: read_header(Path(p)) for p in dict.fromkeys(series.paths)}
    where = f"series {series.series_uid or '?'} ({os.path.dirname(series.paths[0]) or '.'})"
    pos, orient, spacing, uids = [], [], [], []
    for p, f in zip(series.paths, series.frames):
        ds = headers[p]
        pos.append(floats(functional_attr(ds, f, "PlanePositionSequence", "ImagePositionPatient"), 3))
        orient.append(floats(functional_attr(ds, f, "PlaneOrientationSequence", "ImageOrientationPatient"), 6))
        spacing.append(floats(functional_attr(ds, f, "PixelMeasuresSequence", "PixelSpacing"), 2))
        uids.append(str(ds.get("SOPInstanceUID", "")))
    for name, vals in (("ImagePositionPatient", pos), ("ImageOrientationPatient", orient),
                       ("PixelSpacing", spacing)):
        if any(v is None for v in vals):
            i = next(i for i, v in enumerate(vals) if v is None)
            raise DataError(f"{series.paths[i]}: no {name}; millimetre coordinates need it on every slice")
    orient, spacing, pos = np.stack(orient), np.stack(spacing), np.stack(pos)
    for name, vals in (("ImageOrientationPatient", orient), ("PixelSpacing", spacing)):
        odd = np.abs(vals - vals[0]).max(axis=1) > 1e-4
        if odd.any():
            i = int(np.argmax(odd))
            raise DataError(f"{series.paths[i]}: {name} {vals[i].tolist()} differs from the series' "
                            f"{vals[0].tolist()} ({where})")
    row_dir, col_dir = orient[0, :3], orient[0, 3:]  # along a row (col index), along a column (row index)
    if len(pos) > 1:
        step = _slice_axis(pos, where)
    else:
        normal = np.cross(row_dir, col_dir)
        step = normal * float(series.slice_thickness or 1.0)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * spacing[0, 1]
    affine[:3, 1] = col_dir * spacing[0, 0]
    affine[:3, 2] = step
    affine[:3, 3] = pos[0]
    ds0 = headers[series.paths[0]]
    return Geometry(affine=affine, sop_instance_uids=tuple(uids), paths=tuple(series.paths),
                    frames=tuple(int(f) for f in series.frames), study_uid=series.study_uid,
                    series_uid=series.series_uid, frame_of_reference_uid=str(ds0.get("FrameOfReferenceUID", "")),
                    patient_id=series.patient_id, modality=series.modality)


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


def check_volume(pixels: Any, patch: int, where: str = "volume") -> np.ndarray:
    """(S, H, W) float32 in [0, 1], every slice at least ``patch`` x ``patch``; else DataError."""
    v = np.asarray(pixels, dtype=np.float32)
    if v.ndim == 2:
        v = v[None]
    if v.ndim != 3 or v.shape[0] == 0:
        raise DataError(f"{where}: expected a volume (S, H, W) or a slice (H, W), got shape {v.shape}")
    if min(v.shape[1:]) < patch:
        raise DataError(f"{where}: slices of {v.shape[1]}x{v.shape[2]} are smaller than the model's "
                        f"{patch}x{patch} patch")
    if not np.isfinite(v).all():
        s = int(np.argmax(~np.isfinite(v).reshape(len(v), -1).all(axis=1)))
        raise DataError(f"{where}: slice {s} contains NaN or inf")
    lo, hi = float(v.min()), float(v.max())
    if lo < 0 or hi > 1:
        raise DataError(f"{where}: values in [{lo:.4g}, {hi:.4g}] are outside [0, 1]; window CT (window_ct) or "
                        "normalise MRI first (or read it with units='raw')")
    return v


def read_store_series(path: str | os.PathLike, series_uid: Optional[str] = None) -> Volume:
    """One series of a slice store (``btd-jax prepare``), slices in order, already in [0, 1].

    The geometry comes from the manifest's per-slice affines (checked like a DICOM series'); a store
    holding several series needs ``series_uid`` (the manifest's ``series``).
    """
    st = store.open_store(path)
    recs = list(st.records(["row", "series", "slice", "path", "affine", "modality"]))
    names = sorted({str(r["series"]) for r in recs})
    if series_uid is None and len(names) > 1:
        raise DataError(f"{path}: a slice store of {len(names)} series; choose one with series_uid "
                        f"(e.g. {', '.join(names[:3])}{' ...' if len(names) > 3 else ''})")
    want = names[0] if series_uid is None else str(series_uid)
    rows = sorted((r for r in recs if str(r["series"]) == want), key=lambda r: r["slice"])
    if not rows:
        raise DataError(f"{path}: no series {want!r} in the slice store (it has {', '.join(names[:5])})")
    shapes = {st.shape(r["row"]) for r in rows}
    if len(shapes) > 1:
        raise DataError(f"{path}: series {want!r} mixes slice sizes {sorted(shapes)}")
    pixels = np.stack([st.slice(r["row"]) for r in rows]).astype(np.float32)
    geometry = None
    if all(r.get("affine") is not None for r in rows):
        affines = [np.asarray(r["affine"], np.float64) for r in rows]
        affine = affines[0].copy()
        if len(rows) > 1:
            affine[:3, 2] = _slice_axis(np.stack([a[:3, 3] for a in affines]), f"{path} series {want}")
        elif not np.linalg.norm(affine[:3, 2]) > 0:
            affine[:3, 2] = np.cross(affine[:3, 0], affine[:3, 1]) / np.linalg.norm(affine[:3, 0])
        geometry = Geometry(affine=affine, paths=tuple(str(r["path"]) for r in rows), series_uid=want,
                            modality=str(rows[0].get("modality") or ""))
    return Volume(pixels, geometry, str(path))


def read_volume(path: str | os.PathLike, modality: str = "CT", units: str = "raw",
                series_uid: Optional[str] = None, strict: bool = True) -> Volume:
    """A DICOM file/folder, a NIfTI file, a ``.npy`` array or a slice store -> :class:`Volume` in [0, 1].

    ``units='raw'``: HU (CT) or scanner values (MRI), mapped with the paper's preprocessing
    (:func:`preprocess.to_unit_range`, MRI standardised over the whole volume); ``'unit'``: already
    in [0, 1]. DICOM geometry is checked (see :func:`geometry_from_series`). ``strict=False`` skips
    unreadable DICOM files and lists them in ``Volume.skipped``.
    """
    if units not in ("raw", "unit"):
        raise ValueError(f"units must be 'raw' or 'unit', got {units!r}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if store.is_store(path):
        return read_store_series(path, series_uid)  # stored windowed: ``units`` does not apply
    name = path.name.lower()
    geometry, skipped = None, []
    if name.endswith(".npy"):
        x = load_npy(path)
    elif name.endswith(NIFTI_SUFFIXES):
        x, affine = read_nifti(path)
        geometry = Geometry(affine=affine, paths=(str(path),) * x.shape[0], modality=modality)
    else:
        series = dicom.load_series(path, series_uid=series_uid, modality=modality, strict=strict)
        x, geometry, skipped = series.pixels, geometry_from_series(series), list(series.skipped)
    x = check_real(x, str(path))
    if x.ndim == 2:
        x = x[None]
    if units == "raw":
        x = preprocess.to_unit_range(x, modality)
    return Volume(np.asarray(x, dtype=np.float32), geometry, str(path), skipped)

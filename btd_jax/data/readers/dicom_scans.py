"""The DICOM format: every image series of a file or folder is one scan (patients x series).

Series are found from the headers alone (:func:`btd_jax.data.dicom.find_series`); non-image objects
(SR, SEG, RTSTRUCT, ...) and files of another modality are listed as skipped, and a series' pixels
are decoded only when it is read. CT comes out in Hounsfield units, MR in its (rescaled) scanner values. Geometry: each slice's
affine from its position, orientation and pixel spacing; the volume's (for screening) is checked by
:func:`geometry_from_series` (missing slices, uneven spacing, mixed orientations are refused).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np

from btd_jax.data import dicom
from btd_jax.data.dicom_io import floats, functional_attr, read_header
from btd_jax.data.errors import DataError
from btd_jax.data.readers.formats import Format, Probe, ReadOptions, Scan, ScanRef, register
from btd_jax.data.readers.geometry import Geometry, slice_step
from btd_jax.data.records import Skipped

__all__ = ["FORMAT", "dicom_scans", "geometry_from_series", "slice_affine_of"]


def slice_affine_of(series: dicom.Series, k: int) -> Optional[list]:
    """LPS affine of slice ``k`` of a :class:`dicom.Series` (``(col, row, 0, 1)`` -> mm), unchecked."""
    if series.positions is None or series.orientation is None or series.pixel_spacing is None:
        return None
    o = np.asarray(series.orientation, np.float64)
    a = np.eye(4)
    a[:3, 0] = o[:3] * series.pixel_spacing[1]   # along a row: column spacing
    a[:3, 1] = o[3:] * series.pixel_spacing[0]   # along a column: row spacing
    a[:3, 2] = np.cross(o[:3], o[3:])
    a[:3, 3] = series.positions[k]
    return np.round(a, 6).tolist()


def geometry_from_series(series: Any) -> Geometry:
    """The checked geometry of a :class:`btd_jax.data.dicom.Series`, from its files' headers.

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
        step = slice_step(pos, where)
    else:
        step = np.cross(row_dir, col_dir) * float(series.slice_thickness or 1.0)
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


def _load(info: dicom.SeriesInfo, strict: bool) -> Scan:
    s = dicom.load_files(info.paths, strict=strict)
    records = [dict(patient=s.patient_id, series=s.series_uid, study=s.study_uid, scanner=s.scanner, slice=k,
                    frame=int(s.frames[k]), path=s.paths[k], pixel_spacing=list(s.pixel_spacing or []) or None,
                    affine=slice_affine_of(s, k)) for k in range(len(s))]
    return Scan(s.pixels, records, modality=s.modality, geometry=functools.partial(geometry_from_series, s),
                skipped=list(s.skipped))


def dicom_scans(path: Path, opts: ReadOptions) -> Tuple[List[ScanRef], List[Skipped]]:
    """One scan per image series under ``path`` of ``opts.modality`` (all without it), sorted by patient
    and series (``opts.series_uid`` keeps one), and the files left out (:func:`dicom.find_series`)."""
    series, skipped = dicom.find_series(path, opts.modality, opts.series_uid, opts.strict)
    refs = [ScanRef(f"dicom:{s.patient_id}/{s.series_uid}:{s.n_files}", s.series_uid,
                    f"series {s.series_uid} ({os.path.dirname(s.paths[0]) or '.'})", s.n_files,
                    functools.partial(_load, s, opts.strict), modality=s.modality)
            for s in series]
    return refs, skipped


def _detect(probe: Probe) -> bool:
    return probe.is_file or probe.is_dir  # the fallback: what no other format claims is read as DICOM


FORMAT = register(Format(
    "dicom", "DICOM files (a file or a folder, searched recursively): one scan per image series, CT in HU, MR "
             "standardised per series (compressed transfer syntaxes: pip install 'btd_jax[dicom]')",
    _detect, scans=dicom_scans, fallback=True))

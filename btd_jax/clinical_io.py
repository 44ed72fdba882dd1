"""Screening results in forms clinical tools open: NIfTI, DICOM, PNG overlays, JSON/CSV findings.

* :func:`write_nifti`: the suspicion volume with the series affine (RAS, as NIfTI expects), so it
  lies on the scan in 3D Slicer, ITK-SNAP or FSLeyes. Needs nibabel (extra ``nifti``).
* :func:`write_parametric_map`: a DICOM Parametric Map (float values, one frame per slice) that
  references every source image, built with highdicom (extra ``highdicom``); PACS and OHIF show it
  fused with the series.
* :func:`write_secondary_captures`: pydicom only; one RGB Secondary Capture per slice (the slice with
  the suspicion overlay and the findings' boxes burnt in) in a new series of the same study, each
  referencing its source image (SourceImageSequence) and the source series.
* :func:`write_findings`: ``findings.json`` (findings plus the scan decision and the settings) and
  ``findings.csv``. :func:`overlay_rgb` / :func:`write_png` make the overlays.
"""

from __future__ import annotations

import csv
import datetime
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from btd_jax.data.dicom_io import read_header
from btd_jax.data.errors import DataError
from btd_jax.data.readers import Geometry
from btd_jax.runtime.atomic import atomic_open, atomic_path, write_json

__all__ = ["overlay_rgb", "write_png", "write_nifti", "write_parametric_map", "write_secondary_captures",
           "write_findings", "source_datasets", "CSV_FIELDS"]

CSV_FIELDS = ("rank", "slice", "row", "col", "score", "p_value", "x_mm", "y_mm", "z_mm", "sop_instance_uid",
              "path", "frame")
_SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
_SOFTWARE = "btd_jax screen"


# ----------------------------------------------------------------------------- images

def _hot(v: np.ndarray) -> np.ndarray:
    """matplotlib's 'hot' colormap on [0, 1] -> (..., 3) float: black, red, yellow, white."""
    return np.stack([np.clip(v * 3, 0, 1), np.clip(v * 3 - 1, 0, 1), np.clip(v * 3 - 2, 0, 1)], axis=-1)


def overlay_rgb(img01: np.ndarray, suspicion: np.ndarray, vmax: float, boxes: Sequence[Sequence[int]] = (),
                alpha: float = 0.45) -> np.ndarray:
    """(H, W) slice in grey with the suspicion map in 'hot' (0 .. ``vmax``) and square boxes
    ``(row0, col0, size)`` (the first green, the others cyan) -> (H, W, 3) uint8."""
    grey = np.repeat(np.clip(img01, 0, 1)[..., None], 3, axis=-1)
    heat = _hot(np.clip(suspicion / max(float(vmax), 1e-12), 0, 1))
    rgb = (1 - alpha) * grey + alpha * heat
    h, w = img01.shape
    for i, (r0, c0, size) in enumerate(boxes):
        color = (0.2, 1.0, 0.2) if i == 0 else (0.0, 1.0, 1.0)
        r1, c1 = min(r0 + size, h) - 1, min(c0 + size, w) - 1
        rgb[r0, c0:c1 + 1] = rgb[r1, c0:c1 + 1] = color
        rgb[r0:r1 + 1, c0] = rgb[r0:r1 + 1, c1] = color
    return np.round(rgb * 255).astype(np.uint8)


def write_png(path: str | os.PathLike, rgb: np.ndarray) -> str:
    from PIL import Image  # installed with matplotlib

    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    return str(path)


# ----------------------------------------------------------------------------- NIfTI

def write_nifti(path: str | os.PathLike, volume: np.ndarray, geometry: Optional[Geometry] = None) -> str:
    """(S, H, W) float volume -> NIfTI-1 stored (col, row, slice) with the RAS affine of ``geometry``
    (identity, i.e. voxel units, without one). Read back by :func:`btd_jax.data.readers.read_nifti`."""
    try:
        import nibabel as nib
    except ImportError:
        raise DataError(f"{path}: writing NIfTI needs nibabel (pip install 'btd_jax[nifti]')") from None
    affine = np.eye(4) if geometry is None else geometry.ras_affine
    img = nib.Nifti1Image(np.ascontiguousarray(np.transpose(np.asarray(volume, np.float32), (2, 1, 0))), affine)
    img.header.set_xyzt_units("mm")
    code = 0 if geometry is None else 1  # 1 = scanner-based anatomical coordinates
    img.set_sform(affine, code=code)
    img.set_qform(affine, code=code)
    with atomic_path(path) as tmp:  # the temporary name ends like ``path`` (.nii.gz): nibabel reads it
        nib.save(img, tmp)
    return str(path)


# ----------------------------------------------------------------------------- DICOM

def source_datasets(geometry: Geometry) -> List[Any]:
    """The headers (no pixel data) of the source files, one per distinct file, in slice order."""
    if geometry.paths is None or geometry.sop_instance_uids is None:
        raise DataError("DICOM output needs a DICOM source series (the input has no SOPInstanceUIDs)")
    return [read_header(Path(p)) for p in dict.fromkeys(geometry.paths)]


def _check_dicom_source(volume: np.ndarray, geometry: Optional[Geometry]) -> Geometry:
    if geometry is None or geometry.sop_instance_uids is None:
        raise DataError("DICOM output needs a DICOM source series (the input has no SOPInstanceUIDs)")
    if len(geometry.sop_instance_uids) != len(volume):
        raise DataError(f"{len(volume)} slices but the source series has {len(geometry.sop_instance_uids)}")
    return geometry


def write_parametric_map(path: str | os.PathLike, suspicion: np.ndarray, geometry: Geometry,
                         series_number: int = 901) -> str:
    """A DICOM Parametric Map of the (S, H, W) suspicion volume referencing the source series (highdicom)."""
    try:
        import highdicom as hd
        from pydicom.sr.codedict import codes
        from pydicom.uid import generate_uid
    except ImportError:
        raise DataError(f"{path}: a DICOM Parametric Map needs highdicom (pip install 'btd_jax[highdicom]'); "
                        "the Secondary Captures need only pydicom") from None
    vol = np.asarray(suspicion, np.float32)
    geometry = _check_dicom_source(vol, geometry)
    sources = source_datasets(geometry)
    hi = float(vol.max()) if vol.size else 1.0
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="BTD", lut_explanation="BTD squared residual (x - x_d)^2, model units",
        unit=codes.UCUM.NoUnits, value_range=(0.0, max(hi, 1e-12)), slope=1, intercept=0)
    # Plane geometry from the series affine; highdicom orders the frames, each naming its position and source.
    a = geometry.affine
    positions = [hd.PlanePositionSequence("PATIENT", [round(v, 6) for v in geometry.to_mm(s, 0, 0)])
                 for s in range(len(vol))]
    orientation = hd.PlaneOrientationSequence("PATIENT", [float(v) for v in np.concatenate(
        [a[:3, 0] / np.linalg.norm(a[:3, 0]), a[:3, 1] / np.linalg.norm(a[:3, 1])])])
    spacing = [float(np.linalg.norm(a[:3, 1])), float(np.linalg.norm(a[:3, 0]))]  # (between rows, columns)
    measures = hd.PixelMeasuresSequence(pixel_spacing=spacing,
                                        slice_thickness=float(np.linalg.norm(a[:3, 2])))
    pm = hd.pm.ParametricMap(
        source_images=sources, pixel_array=vol, series_instance_uid=generate_uid(), series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="btd_jax",
        manufacturer_model_name="BTD suspicion", software_versions=_SOFTWARE, device_serial_number="0",
        contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=hi / 2, window_width=max(hi, 1e-12))],
        plane_positions=positions, plane_orientation=orientation, pixel_measures=measures,
        content_label="BTD", content_description="Back-in-Time Diffusion suspicion")
    with atomic_path(path) as tmp:
        pm.save_as(tmp)
    return str(path)


def _copy(dst: Any, src: Any, keys: Sequence[str]) -> None:
    for k in keys:
        if k in src:
            setattr(dst, k, src[k].value)


def write_secondary_captures(folder: str | os.PathLike, rgbs: np.ndarray, slices: Sequence[int],
                             geometry: Geometry, series_number: int = 902,
                             description: str = "BTD suspicion overlay") -> List[str]:
    """One RGB Secondary Capture per entry of ``slices`` ((N, H, W, 3) uint8 ``rgbs``), pydicom only.

    The new series belongs to the source study; each image names its source image in
    SourceImageSequence and the source series in ReferencedSeriesSequence, and carries its plane
    position so viewers can place it. Returns the written paths.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DSequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if len(rgbs) != len(slices):
        raise ValueError(f"{len(rgbs)} images for {len(slices)} slices")
    headers = {p: h for p, h in zip(dict.fromkeys(geometry.paths or ()), source_datasets(geometry))}
    os.makedirs(folder, exist_ok=True)
    series_uid, now = generate_uid(), datetime.datetime.now()
    out = []
    for n, (rgb, s) in enumerate(zip(rgbs, slices)):
        src = headers[geometry.paths[s]]
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = _SC_CLASS
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = _SC_CLASS, ds.file_meta.MediaStorageSOPInstanceUID
        _copy(ds, src, ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                        "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
                        "FrameOfReferenceUID", "ImageOrientationPatient", "PixelSpacing"))
        ds.Modality, ds.ConversionType = "OT", "WSD"
        ds.SeriesInstanceUID, ds.SeriesNumber, ds.InstanceNumber = series_uid, series_number, n + 1
        ds.SeriesDescription = ds.DerivationDescription = description
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
        ds.Manufacturer, ds.SoftwareVersions = "btd_jax", _SOFTWARE
        ds.ImagePositionPatient = [round(v, 4) for v in geometry.to_mm(s, 0, 0)]
        ref = Dataset()
        ref.ReferencedSOPClassUID = src.get("SOPClassUID", "")
        ref.ReferencedSOPInstanceUID = geometry.sop_instance_uids[s]
        if geometry.frames is not None and int(src.get("NumberOfFrames", 1) or 1) > 1:
            ref.ReferencedFrameNumber = geometry.frames[s] + 1
        ds.SourceImageSequence = DSequence([ref])
        series_ref = Dataset()
        series_ref.SeriesInstanceUID = geometry.series_uid
        ds.ReferencedSeriesSequence = DSequence([series_ref])
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.Rows, ds.Columns = int(rgb.shape[0]), int(rgb.shape[1])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = np.ascontiguousarray(rgb, np.uint8).tobytes()
        path = os.path.join(folder, f"sc_{s:04d}.dcm")
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        out.append(path)
    return out


# ----------------------------------------------------------------------------- findings

def write_findings(folder: str | os.PathLike, findings: List[Dict[str, Any]], report: Dict[str, Any]) -> Dict[str, str]:
    """``findings.json`` (``report`` plus ``findings``) and ``findings.csv`` (one row per finding)."""
    os.makedirs(folder, exist_ok=True)
    jpath, cpath = os.path.join(folder, "findings.json"), os.path.join(folder, "findings.csv")
    write_json(jpath, {**report, "findings": findings}, indent=1)
    with atomic_open(cpath, newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(findings)
    return {"json": jpath, "csv": cpath}

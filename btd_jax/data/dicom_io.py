"""DICOM headers and pixel decoding for :mod:`btd_jax.data.dicom` (pydicom 3).

Parsing keeps pixel data deferred until it is needed; decoding applies the modality LUT (rescale
slope/intercept, also from enhanced multi-frame functional groups) and, for compressed transfer
syntaxes without a decoder, names the package to install.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from btd_jax.data.errors import DataError

__all__ = ["NON_IMAGE_MODALITIES", "decoder_hint", "read_header", "image_problem", "decode",
           "attr", "scanner", "functional_attr", "floats", "nframes"]

# Objects that carry no scan image (structures, reports, plans, doses, segmentations).
NON_IMAGE_MODALITIES = frozenset({"RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE", "SR", "PR", "KO",
                                  "REG", "SEG", "RWV", "DOC", "FID", "PLAN", "AU", "ECG"})
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR

_JPEG = "pip install pylibjpeg pylibjpeg-libjpeg (or: pip install python-gdcm)"
_JLS = "pip install pylibjpeg pylibjpeg-libjpeg (or: pip install pyjpegls, or python-gdcm)"
_J2K = "pip install pylibjpeg pylibjpeg-openjpeg (or: pip install python-gdcm)"
_DECODERS = {
    "1.2.840.10008.1.2.4.50": _JPEG, "1.2.840.10008.1.2.4.51": _JPEG,
    "1.2.840.10008.1.2.4.57": _JPEG, "1.2.840.10008.1.2.4.70": _JPEG,
    "1.2.840.10008.1.2.4.80": _JLS, "1.2.840.10008.1.2.4.81": _JLS,
    "1.2.840.10008.1.2.4.90": _J2K, "1.2.840.10008.1.2.4.91": _J2K,
    "1.2.840.10008.1.2.4.201": _J2K, "1.2.840.10008.1.2.4.202": _J2K,
    "1.2.840.10008.1.2.4.203": _J2K,
    "1.2.840.10008.1.2.5": "pip install pylibjpeg pylibjpeg-rle (RLE is also built into pydicom)",
}


def decoder_hint(transfer_syntax_uid: str) -> str:
    """The pip command that installs a pixel-data decoder for a compressed transfer syntax."""
    return _DECODERS.get(str(transfer_syntax_uid),
                         "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg python-gdcm")


# ----------------------------------------------------------------------------------------------
# headers

def attr(ds: Any, key: str, default: str = "") -> str:
    v = ds.get(key, None)
    return default if v is None or str(v).strip() == "" else str(v).strip()


def scanner(ds: Any) -> str:
    return " ".join(p for p in (attr(ds, "Manufacturer"), attr(ds, "ManufacturerModelName")) if p)


def read_header(path: Path) -> Any:
    """Parse a file without decoding pixel data (kept deferred); DataError if not DICOM."""
    import warnings

    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                ds = pydicom.dcmread(path, defer_size="64 KB")
            except InvalidDicomError:
                # No preamble/'DICM' prefix (older files, e.g. pydicom's rtstruct.dcm): raw data set.
                ds = pydicom.dcmread(path, defer_size="64 KB", force=True)
                if not any(k in ds for k in ("SOPClassUID", "Modality", "PixelData")):
                    raise DataError("not a DICOM file (no 'DICM' header and no readable data "
                                    "set)") from None
                _set_transfer_syntax(ds)
        eof = [str(w.message) for w in caught if "End of file" in str(w.message)]
        if eof:
            raise DataError(f"truncated DICOM file ({eof[0]})")
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    except Exception as e:
        raise DataError(f"{path}: corrupt or truncated DICOM file ({type(e).__name__}: {e})") \
            from None
    return ds


def _set_transfer_syntax(ds: Any) -> None:
    """Files without file meta: record the encoding pydicom detected so pixels can be decoded."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit, little = getattr(ds, "original_encoding", (True, True))
        meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                  ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        ds.file_meta = meta


def not_an_image(ds: Any) -> bool:
    """A DICOMDIR index or a non-image object (SR, SEG, RTSTRUCT, ...): part of a study, never a bad image."""
    return attr(ds, "SOPClassUID") == _MEDIA_STORAGE_DIRECTORY or \
        attr(ds, "Modality", "?").upper() in NON_IMAGE_MODALITIES


def image_problem(ds: Any) -> str | None:
    """Why ``ds`` is not a usable grey-level image, or None."""
    modality = attr(ds, "Modality", "?")
    if attr(ds, "SOPClassUID") == _MEDIA_STORAGE_DIRECTORY:
        return "a DICOMDIR index, not an image"
    if modality.upper() in NON_IMAGE_MODALITIES:
        return f"not an image: a {modality} object ({_sop_name(ds)})"
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        hint = " although the header describes an image: truncated file?" if (
            "Rows" in ds or _sop_name(ds).endswith("Image Storage")) else ""
        return f"no pixel data (Modality {modality}, {_sop_name(ds)}){hint}"
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if spp != 1:
        return (f"colour image (SamplesPerPixel={spp}, {attr(ds, 'PhotometricInterpretation')}); "
                f"expected a grey-level CT/MR slice")
    return None


def _sop_name(ds: Any) -> str:
    uid = ds.get("SOPClassUID", None)
    return getattr(uid, "name", str(uid)) if uid is not None else "no SOP class"


def _item(seq_owner: Any, seq: str, key: str) -> Any:
    s = seq_owner.get(seq, None)
    return s[0].get(key, None) if s else None


def functional_attr(ds: Any, frame: int, seq: str, key: str) -> Any:
    """An attribute from the top level, else the per-frame, else the shared functional groups."""
    if key in ds:
        return ds[key].value
    for groups, i in (("PerFrameFunctionalGroupsSequence", frame),
                      ("SharedFunctionalGroupsSequence", 0)):
        g = ds.get(groups, None)
        if g and len(g) > i:
            v = _item(g[i], seq, key)
            if v is not None:
                return v
    return None


def floats(v: Any, n: int) -> np.ndarray | None:
    try:
        a = np.asarray([float(t) for t in v], np.float64)
    except (TypeError, ValueError):
        return None
    return a if a.size == n and np.isfinite(a).all() else None


def nframes(ds: Any) -> int:
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


# ----------------------------------------------------------------------------------------------
# pixels

def decode(ds: Any, path: Path) -> np.ndarray:
    """Stored values (F, H, W) -> modality values (HU for CT), float32."""
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        arr = ds.pixel_array
    except Exception as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        if tsyntax is not None and tsyntax.is_compressed:
            what = ("no decoder is installed" if "missing dependencies" in msg else
                    "the installed decoders failed (corrupt data or unsupported variant)")
            raise DataError(f"{path}: cannot decode pixel data compressed as {tsyntax.name} "
                            f"({tsyntax}): {what}. Install a decoder: {decoder_hint(tsyntax)}. "
                            f"[pydicom: {msg}]") from None
        raise DataError(f"{path}: corrupt or truncated pixel data ({msg})") from None
    nf = nframes(ds)
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[0] != nf:
        raise DataError(f"{path}: unexpected pixel array shape {arr.shape} for {nf} frame(s)")
    if ds.get("ModalityLUTSequence", None) is not None and ds.ModalityLUTSequence:
        from pydicom.pixels import apply_modality_lut
        out = apply_modality_lut(arr, ds).astype(np.float32)
    else:
        out = np.empty(arr.shape, np.float32)
        for f in range(nf):
            slope = functional_attr(ds, f, "PixelValueTransformationSequence", "RescaleSlope")
            icpt = functional_attr(ds, f, "PixelValueTransformationSequence", "RescaleIntercept")
            slope = 1.0 if slope in (None, "") else float(slope)
            icpt = 0.0 if icpt in (None, "") else float(icpt)
            out[f] = arr[f].astype(np.float64) * slope + icpt
    if not np.isfinite(out).all():
        raise DataError(f"{path}: pixel data contains NaN or inf")
    return out

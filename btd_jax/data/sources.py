"""Inputs of a slice store: what a path holds, cut into units the store writes one at a time.

Formats (``detect_format``):

* ``authors_ct``: a folder with the authors' ``train_csv.csv`` (:mod:`btd_jax.data.authors_train`);
* ``images``: a folder of grey PNG/JPEG/TIFF images (the authors' MRI trainer input);
* ``dicom``: DICOM files, one unit per series (patients x series; non-image objects and series of
  another modality are listed as skipped);
* ``nifti``: ``.nii``/``.nii.gz`` volumes (nibabel, extra ``nifti``), one unit per file;
* ``fastmri``: fastMRI ``.h5`` files, their ``reconstruction_rss`` volume (h5py, extra ``h5``).

Values go to [0, 1] with the paper's preprocessing: CT through the HU window, MRI volumes
standardised per volume (:func:`preprocess.normalize_mri`), MRI images as stored (8-bit / 255).

    summary = sources.prepare("LIDC-IDRI/", "stores/lidc", modality="CT")
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import numpy as np

from btd_jax.data import authors_train, dicom, preprocess, volume
from btd_jax.data.errors import DataError
from btd_jax.data.records import Skipped
from btd_jax.data.store import SliceStore, is_store
from btd_jax.data.store_writer import SliceBatch, Unit, write_store
from btd_jax.runtime.errors import require

__all__ = ["FORMATS", "detect_format", "dicom_units", "nifti_units", "fastmri_units", "prepare",
           "slice_affine", "open_slices"]

FORMATS = ("auto", "authors_ct", "images", "dicom", "nifti", "fastmri")
_NIFTI = (".nii", ".nii.gz")


def _files(folder: Path, test) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / n for n in sorted(filenames) if not n.startswith(".") and test(n)]
    return out


def _is_nifti(name: str) -> bool:
    return name.lower().endswith(_NIFTI)


def _is_h5(name: str) -> bool:
    return name.lower().endswith((".h5", ".hdf5"))


def detect_format(path: str | os.PathLike) -> str:
    """Which of :data:`FORMATS` ``path`` holds (see the module doc)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        if path.name == authors_train.CT_CSV:
            return "authors_ct"
        if _is_nifti(path.name):
            return "nifti"
        if _is_h5(path.name):
            return "fastmri"
        return "dicom"
    if (path / authors_train.CT_CSV).is_file():
        return "authors_ct"
    names = [p.name for p in _files(path, lambda n: True)]
    if any(_is_h5(n) for n in names):
        return "fastmri"
    if any(_is_nifti(n) for n in names):
        return "nifti"
    if names and all(Path(n).suffix.lower() in authors_train.IMAGE_SUFFIXES + (".txt", ".csv",
                                                                           ".json", ".md")
                     for n in names):
        return "images"
    return "dicom"


def slice_affine(volume_affine: np.ndarray, k: int) -> list[list[float]]:
    """4x4 map of ``(col, row, 0, 1)`` of slice ``k`` to mm, from a volume's
    ``(col, row, slice, 1)`` affine."""
    a = np.asarray(volume_affine, np.float64).copy()
    a[:3, 3] = a[:3, 3] + a[:3, 2] * k
    return np.round(a, 6).tolist()


def _dicom_affine(series, k: int) -> list[list[float]] | None:
    """LPS affine of slice ``k`` of a :class:`dicom.Series` (``(col, row, 0, 1)`` -> mm)."""
    if series.positions is None or series.orientation is None or series.pixel_spacing is None:
        return None
    o = np.asarray(series.orientation, np.float64)
    a = np.eye(4)
    a[:3, 0] = o[:3] * series.pixel_spacing[1]   # along a row: column spacing
    a[:3, 1] = o[3:] * series.pixel_spacing[0]   # along a column: row spacing
    a[:3, 2] = np.cross(o[:3], o[3:])
    a[:3, 3] = series.positions[k]
    return np.round(a, 6).tolist()


# ----------------------------------------------------------------------------------------------
# DICOM

def dicom_units(folder: str | os.PathLike, modality: str | None = None,
                strict: bool = True) -> tuple[list[Unit], list[Skipped], str]:
    """One unit per image series under ``folder`` (sorted by patient, series); returns
    (units, series skipped up front, modality)."""
    skipped, images = [], []
    infos = dicom.list_series(folder, strict=strict, skipped=skipped)
    for s in infos:
        mods = s.modality.upper().split("/")
        if any(m in dicom.NON_IMAGE_MODALITIES for m in mods):
            skipped.append(Skipped(f"series {s.series_uid}", f"not an image: {s.modality} "
                                                              f"({s.n_files} file(s))"))
        else:
            images.append(s)
    if not images:
        raise DataError(f"{folder}: no DICOM image series")
    if modality is None:
        found = Counter(s.modality.upper() for s in images)
        if len(found) > 1:
            raise DataError(f"{folder}: image series of several modalities "
                            f"({dict(found)}); pass --modality")
        modality = next(iter(found))
    mod = preprocess.canonical_modality(modality)
    units = []
    for s in sorted(images, key=lambda s: (s.patient_id, s.series_uid)):
        if s.modality.upper() != mod:
            skipped.append(Skipped(f"series {s.series_uid}", f"modality {s.modality}, not {mod}"))
            continue
        units.append(Unit(f"dicom:{s.patient_id}/{s.series_uid}:{s.n_files}", s.n_files,
                          lambda s=s: _load_series(s, mod, strict)))
    if not units:
        raise DataError(f"{folder}: no {mod} image series; skipped: "
                        + "; ".join(f"{k.item} ({k.reason})" for k in skipped[:5]))
    return units, skipped, mod


def _load_series(info, mod: str, strict: bool) -> SliceBatch:
    s = dicom.load_files(info.paths, strict=strict)
    try:
        vol = preprocess.to_unit_range(s.pixels, mod)
    except DataError as e:
        raise DataError(f"series {s.series_uid} ({os.path.dirname(s.paths[0])}): {e}") from None
    records = [dict(patient=s.patient_id, series=s.series_uid, study=s.study_uid,
                    scanner=s.scanner, modality=mod, slice=k, frame=int(s.frames[k]),
                    path=s.paths[k], pixel_spacing=list(s.pixel_spacing or []) or None,
                    affine=_dicom_affine(s, k), weight=1) for k in range(len(vol))]
    return SliceBatch(list(vol), records, list(s.skipped))


# ----------------------------------------------------------------------------------------------
# NIfTI and fastMRI volumes

def nifti_units(path: str | os.PathLike, modality: str) -> list[Unit]:
    """One unit per NIfTI file; slices along the third voxel axis, affine in LPS."""
    path = Path(path)
    files = [path] if path.is_file() else _files(path, _is_nifti)
    mod = preprocess.canonical_modality(modality)
    return [Unit(f"nifti:{f}", 1, lambda f=f: _load_nifti(f, mod)) for f in files]


def _load_nifti(path: Path, mod: str) -> SliceBatch:
    data, affine = volume.read_nifti(path)  # (S, H, W), (col, row, slice) -> LPS mm
    try:
        vol = preprocess.to_unit_range(data, mod)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    spacing = [float(np.linalg.norm(affine[:3, 1])), float(np.linalg.norm(affine[:3, 0]))]
    name = path.name.removesuffix(".gz").removesuffix(".nii")
    records = [dict(patient=name, series=name, scanner="", modality=mod, slice=k, frame=0,
                    path=str(path), pixel_spacing=spacing, affine=slice_affine(affine, k),
                    weight=1) for k in range(len(vol))]
    return SliceBatch(list(vol), records)


def fastmri_units(path: str | os.PathLike, key: str = "reconstruction_rss") -> list[Unit]:
    """One unit per fastMRI ``.h5`` file: its ``key`` volume (S, H, W), standardised per file."""
    path = Path(path)
    files = [path] if path.is_file() else _files(path, _is_h5)
    return [Unit(f"fastmri:{f}", 1, lambda f=f: _load_h5(f, key)) for f in files]


def _load_h5(path: Path, key: str) -> SliceBatch:
    h5py = require("h5py", f"{path}: reading fastMRI .h5")  # a missing package is never a skippable bad file
    try:
        with h5py.File(path, "r") as f:
            if key not in f:
                raise DataError(f"{path}: no {key!r} dataset (found {sorted(f.keys())})")
            data = np.asarray(f[key], np.float32)
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    except DataError:
        raise
    except Exception as e:  # h5py raises OSError/KeyError/ValueError for damaged files
        raise DataError(f"{path}: not a readable HDF5 file ({type(e).__name__}: {e})") from None
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise DataError(f"{path}: {key} has shape {data.shape}, expected (slices, H, W)")
    try:
        vol = preprocess.normalize_mri(data)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    patient = str(attrs.get("patient_id", "") or path.stem)
    records = [dict(patient=patient, series=path.stem, scanner=str(attrs.get("acquisition", "")),
                    modality="MR", slice=k, frame=0, path=str(path), pixel_spacing=None,
                    affine=None, weight=1) for k in range(len(vol))]
    return SliceBatch(list(vol), records)


# ----------------------------------------------------------------------------------------------

def prepare(inp: str | os.PathLike, out: str | os.PathLike, fmt: str = "auto",
            modality: str | None = None, size: int | None = None, dtype: str = "float16",
            resize: str = "authors", shard_rows: int = 256, strict: bool = True,
            progress: bool = True, overwrite: bool = False) -> dict:
    """Write the slice store ``out`` from ``inp`` (resuming an interrupted run); returns the
    store summary. ``size``: crop side (default the paper's, 96 CT / 128 MRI); ``resize``: for
    image folders, 'authors' (their MRI transform) or 'none'; ``overwrite``: start again a store
    that ``out`` holds from other input or options."""
    if fmt not in FORMATS:
        raise DataError(f"unknown input format {fmt!r}; expected one of {FORMATS}")
    fmt = detect_format(inp) if fmt == "auto" else fmt
    skipped: list[Skipped] = []
    locations = None
    options = {"format": fmt, "input": os.fspath(Path(inp).resolve()), "strict": strict}
    if fmt == "authors_ct":
        mod = preprocess.canonical_modality(modality or "CT")
        layout = authors_train.read_ct_layout(inp)
        units = authors_train.ct_units(layout, shard_rows, strict)
        locations = layout.locations
        options["rows_without_location"] = layout.no_location
    elif fmt == "images":
        mod = preprocess.canonical_modality(modality or "MR")
        size = int(size or preprocess.PATCH_SIZE[mod])
        units = authors_train.image_units(inp, size, resize, shard_rows, strict)
        options["resize"] = resize
    elif fmt == "dicom":
        units, skipped, mod = dicom_units(inp, modality, strict)
    elif fmt == "nifti":
        if modality is None:
            raise DataError(f"{inp}: NIfTI files do not say their modality; pass --modality")
        mod = preprocess.canonical_modality(modality)
        units = nifti_units(inp, mod)
    else:
        mod = preprocess.canonical_modality(modality or "MR")
        units = fastmri_units(inp)
    if not units:
        raise DataError(f"{inp}: no {fmt} input found")
    size = int(size or preprocess.PATCH_SIZE[mod])
    return write_store(out, units, modality=mod, size=size, dtype=dtype, locations=locations,
                       options=options, skipped=skipped, strict=strict, progress=progress,
                       overwrite=overwrite)


def open_slices(path: str | os.PathLike, size: int | None = None):
    """A crop source for training when ``path`` is a slice store (local or remote) or the
    authors' CT training folder (read directly, no store); None for anything else."""
    if is_store(path):
        return SliceStore(path)
    if "://" not in os.fspath(path) and (Path(path) / authors_train.CT_CSV).is_file():
        return authors_train.CTFolder(path, size or preprocess.PATCH_SIZE["CT"])
    return None

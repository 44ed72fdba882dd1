"""DICOM reading with pydicom 3: files, folders, series -> float32 pixel stacks with metadata.

* Values: the modality LUT is applied (``RescaleSlope``/``RescaleIntercept``, also from the
  functional groups of enhanced multi-frame objects, or a Modality LUT Sequence), so CT comes out
  in Hounsfield units; MR keeps its (rescaled) scanner intensities.
* Order: slices sorted by ``ImagePositionPatient`` projected on the slice normal (the cross product
  of the ``ImageOrientationPatient`` row and column cosines); ``InstanceNumber`` when positions are
  missing; file name last. Multi-frame files contribute one slice per frame.
* Grouping: by ``SeriesInstanceUID``; a folder holding several series needs ``series_uid=`` (see
  :func:`list_series`).
* Bad input raises one :class:`DataError` naming the file and the problem; ``strict=False`` skips
  such files and lists them in ``Series.skipped``. Non-image objects of a study (SR, SEG, RTSTRUCT,
  a DICOMDIR index) are not bad input: they are always skipped and listed.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from btd_jax.data.dicom_io import (
    NON_IMAGE_MODALITIES, attr, decode, decoder_hint, floats, functional_attr, image_problem,
    nframes, not_an_image, read_header, scanner,
)
from btd_jax.data.errors import DataError
from btd_jax.data.preprocess import canonical_modality
from btd_jax.data.records import Skipped

__all__ = ["Slice", "Series", "SeriesInfo", "read_slice", "load_series", "load_files",
           "load_all_series", "list_series", "find_series", "decoder_hint", "NON_IMAGE_MODALITIES"]

# Sidecar files commonly found next to DICOM files; skipped silently when scanning a folder.
_SIDECAR_SUFFIXES = frozenset({".txt", ".csv", ".json", ".md", ".xml", ".npy", ".npz", ".png",
                               ".jpg", ".jpeg", ".py", ".log", ".html", ".pdf", ".zip", ".gz"})


@dataclasses.dataclass(frozen=True)
class Slice:
    """One DICOM image file. ``pixels``: (F, H, W) float32 (F = 1 unless multi-frame)."""
    path: str
    pixels: np.ndarray
    modality: str
    patient_id: str
    study_uid: str
    series_uid: str
    scanner: str
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    positions: np.ndarray | None     # (F, 3) ImagePositionPatient of every frame, mm
    orientation: np.ndarray | None   # (6,) ImageOrientationPatient row + column cosines
    instance_number: int | None


@dataclasses.dataclass
class Series:
    """One series as a stack. ``pixels``: (S, H, W) float32, HU for CT.

    ``paths``/``frames``: (S,) source file and frame index of each slice; ``locations``: (S,)
    position along the slice normal in mm (None when the files lack positions).
    """
    pixels: np.ndarray
    modality: str
    patient_id: str
    study_uid: str
    series_uid: str
    scanner: str
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    paths: tuple[str, ...]
    frames: tuple[int, ...]
    locations: np.ndarray | None = None
    skipped: list[Skipped] = dataclasses.field(default_factory=list)
    positions: np.ndarray | None = None    # (S, 3) ImagePositionPatient of every slice, mm
    orientation: np.ndarray | None = None  # (6,) ImageOrientationPatient row + column cosines

    def __len__(self) -> int:
        return int(self.pixels.shape[0])


@dataclasses.dataclass(frozen=True)
class SeriesInfo:
    """What :func:`list_series` reports about one series (no pixel data decoded)."""
    series_uid: str
    modality: str
    patient_id: str
    scanner: str
    description: str
    n_files: int
    paths: tuple[str, ...]


def _slice_from(ds: Any, path: Path, pixels: np.ndarray | None) -> Slice:
    nf = nframes(ds)
    pos = [floats(functional_attr(ds, f, "PlanePositionSequence", "ImagePositionPatient"), 3)
           for f in range(nf)]
    orient = floats(functional_attr(ds, 0, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
    spacing = floats(functional_attr(ds, 0, "PixelMeasuresSequence", "PixelSpacing"), 2)
    thick = functional_attr(ds, 0, "PixelMeasuresSequence", "SliceThickness")
    try:
        thick = float(thick) if thick not in (None, "") else None
        inst = int(ds.InstanceNumber) if ds.get("InstanceNumber", None) not in (None, "") \
            else None
    except (TypeError, ValueError):
        thick, inst = None, None
    return Slice(
        path=str(path), pixels=pixels, modality=attr(ds, "Modality", "OT").upper(),
        patient_id=attr(ds, "PatientID"), study_uid=attr(ds, "StudyInstanceUID"),
        series_uid=attr(ds, "SeriesInstanceUID"), scanner=scanner(ds),
        pixel_spacing=tuple(float(v) for v in spacing) if spacing is not None else None,
        slice_thickness=thick,
        positions=np.stack(pos) if all(p is not None for p in pos) else None,
        orientation=orient, instance_number=inst)


def read_slice(path: str | os.PathLike) -> Slice:
    """Read one DICOM image file -> :class:`Slice` with pixels (F, H, W) float32 (HU for CT)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    ds = read_header(path)
    problem = image_problem(ds)
    if problem:
        raise DataError(f"{path}: {problem}")
    return _slice_from(ds, path, decode(ds, path))


# ----------------------------------------------------------------------------------------------
# folders and series

def _candidate_files(folder: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if name.startswith(".") or p.suffix.lower() in _SIDECAR_SUFFIXES:
                continue
            out.append(p)
    return out


def _scan(folder: Path, strict: bool) -> tuple[list[tuple[Path, Any, str | None]], list[Skipped]]:
    """Headers of every DICOM file under ``folder`` (or of the one file ``folder``):
    (path, dataset, image problem or None)."""
    if folder.is_file():
        ds = read_header(folder)
        return [(folder, ds, image_problem(ds))], []
    if not folder.is_dir():
        raise DataError(f"{folder}: no such file or folder")
    files = _candidate_files(folder)
    if not files:
        raise DataError(f"{folder}: empty folder (no DICOM files found)")
    found, skipped = [], []
    for p in files:
        try:
            ds = read_header(p)
        except DataError as e:
            if strict:
                raise DataError(f"{e} (strict mode; pass strict=False, or --lenient on the command line, "
                                "to skip bad files)") from None
            skipped.append(Skipped(str(p), str(e).removeprefix(f"{p}: ")))
            continue
        found.append((p, ds, image_problem(ds)))
    return found, skipped


def list_series(folder: str | os.PathLike, strict: bool = True,
                skipped: list[Skipped] | None = None) -> list[SeriesInfo]:
    """Every series under ``folder`` (recursive), image or not, without decoding pixels.

    Non-image objects (RTSTRUCT, SR, ...) are listed too, so that a folder's content can be seen
    before choosing ``series_uid`` for :func:`load_series`. Unreadable files raise unless
    ``strict=False`` (then they are left out, and added to the list ``skipped`` when given).
    """
    found, bad = _scan(Path(folder), strict)
    if skipped is not None:
        skipped.extend(bad)
    groups: dict[str, list[tuple[Path, Any]]] = {}
    for p, ds, _problem in found:
        groups.setdefault(attr(ds, "SeriesInstanceUID"), []).append((p, ds))
    out = []
    for uid, members in groups.items():
        ds0 = members[0][1]
        mods = sorted({attr(ds, "Modality", "?") for _, ds in members})
        out.append(SeriesInfo(uid, "/".join(mods), attr(ds0, "PatientID"), scanner(ds0),
                              attr(ds0, "SeriesDescription"), len(members),
                              tuple(str(p) for p, _ in members)))
    return out


def _fmt_series(uid: str, members: list) -> str:
    ds0 = members[0][1]
    return (f"{uid or '<no SeriesInstanceUID>'} ({attr(ds0, 'Modality', '?')}, patient "
            f"{attr(ds0, 'PatientID') or '?'}, {len(members)} file(s))")


def _select(folder: Path, images: list, series_uid: str | None, modality: str | None) -> list:
    groups: dict[str, list] = {}
    for p, ds in images:
        groups.setdefault(attr(ds, "SeriesInstanceUID"), []).append((p, ds))
    if series_uid is not None:
        if series_uid not in groups:
            raise DataError(f"{folder}: no image series with SeriesInstanceUID {series_uid}; found "
                            + "; ".join(_fmt_series(u, m) for u, m in groups.items()))
        return groups[series_uid]
    if len(groups) > 1:
        mods = sorted({attr(ds, "Modality", "?") for _, ds in images})
        what = f"mixed modalities {'/'.join(mods)}" if len(mods) > 1 and modality is None else \
            f"{len(groups)} series"
        raise DataError(f"{folder}: {what} in one folder; choose one with series_uid=... "
                        + ("or modality=... " if len(mods) > 1 else "")
                        + "(see list_series): " + "; ".join(_fmt_series(u, m)
                                                            for u, m in groups.items()))
    return next(iter(groups.values()))


def _sort_key_fn(slices: list[Slice]):
    """Sort by position along the slice normal if every slice has one, else InstanceNumber."""
    normal = None
    if all(s.positions is not None and s.orientation is not None for s in slices):
        o = slices[0].orientation
        normal = np.cross(o[:3], o[3:])
        if not np.linalg.norm(normal) > 0:
            normal = None
    if normal is not None:
        return (lambda s, f: (float(s.positions[f] @ normal), 0, s.path, f)), normal
    return (lambda s, f: (0.0, s.instance_number if s.instance_number is not None else 0,
                          s.path, f)), None


def _stack(slices: list[Slice], series_uid: str, skipped: list[Skipped], strict: bool) -> Series:
    shapes = Counter(s.pixels.shape[1:] for s in slices)
    mods = Counter(s.modality for s in slices)
    if len(mods) > 1:
        raise DataError(f"series {series_uid}: mixed modalities in one series: "
                        + ", ".join(f"{m} ({n} files)" for m, n in mods.items()))
    if len(shapes) > 1:
        common = shapes.most_common(1)[0][0]
        odd = [s for s in slices if s.pixels.shape[1:] != common]
        if strict:
            raise DataError(f"{odd[0].path}: slice size {odd[0].pixels.shape[1:]} differs from "
                            f"the series' {common} (series {series_uid})")
        skipped += [Skipped(s.path, f"slice size {s.pixels.shape[1:]} differs from the series' "
                                    f"{common}") for s in odd]
        slices = [s for s in slices if s.pixels.shape[1:] == common]
    key, normal = _sort_key_fn(slices)
    order = sorted(((s, f) for s in slices for f in range(s.pixels.shape[0])),
                   key=lambda sf: key(*sf))
    s0 = slices[0]
    return Series(
        pixels=np.stack([s.pixels[f] for s, f in order]).astype(np.float32),
        modality=s0.modality, patient_id=s0.patient_id, study_uid=s0.study_uid,
        series_uid=s0.series_uid, scanner=s0.scanner, pixel_spacing=s0.pixel_spacing,
        slice_thickness=s0.slice_thickness, paths=tuple(s.path for s, _ in order),
        frames=tuple(int(f) for _, f in order),
        locations=None if normal is None else np.array([s.positions[f] @ normal
                                                        for s, f in order]),
        skipped=skipped,
        positions=None if any(s.positions is None for s, _ in order) else np.stack(
            [s.positions[f] for s, f in order]),
        orientation=s0.orientation)


def _usable(path: Path, series_uid: str | None, modality: str | None,
            strict: bool) -> tuple[list, list[Skipped]]:
    """Headers of the image files under ``path`` that match the filters, and what was skipped."""
    found, skipped = _scan(path, strict)
    images = []
    for p, ds, problem in found:
        if series_uid is not None and attr(ds, "SeriesInstanceUID") != series_uid:
            continue
        if modality is not None and attr(ds, "Modality").upper() != canonical_modality(modality):
            skipped.append(Skipped(str(p), f"modality {attr(ds, 'Modality') or '?'}, "
                                           f"not {canonical_modality(modality)}"))
        elif problem and strict and not not_an_image(ds):
            raise DataError(f"{p}: {problem}" + ("" if path.is_file() else
                            " (strict mode; pass strict=False or --lenient to skip it, or series_uid=/modality="
                            " to choose the images)"))
        elif problem:
            skipped.append(Skipped(str(p), problem))
        else:
            images.append((p, ds))
    if not images and series_uid is not None:
        seen = sorted({attr(ds, "SeriesInstanceUID") for _, ds, _ in found})
        raise DataError(f"{path}: no image series with SeriesInstanceUID {series_uid}; found "
                        f"{', '.join(seen) or 'none'} (see list_series)")
    if not images:
        first = f"; first skipped: {skipped[0].item}: {skipped[0].reason}" if skipped else ""
        raise DataError(f"{path}: no usable DICOM image"
                        + (f" of modality {canonical_modality(modality)}" if modality else "") + first)
    return images, skipped


def _load_members(members: list, skipped: list[Skipped], strict: bool, where: Path) -> Series:
    slices = []
    for p, ds in members:
        try:
            slices.append(_slice_from(ds, p, decode(ds, p)))
        except DataError as e:
            if strict:
                raise
            skipped.append(Skipped(str(p), str(e).removeprefix(f"{p}: ")))
    if not slices:
        raise DataError(f"{where}: every file of series {attr(members[0][1], 'SeriesInstanceUID')} "
                        f"was skipped; first: {skipped[-1].item}: {skipped[-1].reason}")
    return _stack(slices, attr(members[0][1], "SeriesInstanceUID"), skipped, strict)


def load_series(path: str | os.PathLike, series_uid: str | None = None,
                modality: str | None = None, strict: bool = True) -> Series:
    """Load a DICOM file or a folder (searched recursively) as one sorted :class:`Series`.

    Args:
      path: a DICOM file (single- or multi-frame) or a folder.
      series_uid: which series to load when the folder holds several (see :func:`list_series`).
      modality: keep only files of this modality ('CT', 'MR'/'MRI'), e.g. to pick the CT series
        out of a folder that also has MR.
      strict: raise on the first bad file; else skip it and record it in ``Series.skipped``.
    """
    path = Path(path)
    images, skipped = _usable(path, series_uid, modality, strict)
    return _load_members(_select(path, images, series_uid, modality), skipped, strict, path)


def find_series(path: str | os.PathLike, modality: str | None = None, series_uid: str | None = None,
                strict: bool = True) -> tuple[list[SeriesInfo], list[Skipped]]:
    """The image series under ``path`` from the headers alone (no pixel data decoded), sorted by
    (patient, series UID), and the files left out: non-image objects, files of another ``modality``
    or series than ``series_uid``, and (``strict=False``) unreadable files. Read one with
    :func:`load_files` of its ``paths``."""
    images, skipped = _usable(Path(path), series_uid, modality, strict)
    groups: dict[tuple[str, str], list] = {}
    for p, ds in images:
        groups.setdefault((attr(ds, "PatientID"), attr(ds, "SeriesInstanceUID")), []).append((p, ds))
    out = []
    for (pid, uid), members in sorted(groups.items()):
        ds0 = members[0][1]
        mods = sorted({attr(ds, "Modality", "?").upper() for _, ds in members})
        out.append(SeriesInfo(uid, "/".join(mods), pid, scanner(ds0), attr(ds0, "SeriesDescription"), len(members),
                              tuple(str(p) for p, _ in members)))
    return out, skipped


def load_files(paths, strict: bool = True) -> Series:
    """One series from an explicit list of its files (e.g. ``SeriesInfo.paths`` of
    :func:`list_series`), without scanning their folder again."""
    paths = [Path(p) for p in paths]
    images, skipped = [], []
    for p in paths:
        try:
            ds = read_header(p)
            problem = image_problem(ds)
            if problem:
                raise DataError(f"{p}: {problem}")
        except DataError as e:
            if strict:
                raise
            skipped.append(Skipped(str(p), str(e).removeprefix(f"{p}: ")))
            continue
        images.append((p, ds))
    if not images:
        first = f": {skipped[0].item}: {skipped[0].reason}" if skipped else ""
        raise DataError(f"no usable DICOM image among {len(paths)} file(s){first}")
    return _load_members(images, skipped, strict, images[0][0].parent)


def load_all_series(path: str | os.PathLike, modality: str | None = None,
                    strict: bool = True) -> tuple[list[Series], list[Skipped]]:
    """Every image series under ``path``, sorted by (patient, series UID), and the skipped files.

    Without ``modality`` a folder mixing modalities is an error in strict mode; leniently, series of
    the most common modality are kept and the others skipped.
    """
    path = Path(path)
    images, skipped = _usable(path, None, modality, strict)
    mods = Counter(attr(ds, "Modality", "?").upper() for _, ds in images)
    if len(mods) > 1:
        if strict:
            raise DataError(f"{path}: mixed modalities in one folder ("
                            + ", ".join(f"{m}: {n} files" for m, n in mods.items())
                            + "); pass modality= to choose one (strict mode)")
        keep = mods.most_common(1)[0][0]
        skipped += [Skipped(str(p), f"modality {attr(ds, 'Modality')} differs from the folder's "
                                    f"{keep}") for p, ds in images
                    if attr(ds, "Modality", "?").upper() != keep]
        images = [(p, ds) for p, ds in images if attr(ds, "Modality", "?").upper() == keep]
    groups: dict[tuple[str, str], list] = {}
    for p, ds in images:
        groups.setdefault((attr(ds, "PatientID"), attr(ds, "SeriesInstanceUID")), []).append((p, ds))
    out = []
    for key in sorted(groups):
        try:
            out.append(_load_members(groups[key], skipped, strict, path))
        except DataError as e:
            if strict:
                raise
            skipped.append(Skipped(f"series {key[1]}", str(e)))
    return out, skipped

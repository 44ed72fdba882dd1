"""Generic paths over a format's scans: one volume in [0, 1] with its geometry (screen, localize) and
the units of a slice store (prepare).

    vol = read_volume("scan_folder/", modality="CT")       # any format with scans; DICOM: HU windowed
    vol.pixels                                              # (S, H, W) float32 in [0, 1]
    vol.geometry.to_mm(slice=3, row=120, col=200)           # (x, y, z) mm, LPS

Values go to [0, 1] with the paper's preprocessing (:func:`preprocess.to_unit_range`: the CT window,
MRI standardised over the whole volume) unless they are already there (a slice store, or
``units='unit'``).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from btd_jax.data import preprocess
from btd_jax.data.errors import DataError
from btd_jax.data.readers.formats import Format, ReadOptions, Scan, ScanRef, StoreInput, resolve
from btd_jax.data.readers.geometry import Geometry
from btd_jax.data.records import Skipped
from btd_jax.data.store.writer import SliceBatch, Unit

__all__ = ["Volume", "check_volume", "select_scans", "unit_range", "scans_of", "read_volume", "store_input"]


@dataclasses.dataclass
class Volume:
    """``pixels`` (S, H, W) float32 in [0, 1]; ``geometry`` None when the input has none (a bare
    ``.npy``); ``skipped``: items left out in lenient mode; ``single``: the input was one 2-D slice."""

    pixels: np.ndarray
    geometry: Optional[Geometry]
    source: str
    skipped: list = dataclasses.field(default_factory=list)
    single: bool = False


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


def select_scans(refs: Sequence[ScanRef], fmt: Format, modality: Optional[str], where: str,
                 skipped: List[Skipped]) -> Tuple[List[ScanRef], Optional[str]]:
    """The scans of ``modality`` (others are added to ``skipped``) and that modality ('CT'/'MR'); without
    one, the scans' own when they agree (several is an error), else the format's (None if unknown)."""
    if modality is None:
        found = sorted({r.modality.upper() for r in refs if r.modality})
        if len(found) > 1:
            raise DataError(f"{where}: scans of several modalities ({', '.join(found)}); pass --modality")
        modality = found[0] if found else fmt.modality
        return list(refs), None if modality is None else preprocess.canonical_modality(modality)
    mod = preprocess.canonical_modality(modality)
    kept = []
    for r in refs:
        if r.modality and r.modality.upper() not in (mod, "MRI" if mod == "MR" else mod):
            skipped.append(Skipped(f"series {r.series}", f"modality {r.modality}, not {mod}"))
        else:
            kept.append(r)
    if not kept:
        raise DataError(f"{where}: no {mod} scan; skipped: " + "; ".join(f"{k.item} ({k.reason})"
                                                                       for k in skipped[:5]))
    return kept, mod


def unit_range(scan: Scan, modality: Optional[str], where: str) -> np.ndarray:
    """``scan.pixels`` in [0, 1] (:func:`preprocess.to_unit_range`; as they are when already there)."""
    if scan.unit:
        return np.asarray(scan.pixels, np.float32)
    mod = modality or scan.modality
    if mod is None:
        raise DataError(f"{where}: the input does not say its modality; pass --modality (CT or MRI)")
    try:
        return preprocess.to_unit_range(scan.pixels, mod)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None


def scans_of(path: str | os.PathLike, fmt: str | Format, opts: ReadOptions
             ) -> Tuple[Format, List[ScanRef], List[Skipped], Optional[str]]:
    """(format, the scans of ``opts.modality``, skipped items, modality) of ``path``; DataError when the
    format has no scans."""
    f = resolve(path, fmt)
    if f.scans is None:
        raise DataError(f"{path}: {f.name} input holds no volumes (it is read as {', '.join(f.offers)})")
    refs, skipped = f.scans(Path(path), opts)
    skipped = list(skipped)
    if not refs:
        raise DataError(f"{path}: no {f.name} input found")
    refs, mod = select_scans(refs, f, opts.modality, os.fspath(path), skipped)
    return f, refs, skipped, mod


def read_volume(path: str | os.PathLike, modality: str = "CT", units: str = "raw",
                series_uid: Optional[str] = None, strict: bool = True, fmt: str | Format = "auto") -> Volume:
    """One volume of any format with scans (DICOM file/folder, NIfTI, ``.npy``, one series of a slice
    store, ...) -> :class:`Volume` in [0, 1].

    ``units='raw'``: HU (CT) or scanner values (MRI), mapped with the paper's preprocessing; ``'unit'``:
    already in [0, 1] (a slice store always is). An input holding several series needs ``series_uid``.
    DICOM geometry is checked (missing slices, uneven spacing, mixed orientations). ``strict=False``
    skips unreadable files and lists them in ``Volume.skipped``.
    """
    if units not in ("raw", "unit"):
        raise ValueError(f"units must be 'raw' or 'unit', got {units!r}")
    f, refs, skipped, mod = scans_of(path, fmt, ReadOptions(modality=modality, strict=strict, series_uid=series_uid))
    if len(refs) > 1:
        raise DataError(f"{path}: {len(refs)} series; choose one with series_uid (--series_uid): "
                        + "; ".join(f"{r.series} ({r.n_slices} slice(s))" for r in refs[:8]))
    scan = refs[0].load()
    pixels = np.asarray(scan.pixels, np.float32) if units == "unit" else unit_range(scan, mod, refs[0].where)
    geometry = scan.geometry()
    if geometry is not None and not geometry.modality:
        geometry = dataclasses.replace(geometry, modality=mod or "")
    return Volume(pixels, geometry, os.fspath(path), skipped + list(scan.skipped), scan.single)


def _slice_batch(ref: ScanRef, modality: Optional[str]) -> SliceBatch:
    scan = ref.load()
    vol = unit_range(scan, modality, ref.where)
    mod = modality or preprocess.canonical_modality(scan.modality)
    records = [dict(r, modality=mod, weight=r.get("weight", 1)) for r in scan.records]
    return SliceBatch(list(vol), records, list(scan.skipped))


def store_input(path: str | os.PathLike, fmt: str | Format, opts: ReadOptions) -> StoreInput:
    """What a slice store is written from: the format's own units, or one unit per scan."""
    f = resolve(path, fmt)
    if f.units is not None:
        return f.units(Path(path), opts)
    f, refs, skipped, mod = scans_of(path, f, opts)
    if mod is None:
        raise DataError(f"{path}: {f.name} input does not say its modality; pass --modality")
    units = [Unit(r.key, r.n_slices, functools.partial(_slice_batch, r, mod)) for r in refs]
    return StoreInput(units, mod, skipped)

"""The authors' CT training folder, read the way their trainer reads it.

A folder with ``train_csv.csv`` (columns ``unix_path``, ``x``, ``y``, ...; paths relative to the
folder, a ``new_dataset/`` prefix removed as their loader does) naming slices stored as ``.npy`` in
Hounsfield units. Their loader drops the file's last row. The crop centres are ONE list shared by
all slices: every distinct integer ``(y, x)`` of the CSV (rows whose x or y is not a number give
none, as in their ``try``/``except``). Slices are windowed with the paper's CT window. (Their MRI
trainer's image folders: :mod:`btd_jax.data.readers.images`.)

:func:`ct_units` gives store units (:mod:`btd_jax.data.store.writer`); :class:`CTFolder` reads the
layout directly as a crop source, without a store.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from btd_jax.data import preprocess
from btd_jax.data.errors import DataError
from btd_jax.data.records import Skipped
from btd_jax.data.store.writer import SliceBatch, Unit
from btd_jax.data.validate import load_npy, read_csv

__all__ = ["CT_CSV", "CTLayout", "read_ct_layout", "ct_units", "CTFolder"]

CT_CSV = "train_csv.csv"
_PREFIX = "new_dataset/"
_PATIENT_COLUMNS = ("patient", "patient_id", "PatientID")
_SCANNER_COLUMNS = ("scanner", "Scanner", "ManufacturerModelName", "model")


class CTLayout:
    """The parsed ``train_csv.csv``: unique slice paths (first-seen order) with their CSV row
    counts, one record per slice, and the shared crop-centre list."""

    def __init__(self, folder: Path, paths: list[str], weights: list[int], records: list[dict],
                 locations: np.ndarray, no_location: int):
        self.folder, self.paths, self.weights = folder, paths, weights
        self.records, self.locations, self.no_location = records, locations, no_location


def _int_or_none(v) -> int | None:
    try:
        f = float(v)
        return int(f) if np.isfinite(f) else None
    except (TypeError, ValueError):
        return None


def read_ct_layout(folder: str | os.PathLike) -> CTLayout:
    """Parse ``folder/train_csv.csv`` as the authors' CT loader does (see the module doc)."""
    folder = Path(folder)
    csv_path = folder / CT_CSV if folder.is_dir() else folder
    folder = csv_path.parent
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: the authors' CT training CSV is missing")
    header, rows = read_csv(csv_path)
    missing = [c for c in ("unix_path", "x", "y") if c not in header]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {missing}; found {header}")
    rows = rows[:-1]  # the authors' loader drops the file's last row
    if not rows:
        raise DataError(f"{csv_path}: no rows (the last row is dropped, as the authors do)")
    locs, no_loc, index = set(), 0, {}
    paths, weights, records = [], [], []
    for line, r in enumerate(rows, start=2):
        y, x = _int_or_none(r["y"]), _int_or_none(r["x"])
        if y is None or x is None:
            no_loc += 1
        else:
            locs.add((y, x))
        rel = r["unix_path"].replace(_PREFIX, "")
        if not rel:
            raise DataError(f"{csv_path} row {line}: empty unix_path")
        if rel in index:
            weights[index[rel]] += 1
            continue
        index[rel] = len(paths)
        paths.append(rel)
        weights.append(1)
        patient = next((r[c] for c in _PATIENT_COLUMNS if r.get(c)), Path(rel).parts[0])
        scanner = next((r[c] for c in _SCANNER_COLUMNS if r.get(c)), "")
        extra = {k: v for k, v in r.items() if k not in ("unix_path", "x", "y")}
        records.append(dict(extra, patient=patient, series="", scanner=scanner, modality="CT",
                            slice=None, frame=0, path=rel, csv_row=line, pixel_spacing=None,
                            affine=None))
    if not locs:
        raise DataError(f"{csv_path}: no row has integer x and y: no crop centres")
    for rec, w in zip(records, weights):
        rec["weight"] = w
    return CTLayout(folder, paths, weights, records,
                    np.array(sorted(locs), np.int32).reshape(-1, 2), no_loc)


def _load_hu(path: Path, where: str) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{where}: slice file {path} does not exist")
    hu = load_npy(path, mmap=True, what="the slice")
    if hu.ndim == 3 and hu.shape[0] == 1:
        hu = hu[0]
    if hu.ndim != 2:
        raise DataError(f"{path}: expected a 2-D slice in HU, got shape {hu.shape}")
    return hu


def ct_units(layout: CTLayout, shard_rows: int = 256, strict: bool = True) -> list[Unit]:
    """Store units of ``shard_rows`` slices each, in CSV order."""
    units = []
    for lo in range(0, len(layout.paths), shard_rows):
        chunk = list(range(lo, min(lo + shard_rows, len(layout.paths))))
        crc = zlib.crc32("\n".join(layout.paths[i] for i in chunk).encode())
        units.append(Unit(f"authors_ct:{lo}-{chunk[-1]}:{crc:08x}", len(chunk),
                          lambda chunk=chunk: _load_ct(layout, chunk, strict)))
    return units


def _load_ct(layout: CTLayout, chunk: Sequence[int], strict: bool) -> SliceBatch:
    out = SliceBatch([], [])
    for i in chunk:
        rec = layout.records[i]
        where = f"{layout.folder / CT_CSV} row {rec['csv_row']}"
        try:
            path = layout.folder / layout.paths[i]
            hu = np.asarray(_load_hu(path, where))
            try:
                img = preprocess.window_ct(hu)
            except DataError as e:
                raise DataError(f"{path}: {e}") from None
        except DataError as e:
            if strict:
                raise
            out.skipped.append(Skipped(where, str(e)))
            continue
        out.slices.append(img)
        out.records.append(rec)
    return out


class CTFolder:
    """The authors' CT layout read directly as a crop source (no store): each crop maps the
    ``.npy`` slice and windows only the rows it needs. Picklable; see :class:`sampling.SliceSource`."""

    def __init__(self, folder: str | os.PathLike, size: int = preprocess.PATCH_SIZE["CT"]):
        self.layout = read_ct_layout(folder)
        self.path, self.modality, self.size = self.layout.folder, "CT", int(size)
        self.locations = self.layout.locations.astype(np.int64)
        self._arr: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.layout.paths)

    def __getstate__(self):
        return {"folder": os.fspath(self.layout.folder), "size": self.size}

    def __setstate__(self, state):
        self.__init__(state["folder"], state["size"])

    def _slice(self, row: int) -> np.ndarray:
        if self._arr is None or self._arr[0] != row:
            rec = self.layout.records[row]
            self._arr = (row, _load_hu(self.layout.folder / self.layout.paths[row],
                                       f"{self.layout.folder / CT_CSV} row {rec['csv_row']}"))
        return self._arr[1]

    dtype = np.dtype(np.float32)

    def shape(self, row: int) -> tuple[int, int]:
        return tuple(int(n) for n in self._slice(row).shape)

    def shapes(self, rows: np.ndarray) -> np.ndarray:
        return np.array([self.shape(int(r)) for r in rows], np.int64).reshape(-1, 2)

    def centres(self, row: int) -> np.ndarray:
        return self.locations

    def pick_centres(self, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
        k = np.minimum((np.asarray(u) * len(self.locations)).astype(np.int64),
                       len(self.locations) - 1)
        return self.locations[k]

    def default_jitter(self) -> int:
        return 0

    def window(self, row: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        block = np.asarray(self._slice(row)[y0:y0 + h, x0:x0 + w])
        try:
            return preprocess.window_ct(block)
        except DataError as e:
            raise DataError(f"{self.layout.folder / self.layout.paths[row]}: {e}") from None

    def read(self, rows: np.ndarray, y0: np.ndarray, x0: np.ndarray, size: int,
             flip: np.ndarray, out: np.ndarray) -> None:
        for j, row in enumerate(rows):
            block = self.window(int(row), int(y0[j]), int(x0[j]), size, size)
            out[j] = block[:, ::-1] if flip[j] else block

    def column(self, name: str, default=None) -> np.ndarray:
        return np.asarray([r.get(name, default) if r.get(name) is not None else default
                           for r in self.layout.records])

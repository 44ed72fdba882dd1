"""The slice store: windowed slices in ``.npy`` shards with a manifest, written once, read by row.

A store is a folder (local, or any ``etils.epath`` location such as ``gs://bucket/lidc``)::

    store.json                 summary: format, modality, dtype, crop size, shards, counts, skipped
    manifest.jsonl             one JSON object per slice in row order: row, shard, index, patient,
                               series, scanner, modality, slice, frame, path, pixel_spacing, affine,
                               weight (+ source-specific fields)
    locations.npy              (L, 2) int32 (y, x): the authors' crop-centre list, when given
    shards/UUUUUU-G.npy        (n, H, W) float16/float32 slices in [0, 1] (one H x W per shard)
    shards/UUUUUU-G.centres.npy  (n, K, 2) int16 candidate crop centres (y, x), -1 = unused
    shards/UUUUUU.json         record of input unit U (series, volume, chunk of files)
    plan.json                  the input units and options being written

Why ``.npy`` shards: a slice is a fixed-size block at a known byte offset, so a local shard is
memory-mapped (``np.load(mmap_mode='r')``, zero copy, only the touched pages are read) and a remote
one is read by byte range, the crop's rows only. Written by :mod:`btd_jax.data.store.writer`, atomically
per unit (shards first, each via a temporary file and a rename, then the unit's record); a rerun
skips units whose record exists.
"""

from __future__ import annotations

import io
import json
import os
from typing import Iterable

import numpy as np
from etils import epath

from btd_jax.data.errors import DataError

__all__ = ["FORMAT", "VERSION", "SliceStore", "open_store", "is_store"]

FORMAT = "btd-slice-store"
VERSION = 1
STORE_FILE = "store.json"
MANIFEST_FILE = "manifest.jsonl"
PLAN_FILE = "plan.json"
LOCATIONS_FILE = "locations.npy"
SHARD_DIR = "shards"
SKIPPED_FILE = "skipped.csv"  # items left out in lenient mode (item, reason), beside store.json
DTYPES = ("float16", "float32")


def _is_remote(path: epath.Path) -> bool:
    return "://" in os.fspath(path)


def is_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding a finished slice store."""
    p = epath.Path(path)
    return (p / STORE_FILE).exists() or (p / PLAN_FILE).exists()


class _RangedShard:
    """A remote ``.npy`` shard read by byte range (rows of one slice at a time)."""

    def __init__(self, path: epath.Path):
        self.path = path
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            self.shape, fortran, self.dtype = read(f)
            self.offset = f.tell()
        if fortran:
            raise DataError(f"{path}: Fortran-ordered shard, expected C order")
        self._f = None

    def rows(self, i: int, y0: int, y1: int) -> np.ndarray:
        _, h, w = self.shape
        item = self.dtype.itemsize
        if self._f is None:
            self._f = self.path.open("rb")
        self._f.seek(self.offset + ((i * h + y0) * w) * item)
        data = self._f.read((y1 - y0) * w * item)
        if len(data) != (y1 - y0) * w * item:
            raise DataError(f"{self.path}: truncated shard (row {i} ends past the file)")
        return np.frombuffer(data, self.dtype).reshape(y1 - y0, w)


class SliceStore:
    """Rows of a finished store; local shards are memory-mapped, remote ones read by range.

    Picklable (worker processes reopen the shards themselves). ``len(store)`` slices; row ``r``
    lives in shard :meth:`locate` ``(r)``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = epath.Path(path)
        info_path = self.path / STORE_FILE
        if not info_path.exists():
            hint = (" (an unfinished prepare: rerun it to resume)"
                    if (self.path / PLAN_FILE).exists() else "")
            raise DataError(f"{self.path}: not a slice store, {STORE_FILE} is missing{hint}")
        try:
            info = json.loads(info_path.read_text())
        except ValueError as e:
            raise DataError(f"{info_path}: unreadable ({e})") from None
        if info.get("format") != FORMAT or int(info.get("version", -1)) > VERSION:
            raise DataError(f"{info_path}: not a {FORMAT} of version <= {VERSION}")
        self.info = info
        self.modality, self.size = info["modality"], int(info["size"])
        self.dtype = np.dtype(info["dtype"])
        self.shards = info["shards"]
        counts = [s["rows"] for s in self.shards]
        self._starts = np.cumsum([0] + counts)
        # Per-row lookups for whole batches: shard number, index inside it, (H, W).
        self._row_shard = np.repeat(np.arange(len(counts)), counts)
        self._row_index = np.arange(self._starts[-1]) - self._starts[self._row_shard]
        self._shard_hw = np.array([[s["height"], s["width"]] for s in self.shards], np.int64)
        self.locations = None
        if info["candidates"] == "locations":
            self.locations = self._load_small(self.path / LOCATIONS_FILE).astype(np.int64)
        self._open: dict[int, object] = {}
        self._centres: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getstate__(self):
        return {"path": os.fspath(self.path)}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def _load_small(self, path: epath.Path) -> np.ndarray:
        try:
            return np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)
        except FileNotFoundError:
            raise DataError(f"{path}: missing store file") from None
        except (ValueError, OSError, EOFError) as e:
            raise DataError(f"{path}: corrupt store file ({e})") from None

    def locate(self, row: int) -> tuple[int, int]:
        """(shard number, index in the shard) of ``row``."""
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} out of range for a store of {len(self)} slices")
        return int(self._row_shard[row]), int(self._row_index[row])

    def _shard(self, s: int):
        arr = self._open.get(s)
        if arr is not None:
            return arr
        entry = self.shards[s]
        path = self.path / entry["file"]
        want = (entry["rows"], entry["height"], entry["width"])
        try:
            if _is_remote(path):
                arr = _RangedShard(path)
                shape, dtype = arr.shape, arr.dtype
            else:
                arr = np.load(os.fspath(path), mmap_mode="r", allow_pickle=False)
                shape, dtype = arr.shape, arr.dtype
                arr = arr.view(np.ndarray)  # same mapped pages, without np.memmap's slicing cost
        except FileNotFoundError:
            raise DataError(f"{path}: shard file missing") from None
        except DataError:
            raise
        except (ValueError, OSError, EOFError) as e:  # bad header, file shorter than its header says
            raise DataError(f"{path}: corrupt or truncated shard ({e})") from None
        if tuple(shape) != want or dtype != self.dtype:
            raise DataError(f"{path}: shard holds {tuple(shape)} {dtype}, the store says "
                            f"{want} {self.dtype}")
        self._open[s] = arr
        return arr

    def shape(self, row: int) -> tuple[int, int]:
        s, _ = self.locate(row)
        return int(self.shards[s]["height"]), int(self.shards[s]["width"])

    def default_jitter(self) -> int:
        """Offset range of crops around a candidate: half the tissue grid stride, 0 for a list."""
        return 0 if self.locations is not None else max(1, self.size // 8)

    def _centre_table(self, s: int) -> np.ndarray:
        table = self._centres.get(s)
        if table is None:
            path = self.path / self.shards[s]["centres"]
            if _is_remote(path):
                table = self._load_small(path)
                self._centres = {}  # one remote table at a time: bounded memory
            else:
                try:
                    table = np.load(os.fspath(path), mmap_mode="r", allow_pickle=False)
                except FileNotFoundError:
                    raise DataError(f"{path}: missing store file") from None
                except (ValueError, OSError) as e:
                    raise DataError(f"{path}: corrupt store file ({e})") from None
            self._centres[s] = table
        return table

    def centres(self, row: int) -> np.ndarray:
        """(K, 2) candidate crop centres (y, x) of ``row``."""
        if self.locations is not None:
            return self.locations
        s, i = self.locate(row)
        c = np.asarray(self._centre_table(s)[i])
        return c[c[:, 0] >= 0].astype(np.int64)

    def shapes(self, rows: np.ndarray) -> np.ndarray:
        """(k, 2) slice (H, W) of ``rows``."""
        return self._shard_hw[self._row_shard[np.asarray(rows, np.int64)]]

    def pick_centres(self, rows: np.ndarray, u: np.ndarray) -> np.ndarray:
        """(k, 2) centres: candidate ``floor(u * K)`` of each row's list."""
        if self.locations is not None:
            k = np.minimum((np.asarray(u) * len(self.locations)).astype(np.int64),
                           len(self.locations) - 1)
            return self.locations[k]
        out = np.empty((len(rows), 2), np.int64)
        for j, (row, uj) in enumerate(zip(rows, u)):
            c = self.centres(int(row))
            out[j] = c[min(int(uj * len(c)), len(c) - 1)]
        return out

    def read(self, rows: np.ndarray, y0: np.ndarray, x0: np.ndarray, size: int,
             flip: np.ndarray, out: np.ndarray) -> None:
        """Fill ``out[j]`` with the ``size`` block of ``rows[j]`` at (y0, x0), mirrored where
        ``flip``; checks the values (NaN, outside [0, 1]: a corrupt shard)."""
        for j, row in enumerate(np.asarray(rows, np.int64)):
            s, i = self._row_shard[row], self._row_index[row]
            arr = self._open.get(s)
            if arr is None:
                arr = self._shard(s)
            if isinstance(arr, _RangedShard):
                block = arr.rows(i, y0[j], y0[j] + size)[:, x0[j]:x0[j] + size]
            else:
                block = arr[i, y0[j]:y0[j] + size, x0[j]:x0[j] + size]
            out[j] = block[:, ::-1] if flip[j] else block
        bad = _out_of_range(out.reshape(len(out), -1))
        if bad.any():
            j = int(np.argmax(bad))
            s, i = self._row_shard[rows[j]], self._row_index[rows[j]]
            raise DataError(f"{self.path / self.shards[s]['file']}: row {i} holds values outside "
                            f"[0, 1] or NaN (corrupt shard)")

    def window(self, row: int, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """(h, w) float32 block of ``row`` at (y0, x0); must lie inside the slice."""
        s, i = self.locate(row)
        arr = self._shard(s)
        if isinstance(arr, _RangedShard):
            block = arr.rows(i, y0, y0 + h)[:, x0:x0 + w]
        else:
            block = arr[i, y0:y0 + h, x0:x0 + w]
        out = np.asarray(block, np.float32)
        if _out_of_range(out.reshape(1, -1)).any():
            raise DataError(f"{self.path / self.shards[s]['file']}: row {i} holds values outside "
                            f"[0, 1] or NaN (corrupt shard)")
        return out

    def slice(self, row: int) -> np.ndarray:
        """The whole (H, W) slice of ``row`` as float32."""
        h, w = self.shape(row)
        return self.window(row, 0, 0, h, w)

    def records(self, keys: Iterable[str] | None = None) -> Iterable[dict]:
        """Manifest records in row order (only ``keys`` of each, if given), streamed."""
        keys = None if keys is None else list(keys)
        with (self.path / MANIFEST_FILE).open("r") as f:
            for line in f:
                if line.strip():
                    r = json.loads(line)
                    yield r if keys is None else {k: r.get(k) for k in keys}

    def column(self, name: str, default=None) -> np.ndarray:
        """(len(store),) values of one manifest field."""
        vals = [r[name] if r[name] is not None else default for r in self.records([name])]
        if len(vals) != len(self):
            raise DataError(f"{self.path / MANIFEST_FILE}: {len(vals)} records for "
                            f"{len(self)} slices")
        return np.asarray(vals)


def _out_of_range(flat: np.ndarray) -> np.ndarray:
    """(k,) whether each row of ``flat`` has a NaN/inf or a value outside [0, 1]."""
    if flat.dtype == np.float16:  # on the bits: numpy's float16 arithmetic is slow
        bits = flat.view(np.uint16)
        if bits.max() <= 0x3C00:  # the usual case, one fast pass: all in [+0, 1]
            return np.zeros(len(flat), bool)
        return ((bits > 0x3C00) & (bits != 0x8000)).any(axis=1)  # above 1.0, negative, inf/NaN
    if flat.min() >= 0 and flat.max() <= 1:
        return np.zeros(len(flat), bool)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    return ~((lo >= 0) & (hi <= 1))  # NaN fails both comparisons


def open_store(path: str | os.PathLike) -> SliceStore:
    """A :class:`SliceStore` for ``path``."""
    return SliceStore(path)

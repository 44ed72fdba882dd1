"""Writing a slice store (the format: :mod:`btd_jax.data.store.slice_store`) from input units, resumably.

Each unit is written atomically (its shards first, each via a temporary file and a rename, then
its record); a rerun with the same units and options skips units whose record exists.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from typing import Callable, Sequence

import numpy as np
from etils import epath

from btd_jax.data.crops import sampling as crops_lib
from btd_jax.data.errors import DataError
from btd_jax.data.records import Skipped
from btd_jax.data.store.slice_store import (
    DTYPES, FORMAT, LOCATIONS_FILE, MANIFEST_FILE, PLAN_FILE, SHARD_DIR, SKIPPED_FILE, STORE_FILE, VERSION,
)

__all__ = ["SliceBatch", "Unit", "write_store", "atomic_write_bytes"]


@dataclasses.dataclass
class SliceBatch:
    """What one input unit yields: (H, W) float32 slices in [0, 1], one manifest record each,
    and what was skipped (lenient mode)."""
    slices: list[np.ndarray]
    records: list[dict]
    skipped: list[Skipped] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Unit:
    """One input unit: a stable key, the slices it should give (for progress) and its reader."""
    key: str
    n_slices: int
    load: Callable[[], SliceBatch]


def atomic_write_bytes(path: epath.Path, data: bytes) -> None:
    """Write ``path`` via a temporary file and a rename, so it is whole or absent."""
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    tmp.write_bytes(data)
    tmp.replace(path)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _check_slice(img: np.ndarray, where: str) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim != 2 or min(img.shape) < 1:
        raise DataError(f"{where}: expected a 2-D slice, got shape {img.shape}")
    if not np.issubdtype(img.dtype, np.floating):
        raise DataError(f"{where}: expected floats in [0, 1], got dtype {img.dtype}")
    if not np.isfinite(img).all():
        raise DataError(f"{where}: {int((~np.isfinite(img)).sum())} NaN/inf value(s)")
    lo, hi = float(img.min()), float(img.max())
    if lo < 0.0 or hi > 1.0:
        raise DataError(f"{where}: values outside [0, 1] ([{lo:.4g}, {hi:.4g}])")
    return img.astype(np.float32, copy=False)


def _write_unit(out: epath.Path, i: int, unit: Unit, batch: SliceBatch, dtype: str,
                size: int, with_centres: bool) -> dict:
    """Shards of one unit (one per slice shape), then its record; returns the record."""
    groups: dict[tuple[int, int], list[int]] = {}
    for k, img in enumerate(batch.slices):
        groups.setdefault(img.shape, []).append(k)
    shards, records = [], []  # records in row order: shard by shard
    for g, (shape, members) in enumerate(sorted(groups.items())):
        name = f"{i:06d}-{g:02d}"
        arr = np.stack([batch.slices[k] for k in members]).astype(dtype)
        atomic_write_bytes(out / SHARD_DIR / f"{name}.npy", _npy_bytes(arr))
        entry = {"file": f"{SHARD_DIR}/{name}.npy", "rows": len(members), "height": shape[0],
                 "width": shape[1]}
        if with_centres:
            cands = [crops_lib.tissue_centres(batch.slices[k], size) for k in members]
            table = np.full((len(members), max(len(c) for c in cands), 2), -1, np.int16)
            for j, c in enumerate(cands):
                table[j, :len(c)] = c
            atomic_write_bytes(out / SHARD_DIR / f"{name}.centres.npy", _npy_bytes(table))
            entry["centres"] = f"{SHARD_DIR}/{name}.centres.npy"
        shards.append(entry)
        records += [dict(batch.records[k], shard=entry["file"], index=j)
                    for j, k in enumerate(members)]
    rec = {"key": unit.key, "n_slices": len(batch.slices), "shards": shards, "records": records,
           "skipped": [dataclasses.asdict(s) for s in batch.skipped]}
    atomic_write_bytes(out / SHARD_DIR / f"{i:06d}.json", json.dumps(rec).encode())
    return rec


def _finished(out: epath.Path, i: int, unit: Unit) -> dict | None:
    """The record of unit ``i`` if it was written for this unit and its shards are there."""
    path = out / SHARD_DIR / f"{i:06d}.json"
    if not path.exists():
        return None
    try:
        rec = json.loads(path.read_text())
    except (ValueError, OSError):
        return None
    if rec.get("key") != unit.key:
        return None
    if not all((out / s["file"]).exists() for s in rec["shards"]):
        return None
    return rec


def _same_work(old: dict, plan: dict) -> bool:
    """Whether two plans make the same store (strictness only decides what a bad unit does)."""
    strip = lambda p: {**p, "options": {k: v for k, v in p.get("options", {}).items() if k != "strict"}}  # noqa: E731
    return strip(old) == strip(plan)


def _clear(out: epath.Path) -> None:
    """Removes the store's own entries from ``out`` (nothing else in the folder)."""
    for name in (STORE_FILE, MANIFEST_FILE, LOCATIONS_FILE, PLAN_FILE, SKIPPED_FILE):
        if (out / name).exists():
            (out / name).unlink()
    if (out / SHARD_DIR).exists():
        (out / SHARD_DIR).rmtree()


def _check_plan(out: epath.Path, plan: dict, overwrite: bool = False) -> None:
    """Resumes a store written from the same input and options; a store begun from other input or
    options is started again when none of its units was finished (a run that failed at once) or
    with ``overwrite``, else refused."""
    path = out / PLAN_FILE
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (ValueError, OSError):
            old = {}
        if _same_work(old, plan):
            if old != plan:
                atomic_write_bytes(path, json.dumps(plan, indent=1).encode())
            return
        started = (out / SHARD_DIR).exists() and any((out / SHARD_DIR).glob("*.json"))
        if started and not overwrite:
            what = [k for k in plan if old.get(k) != plan[k]]
            raise DataError(f"{out}: holds a store being written from other input or options "
                            f"(differs in: {', '.join(what)}); use another output folder, or pass "
                            "--overwrite to start it again")
        _clear(out)
    atomic_write_bytes(path, json.dumps(plan, indent=1).encode())


def write_store(out: str | os.PathLike, units: Sequence[Unit], *, modality: str, size: int,
                dtype: str = "float16", locations: np.ndarray | None = None,
                options: dict | None = None, skipped: Sequence[Skipped] = (),
                strict: bool = True, progress: bool = True, overwrite: bool = False) -> dict:
    """Write (or finish) a slice store from ``units``; returns the summary saved as store.json.

    Args:
      out: store folder (created); a rerun with the same units and options resumes it.
      units: the input, in a fixed order (see :mod:`btd_jax.data.store.sources`).
      modality: 'CT' or 'MR'; size: crop side the candidate centres are computed for.
      dtype: 'float16' (half the disk; values within 2.5e-4 of float32) or 'float32'.
      locations: (L, 2) (y, x) crop centres shared by all slices (the authors' list); without
        it every slice gets tissue centres (:func:`sampling.tissue_centres`).
      options: recorded in the plan and summary (how the input was read).
      skipped: input left out before writing (e.g. non-image series), listed in the summary.
      strict: raise on the first bad unit; else record it as skipped and go on.
      progress: show a tqdm bar (slices/s).
      overwrite: start again a store that ``out`` holds from other input or options.
    """
    from tqdm import tqdm

    if dtype not in DTYPES:
        raise DataError(f"store dtype must be one of {DTYPES}, got {dtype!r}")
    out = epath.Path(out)
    plan = {"format": FORMAT, "version": VERSION, "modality": modality, "dtype": dtype,
            "size": int(size), "options": options or {}, "units": [u.key for u in units]}
    out.mkdir(parents=True, exist_ok=True)
    _check_plan(out, plan, overwrite)
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    if locations is not None:
        locations = np.asarray(locations, np.int32).reshape(-1, 2)
        if len(locations) == 0:
            raise DataError(f"{out}: the crop-centre list is empty")
        atomic_write_bytes(out / LOCATIONS_FILE, _npy_bytes(locations))
    bar = tqdm(total=sum(u.n_slices for u in units), unit="slice", dynamic_ncols=True,
               disable=not progress, desc="prepare")
    recs = []
    try:
        for i, unit in enumerate(units):
            rec = _finished(out, i, unit)
            if rec is None:
                try:
                    batch = unit.load()
                    batch.slices = [_check_slice(s, f"{unit.key}: slice {r.get('path', k)}")
                                    for k, (s, r) in enumerate(zip(batch.slices, batch.records))]
                except DataError as e:
                    if strict:
                        raise
                    batch = SliceBatch([], [], [Skipped(unit.key, str(e))])
                rec = _write_unit(out, i, unit, batch, dtype, size, locations is None)
            recs.append(rec)
            bar.update(unit.n_slices)
        return _finalise(out, plan, recs, locations is not None,
                         [dataclasses.asdict(s) for s in skipped])
    except BaseException:
        if not recs:  # nothing finished: leave no plan behind (a rerun with other options starts clean)
            _clear(out)
        raise
    finally:
        bar.close()


def _finalise(out: epath.Path, plan: dict, recs: list[dict], has_locations: bool,
              skipped: list[dict]) -> dict:
    lines, shards, row = [], [], 0
    for rec in recs:
        for r in rec["records"]:
            lines.append(json.dumps(dict(r, row=row)))
            row += 1
        shards += rec["shards"]
        skipped += rec["skipped"]
    if row == 0:
        first = f"; first skipped: {skipped[0]['item']}: {skipped[0]['reason']}" if skipped else ""
        raise DataError(f"{out}: no slice could be read{first}")
    atomic_write_bytes(out / MANIFEST_FILE, ("\n".join(lines) + "\n").encode())
    summary = {k: plan[k] for k in ("format", "version", "modality", "dtype", "size", "options")}
    summary.update(candidates="locations" if has_locations else "tissue", n_slices=row,
                   n_units=len(recs), shards=shards, skipped=skipped)
    atomic_write_bytes(out / STORE_FILE, json.dumps(summary, indent=1).encode())
    if skipped:  # the same list as a table, as every command's --lenient writes it
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["item", "reason"])
        w.writerows((k["item"], k["reason"]) for k in skipped)
        atomic_write_bytes(out / SKIPPED_FILE, buf.getvalue().encode())
    return summary

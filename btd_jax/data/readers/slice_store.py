"""The slice store (``btd-jax prepare``, local or ``gs://``): training reads it as a crop source; each
series is also one scan, already in [0, 1], with its geometry from the manifest's per-slice affines."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import List, Tuple

import numpy as np

from btd_jax.data.errors import DataError
from btd_jax.data.readers.formats import Format, Probe, ReadOptions, Scan, ScanRef, register
from btd_jax.data.readers.geometry import geometry_from_affines
from btd_jax.data.records import Skipped
from btd_jax.data.store import slice_store

__all__ = ["FORMAT", "store_scans"]

_FIELDS = ("row", "patient", "series", "scanner", "slice", "frame", "path", "pixel_spacing", "affine", "modality")


def _load(st: slice_store.SliceStore, name: str, rows: List[dict]) -> Scan:
    where = f"{st.path} series {name}"
    shapes = {st.shape(r["row"]) for r in rows}
    if len(shapes) > 1:
        raise DataError(f"{st.path}: series {name!r} mixes slice sizes {sorted(shapes)}")
    pixels = np.stack([st.slice(r["row"]) for r in rows]).astype(np.float32)
    geometry = lambda: None  # noqa: E731
    if all(r.get("affine") is not None for r in rows):
        geometry = functools.partial(geometry_from_affines, [r["affine"] for r in rows], where,
                                     paths=tuple(str(r["path"]) for r in rows), series_uid=name,
                                     modality=str(rows[0].get("modality") or ""))
    records = [{k: v for k, v in r.items() if k not in ("row", "modality")} for r in rows]
    return Scan(pixels, records, modality=st.modality, geometry=geometry, unit=True)


def store_scans(path: Path, opts: ReadOptions) -> Tuple[List[ScanRef], List[Skipped]]:
    """One scan per series of the store (slices in order; ``opts.series_uid`` keeps one)."""
    st = slice_store.open_store(path)
    series: dict = {}
    for r in st.records(_FIELDS):
        series.setdefault(str(r["series"]), []).append(r)
    names = sorted(series)
    if opts.series_uid is not None:
        if str(opts.series_uid) not in series:
            raise DataError(f"{path}: no series {opts.series_uid!r} in the slice store (it has {', '.join(names[:5])})")
        names = [str(opts.series_uid)]
    refs = []
    for name in names:
        rows = sorted(series[name], key=lambda r: r["slice"] if r["slice"] is not None else r["row"])
        refs.append(ScanRef(f"store:{path}:{name}", name, f"{path} series {name}", len(rows),
                            functools.partial(_load, st, name, rows), modality=st.modality))
    return refs, []


def _detect(probe: Probe) -> bool:
    return slice_store.is_store(probe.text) if probe.remote or probe.is_dir else False


FORMAT = register(Format(
    "store", "a slice store written by btd-jax prepare (local or gs://): crops for training; each series "
             "as a volume already in [0, 1]",
    _detect, scans=store_scans, slices=lambda path, opts: slice_store.SliceStore(path)))

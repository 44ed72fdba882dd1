"""The fastMRI format (``.h5``, read with h5py: the extra ``h5``): one scan per file, its
``reconstruction_rss`` volume (S, H, W) of MRI magnitudes, without geometry."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import List, Tuple

import numpy as np

from btd_jax.data.errors import DataError
from btd_jax.data.readers.formats import Format, Probe, ReadOptions, Scan, ScanRef, register
from btd_jax.data.records import Skipped
from btd_jax.runtime.errors import require

__all__ = ["FORMAT", "SUFFIXES", "KEY", "read_h5", "fastmri_scans"]

SUFFIXES = (".h5", ".hdf5")
KEY = "reconstruction_rss"


def read_h5(path: Path, key: str = KEY) -> Tuple[np.ndarray, dict]:
    """(the ``key`` volume (S, H, W) float32, the file's attributes)."""
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
    return data, attrs


def _load(path: Path) -> Scan:
    data, attrs = read_h5(path)
    patient = str(attrs.get("patient_id", "") or path.stem)
    records = [dict(patient=patient, series=path.stem, scanner=str(attrs.get("acquisition", "")), slice=k, frame=0,
                    path=str(path), pixel_spacing=None, affine=None) for k in range(len(data))]
    return Scan(data, records, modality="MR")


def fastmri_scans(path: Path, opts: ReadOptions) -> Tuple[List[ScanRef], List[Skipped]]:
    """One scan per ``.h5`` file (``path`` itself, or every one under the folder ``path``)."""
    files = [path] if path.is_file() else Probe(path).matching(SUFFIXES)
    return [ScanRef(f"fastmri:{f}", f.stem, str(f), 1, functools.partial(_load, f), modality="MR")
            for f in files], []


FORMAT = register(Format(
    "fastmri", f"fastMRI .h5 files: one scan per file, its {KEY} volume (MRI)",
    lambda p: p.any_suffix(SUFFIXES), extra="h5", scans=fastmri_scans, modality="MR"))

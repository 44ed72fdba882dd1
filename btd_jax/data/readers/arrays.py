"""NumPy arrays: ``.npy``/``.npz`` patches in [0, 1] (training, scoring) or a ``.npy`` volume (screening,
localisation).

What the array is depends on the command: ``score``/``train`` read it as patches (N, H, W) in [0, 1]
(:func:`load_patches`), ``screen``/``localize`` as one slice (H, W) or volume (S, H, W) of raw
values (HU for CT, scanner values for MRI; ``--units unit`` when already in [0, 1]).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

from btd_jax.data.errors import DataError
from btd_jax.data.readers.formats import Format, Probe, ReadOptions, Scan, ScanRef, register
from btd_jax.data.records import PatchSet, Skipped
from btd_jax.data.validate import check_patches, check_real, load_npy, load_npz

__all__ = ["FORMAT", "SUFFIXES", "validate_patches", "load_patches", "array_scans"]

SUFFIXES = (".npy", ".npz")
_NPZ_KEYS = ("patches", "images", "x", "arr_0")


def validate_patches(arr: np.ndarray, name: str = "patches") -> np.ndarray:
    """Check an array of patches and return it as (N, H, W) float32 in [0, 1].

    Accepts (N, H, W) or (N, H, W, 1) floating arrays of square patches, all finite, every value in [0, 1].
    """
    return np.ascontiguousarray(check_patches(arr, name)[..., 0])


def load_patches(path: str | os.PathLike, key: Optional[str] = None) -> np.ndarray:
    """Load patches from a ``.npy`` or ``.npz`` file -> (N, H, W) float32 in [0, 1].

    For ``.npz``: ``key`` if given, else the only array, else the first of 'patches', 'images',
    'x', 'arr_0' present.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        arr = load_npy(path)
    elif suffix == ".npz":
        z = load_npz(path)
        names = list(z)
        if key is None:
            key = names[0] if len(names) == 1 else next((k for k in _NPZ_KEYS if k in names), None)
        if key not in names:
            raise DataError(f"{path}: cannot tell which array holds the patches; arrays: {names} (pass key=...)")
        arr = z[key]
    else:
        raise DataError(f"{path}: unsupported patch file type {suffix!r}; use .npy or .npz")
    return validate_patches(arr, str(path))


def _patch_set(path: Path, opts: ReadOptions) -> PatchSet:
    arr = load_patches(path)
    return PatchSet(arr, {"index": np.arange(arr.shape[0])})


def _load_volume(path: Path) -> Scan:
    x = check_real(load_npy(path), str(path))
    single = x.ndim == 2
    x = x[None] if single else x
    records = [dict(patient=path.stem, series=path.stem, scanner="", slice=k, frame=0, path=str(path),
                    pixel_spacing=None, affine=None) for k in range(len(x))]
    return Scan(x, records, single=single)


def array_scans(path: Path, opts: ReadOptions) -> Tuple[List[ScanRef], List[Skipped]]:
    """A ``.npy`` slice (H, W) or volume (S, H, W) as one scan."""
    if path.suffix.lower() != ".npy":
        raise DataError(f"{path}: a {path.suffix} file holds patches; give a volume as .npy (S, H, W)")
    return [ScanRef(f"npy:{path}", path.stem, str(path), 1, lambda: _load_volume(path))], []


def _detect(probe: Probe) -> bool:
    return probe.is_file and probe.path.suffix.lower() in SUFFIXES


FORMAT = register(Format(
    "npy", ".npy/.npz arrays: patches (N, H, W) in [0, 1] for train/score; a .npy slice (H, W) or volume "
           "(S, H, W) of raw values (or [0, 1] with --units unit) for screen/localize",
    _detect, scans=array_scans, patches=_patch_set))

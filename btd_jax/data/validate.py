"""The one check of input arrays and the one way input files are read, used by every command and dataset.

:func:`check_shape` is cheap (shape and dtype only) so that memory-mapped inputs can be checked
without reading them; :func:`check_values` checks values (NaN/inf, the [0, 1] range) on any part,
e.g. one chunk at a time; :func:`check_patches` does both. :func:`check_real` checks raw slices and
volumes (HU, scanner values). :func:`load_npy`, :func:`load_npz` and :func:`read_csv` read input
files. Every problem raises one :class:`~btd_jax.data.errors.DataError` that starts with ``name``
(the file or argument), and every check refuses complex, object and other non-real arrays with the
same message::

    x = check_patches(arr, "train.npy", size=96, channels=1)   # (N, 96, 96, 1) float32
    vol = check_real(load_npy("scan.npy"), "scan.npy")          # (S, H, W) float32, finite
"""

from __future__ import annotations

import csv
import io
import os
import zipfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from btd_jax.data.errors import DataError

__all__ = ["check_shape", "check_values", "check_patches", "check_real", "check_dtype", "load_npy", "load_npz",
           "read_csv"]


def check_dtype(dtype: Any, name: str, *, allow_int: bool = True) -> None:
    """Refuses what is not a real number type: complex (one message everywhere), object, strings, bool."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.complexfloating):
        raise DataError(f"{name}: complex values (dtype {dtype}) are not image intensities; save real values "
                        "(e.g. the magnitude, np.abs)")
    ok = np.issubdtype(dtype, np.floating) or (allow_int and np.issubdtype(dtype, np.integer))
    if not ok:
        want = "floating" if not allow_int else "real numeric"
        raise DataError(f"{name}: expected {want} values, got dtype {dtype}")


def check_real(x: Any, name: str = "array", ndims: Sequence[int] = (2, 3)) -> np.ndarray:
    """A raw slice (H, W) or volume (S, H, W) in any real units -> float32, checked: a real numeric
    dtype, one of ``ndims``, not empty, finite."""
    if not hasattr(x, "dtype"):
        x = np.asarray(x)
    check_dtype(x.dtype, name)
    if x.ndim not in tuple(ndims):
        shapes = " or ".join({2: "a slice (H, W)", 3: "a volume (S, H, W)"}.get(d, f"a {d}-D array") for d in ndims)
        raise DataError(f"{name}: expected {shapes}, got shape {tuple(x.shape)}")
    if x.size == 0:
        raise DataError(f"{name}: empty array (shape {tuple(x.shape)})")
    x = np.asarray(x, dtype=np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        raise DataError(f"{name}: {int(bad.sum())} NaN or inf value(s)")
    return x


def _unreadable(path: str, e: BaseException, what: str = "array") -> DataError:
    text = str(e)
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError:
        magic = b""
    if magic != b"\x93NUMPY" and not magic.startswith(b"PK"):  # NumPy would try it as a pickle
        return DataError(f"{path}: cannot read {what}: not a NumPy file (no .npy or .npz header)")
    if "pickle" in text or "Python objects" in text:
        return DataError(f"{path}: cannot read {what}: it holds pickled Python objects, not plain numbers "
                         "(not loaded, for safety)")
    why = " ".join(text.split())[:200] or type(e).__name__
    return DataError(f"{path}: cannot read {what}: damaged or truncated ({why})")


def load_npy(path: str | os.PathLike, mmap: bool = False, what: str = "array") -> np.ndarray:
    """A ``.npy`` array (memory-mapped with ``mmap``); a missing, pickled, truncated or garbage file is
    one :class:`DataError` naming it (and ``what`` it should hold)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise _unreadable(path, e, what) from None
    if not isinstance(arr, np.ndarray):  # an .npz under an .npy name
        arr.close()
        raise DataError(f"{path}: is an .npz archive, not a single .npy array")
    return arr


def load_npz(path: str | os.PathLike) -> Dict[str, np.ndarray]:
    """Every array of an ``.npz`` (read now); errors as :func:`load_npy`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise DataError(f"{path}: is a single .npy array, not an .npz archive")
            return {k: z[k] for k in z.files}
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise _unreadable(path, e) from None


def read_csv(path: str | os.PathLike, strip: bool = True) -> Tuple[List[str], List[Dict[str, str]]]:
    """``(header, rows)`` of a UTF-8 CSV (a spreadsheet's byte-order mark is dropped); with ``strip``
    names and values lose surrounding spaces. Text that is not UTF-8 or not CSV is one
    :class:`DataError` naming the file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the CSV as UTF-8") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = list(reader.fieldnames or [])
        rows = list(reader)
    except csv.Error as e:
        raise DataError(f"{path}: not a readable CSV ({e})") from None
    if strip:
        header = [h.strip() for h in header]
        rows = [{k.strip(): (v or "").strip() for k, v in r.items() if isinstance(k, str) and k} for r in rows]
    return header, rows


def check_shape(x: Any, name: str = "patches", *, size: Optional[int] = None, channels: int = 1,
                owner: str = "the model", allow_int: bool = False) -> np.ndarray:
    """Checks shape and dtype; returns ``x`` as (N, H, W, C) without copying or reading values.

    Args:
      x: (N, H, W) or (N, H, W, C) array (anything with ``shape``/``dtype`` is not converted).
      name: how the error messages name ``x``.
      size: the required side H = W (None: any square side).
      channels: the required C; (N, H, W) input counts as one channel.
      owner: who requires ``size``/``channels``, for the messages (e.g. "the model (ct)").
      allow_int: accept integer dtypes too (their values must still lie in [0, 1]).
    """
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        x = np.asarray(x)
    if np.issubdtype(x.dtype, np.complexfloating):
        check_dtype(x.dtype, name)
    number = np.issubdtype(x.dtype, np.floating) or (allow_int and np.issubdtype(x.dtype, np.integer))
    if not number:
        raise DataError(f"{name}: expected floating patches in [0, 1], got dtype {x.dtype} "
                        "(scale integer images to [0, 1] first, e.g. / 255)")
    if x.ndim == 3:
        if channels != 1:
            raise DataError(f"{name}: shape {tuple(x.shape)} has no channel axis but {owner} expects "
                            f"{channels} channels")
        x = x[..., None]
    if x.ndim != 4:
        raise DataError(f"{name}: expected patches of shape (N, H, W) or (N, H, W, C), got shape {tuple(x.shape)}")
    n, h, w, c = x.shape
    if n == 0 or h == 0 or w == 0:
        raise DataError(f"{name}: empty, no patches (shape {tuple(x.shape)})")
    if h != w:
        raise DataError(f"{name}: patches must be square, got {h}x{w}")
    if size is not None and h != size:
        raise DataError(f"{name}: patches are {h}x{w} but {owner} expects {size}x{size}")
    if c != channels:
        raise DataError(f"{name}: patches have {c} channels but {owner} expects {channels}, "
                        f"got {tuple(x.shape)}")
    return x


def check_values(x: Any, name: str = "patches", *, offset: int = 0, clip: bool = False, tol: float = 0.0,
                 hint: str = "window CT (window_ct) or normalise MRI (normalize_mri) first") -> np.ndarray:
    """NaN/inf and [0, 1] checks of patches (first axis = patch); returns float32 (clipped when ``clip``).

    ``offset`` is the index of ``x[0]`` in the whole set (errors name the global index); ``tol``
    tolerates values up to ``tol`` outside [0, 1] (rounding in upstream preprocessing).
    """
    x = np.asarray(x, dtype=np.float32)
    flat = x.reshape(len(x), -1)
    finite = np.isfinite(flat).all(axis=1)
    if not finite.all():
        raise DataError(f"{name}: contains NaN or inf (first at index {offset + int(np.argmin(finite))})")
    if clip:
        return np.clip(x, 0.0, 1.0)
    lo, hi = flat.min(axis=1), flat.max(axis=1)
    bad = (lo < -tol) | (hi > 1.0 + tol)
    if bad.any():
        j = int(np.argmax(bad))
        raise DataError(f"{name}: values in [{lo[j]:.4g}, {hi[j]:.4g}] are outside [0, 1] "
                        f"(first at index {offset + j}); {hint}")
    return x


def check_patches(x: Any, name: str = "patches", *, size: Optional[int] = None, channels: int = 1,
                  owner: str = "the model", allow_int: bool = False, tol: float = 0.0) -> np.ndarray:
    """:func:`check_shape` then :func:`check_values` on all of ``x`` -> (N, H, W, C) float32."""
    x = check_shape(x, name, size=size, channels=channels, owner=owner, allow_int=allow_int)
    return check_values(x, name, tol=tol)

"""Atomic file writes: every output is written under a temporary name in its own folder and renamed
into place, so a crash or an error leaves either the whole file or nothing (never a truncated file
that a rerun would trust). The one helper every writer uses::

    with atomic_path("out/suspicion.nii.gz") as tmp:   # tmp keeps the suffixes (writers infer formats)
        nib.save(img, tmp)
    with atomic_open("out/scores.csv", newline="") as f:
        csv.writer(f).writerows(rows)
    save_npz("out/maps.npz", maps=maps)                 # the name as given: NumPy adds no suffix

Temporary names start with :data:`TMP_PREFIX` (hidden, and ignored when a folder is checked for
being empty).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from typing import IO, Any, Iterator

import numpy as np

__all__ = ["TMP_PREFIX", "atomic_path", "atomic_open", "write_bytes", "write_text", "write_json", "save_npy",
           "save_npz", "numpy_name"]

TMP_PREFIX = ".btd-tmp-"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path beside ``path`` with the same file name at its end (so writers that
    read the suffix, such as ``savefig`` or ``nibabel.save``, see it); renames it to ``path`` when
    the block ends without error, removes it otherwise. Creates the folder."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(3)}-{name}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kw: Any) -> Iterator[IO]:
    """``open(path, mode)`` through :func:`atomic_path` (text mode defaults to UTF-8)."""
    if "b" not in mode:
        kw.setdefault("encoding", "utf-8")
    with atomic_path(path) as tmp:
        with open(tmp, mode, **kw) as f:
            yield f


def write_bytes(path: str | os.PathLike, data: bytes) -> str:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return os.fspath(path)


def write_text(path: str | os.PathLike, text: str) -> str:
    with atomic_open(path) as f:
        f.write(text)
    return os.fspath(path)


def write_json(path: str | os.PathLike, obj: Any, **kw: Any) -> str:
    """``obj`` as JSON (``kw`` go to ``json.dump``, e.g. ``indent=1``)."""
    with atomic_open(path) as f:
        json.dump(obj, f, **kw)
    return os.fspath(path)


def numpy_name(path: str | os.PathLike, suffix: str) -> str:
    """The file name NumPy's ``save`` (``.npy``) / ``savez`` (``.npz``) actually writes for ``path``."""
    path = os.fspath(path)
    return path if path.endswith(suffix) else path + suffix


def save_npy(path: str | os.PathLike, arr: Any) -> str:
    """``np.save`` to exactly ``path`` (no suffix added); returns it."""
    with atomic_open(path, "wb") as f:
        np.save(f, np.asarray(arr), allow_pickle=False)
    return os.fspath(path)


def save_npz(path: str | os.PathLike, compressed: bool = True, **arrays: Any) -> str:
    """``np.savez[_compressed]`` to exactly ``path`` (no suffix added); returns it."""
    with atomic_open(path, "wb") as f:
        (np.savez_compressed if compressed else np.savez)(f, **arrays)
    return os.fspath(path)

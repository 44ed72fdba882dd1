"""Folders of grey images (PNG/JPEG/TIFF), as the authors' MRI trainer reads them.

Their trainer resizes the shorter side to the crop size (bilinear), centre-crops and scales to
[0, 1] (8-bit / 255). Read as patches (``train``/``score``) every image is one such crop; written
into a slice store (``prepare``) with ``resize='authors'`` the same, with ``resize='none'`` the whole
image for random crops. The patient is the first folder below the input folder.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import List, Sequence

import numpy as np

from btd_jax.data import preprocess
from btd_jax.data.errors import DataError
from btd_jax.data.readers.formats import Format, Probe, ReadOptions, StoreInput, register
from btd_jax.data.records import PatchSet, Skipped
from btd_jax.data.store.writer import SliceBatch, Unit

__all__ = ["FORMAT", "IMAGE_SUFFIXES", "image_files", "read_image", "image_units", "image_patches"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def image_files(folder: str | os.PathLike) -> List[Path]:
    """Grey image files under ``folder`` (recursive, sorted, hidden entries skipped)."""
    return Probe(folder).matching(IMAGE_SUFFIXES)


def read_image(path: Path, size: int | None = None) -> np.ndarray:
    """A grey image -> (H, W) float32 in [0, 1]; with ``size``, the authors' MRI transform
    (shorter side resized to ``size``, bilinear, then a centre crop to ``size x size``)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("1", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "La", "PA"):
                im = im.convert("L")  # grey expected; colour is averaged to grey (ITU-R 601)
            scale = 255.0
            if im.mode != "L":  # 16-bit or float: resample in float
                arr = np.asarray(im)
                scale = 1.0
                if np.issubdtype(arr.dtype, np.integer):
                    scale = 65535.0 if arr.max() <= 65535 else float(np.iinfo(arr.dtype).max)
                im = Image.fromarray(arr.astype(np.float32))
            if size is not None:
                w, h = im.size
                short, long = (w, h) if w <= h else (h, w)
                new = (size, int(size * long / short))
                im = im.resize((new[0], new[1]) if w <= h else (new[1], new[0]),
                               Image.Resampling.BILINEAR)
            arr = np.asarray(im, np.float32) / np.float32(scale)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from None
    if size is not None:
        h, w = arr.shape
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
        arr = arr[top:top + size, left:left + size]
    if not np.isfinite(arr).all():
        raise DataError(f"{path}: NaN or inf pixel values")
    if arr.min() < 0 or arr.max() > 1:
        raise DataError(f"{path}: float image values outside [0, 1] "
                        f"([{arr.min():.4g}, {arr.max():.4g}])")
    return arr


def image_units(folder: str | os.PathLike, size: int, resize: str = "authors",
                shard_rows: int = 256, strict: bool = True) -> List[Unit]:
    """Store units over an image folder; the patient is the first folder below ``folder``."""
    if resize not in ("authors", "none"):
        raise DataError(f"resize must be 'authors' or 'none', got {resize!r}")
    folder = Path(folder)
    files = image_files(folder)
    if not files:
        raise DataError(f"{folder}: no {'/'.join(IMAGE_SUFFIXES)} images found")
    units = []
    for lo in range(0, len(files), shard_rows):
        chunk = files[lo:lo + shard_rows]
        crc = zlib.crc32("\n".join(map(str, chunk)).encode())
        units.append(Unit(f"images:{lo}-{lo + len(chunk) - 1}:{crc:08x}", len(chunk),
                          lambda chunk=chunk: _load_images(folder, chunk, size, resize, strict)))
    return units


def _load_images(folder: Path, files: Sequence[Path], size: int, resize: str,
                 strict: bool) -> SliceBatch:
    out = SliceBatch([], [])
    for p in files:
        try:
            img = read_image(p, size if resize == "authors" else None)
        except DataError as e:
            if strict:
                raise
            out.skipped.append(Skipped(str(p), str(e).removeprefix(f"{p}: ")))
            continue
        out.slices.append(img)
        out.records.append(dict(_record(folder, p), modality="MR", slice=None, frame=0, pixel_spacing=None,
                                affine=None, weight=1))
    return out


def _record(folder: Path, p: Path) -> dict:
    rel = p.relative_to(folder)
    return dict(patient=rel.parts[0] if len(rel.parts) > 1 else rel.stem, series=str(rel.parent), scanner="",
                path=str(rel))


def image_patches(folder: Path, opts: ReadOptions) -> PatchSet:
    """Every image as one patch of the authors' MRI transform (``opts.size``, default 128)."""
    size = int(opts.size or preprocess.PATCH_SIZE[preprocess.canonical_modality(opts.modality or "MR")])
    files = image_files(folder)
    if not files:
        raise DataError(f"{folder}: no {'/'.join(IMAGE_SUFFIXES)} images found")
    patches, rows, skipped = [], [], []
    for p in files:
        try:
            patches.append(read_image(p, size))
        except DataError as e:
            if opts.strict:
                raise
            skipped.append(Skipped(str(p), str(e).removeprefix(f"{p}: ")))
            continue
        rows.append(_record(folder, p))
    if not patches:
        raise DataError(f"{folder}: no readable image; first: {skipped[0].item}: {skipped[0].reason}")
    cols = {c: np.array([r[c] for r in rows]) for c in ("patient", "series", "path")}
    return PatchSet(np.stack(patches).astype(np.float32), cols, skipped)


def _store_input(folder: Path, opts: ReadOptions) -> StoreInput:
    mod = preprocess.canonical_modality(opts.modality or "MR")
    size = int(opts.size or preprocess.PATCH_SIZE[mod])
    return StoreInput(image_units(folder, size, opts.resize, opts.shard_rows, opts.strict), mod,
                      options={"resize": opts.resize})


FORMAT = register(Format(
    "images", "a folder of grey PNG/JPEG/TIFF images (the authors' MRI trainer input): shorter side resized "
              "to the crop size, centre crop, 8-bit / 255 (prepare --resize none keeps whole images)",
    lambda p: p.only_suffix(IMAGE_SUFFIXES), patches=image_patches, units=_store_input, modality="MR"))

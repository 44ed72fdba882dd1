"""A slice store from any input format (``btd-jax prepare``): the format's units, or one unit per scan.

Formats and what they are read as: :mod:`btd_jax.data.readers` (``readers.markdown_table()``). Values
go to [0, 1] with the paper's preprocessing: CT through the HU window, MRI volumes standardised per
volume (:func:`preprocess.normalize_mri`), MRI images as stored (8-bit / 255).

    summary = sources.prepare("LIDC-IDRI/", "stores/lidc", modality="CT")
"""

from __future__ import annotations

import os
from pathlib import Path

from btd_jax.data import preprocess, readers
from btd_jax.data.readers import ReadOptions, open_slices
from btd_jax.data.store.writer import write_store

__all__ = ["prepare", "open_slices"]


def prepare(inp: str | os.PathLike, out: str | os.PathLike, fmt: str = "auto",
            modality: str | None = None, size: int | None = None, dtype: str = "float16",
            resize: str = "authors", shard_rows: int = 256, strict: bool = True,
            progress: bool = True, overwrite: bool = False) -> dict:
    """Write the slice store ``out`` from ``inp`` (resuming an interrupted run); returns the
    store summary. ``fmt``: a name of :data:`btd_jax.data.readers.FORMATS` or 'auto' (detected);
    ``size``: crop side (default the paper's, 96 CT / 128 MRI); ``resize``: for image folders,
    'authors' (their MRI transform) or 'none'; ``overwrite``: start again a store that ``out`` holds
    from other input or options."""
    f = readers.resolve(inp, fmt)
    opts = ReadOptions(modality=modality, strict=strict, size=size, resize=resize, shard_rows=shard_rows)
    given = readers.store_input(inp, f, opts)
    options = {"format": f.name, "input": os.fspath(Path(inp).resolve()), "strict": strict, **given.options}
    size = int(size or preprocess.PATCH_SIZE[given.modality])
    return write_store(out, given.units, modality=given.modality, size=size, dtype=dtype, locations=given.locations,
                       options=options, skipped=given.skipped, strict=strict, progress=progress,
                       overwrite=overwrite)

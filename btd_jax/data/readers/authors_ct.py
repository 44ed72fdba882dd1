"""The authors' CT training folder (``train_csv.csv`` naming ``.npy`` slices in HU): crops for training
read directly, or store units with their one shared crop-centre list (:mod:`btd_jax.data.crops.authors_ct`)."""

from __future__ import annotations

from pathlib import Path

from btd_jax.data import preprocess
from btd_jax.data.crops import authors_ct
from btd_jax.data.readers.formats import Format, Probe, ReadOptions, StoreInput, register

__all__ = ["FORMAT"]


def _store_input(path: Path, opts: ReadOptions) -> StoreInput:
    layout = authors_ct.read_ct_layout(path)
    return StoreInput(authors_ct.ct_units(layout, opts.shard_rows, opts.strict),
                      preprocess.canonical_modality(opts.modality or "CT"), locations=layout.locations,
                      options={"rows_without_location": layout.no_location})


def _slices(path: str, opts: ReadOptions) -> authors_ct.CTFolder:
    return authors_ct.CTFolder(path, opts.size or preprocess.PATCH_SIZE["CT"])


def _detect(probe: Probe) -> bool:
    if probe.is_file:
        return probe.path.name == authors_ct.CT_CSV
    return probe.is_dir and (probe.path / authors_ct.CT_CSV).is_file()


FORMAT = register(Format(
    "authors_ct", f"the authors' CT training folder ({authors_ct.CT_CSV}: unix_path, x, y; slices .npy in HU): "
                  "their loader, one crop-centre list of every integer (y, x) of the CSV",
    _detect, units=_store_input, slices=_slices, modality="CT"))

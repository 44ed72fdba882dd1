"""Medical data: input formats, DICOM reading, the paper's preprocessing, datasets. Knows nothing of models.

    from btd_jax import data
    series = data.load_series("scan_folder/")             # (S, H, W) float32, HU for CT
    img01 = data.window_ct(series.pixels)                 # CT: clip [-700, 2000] HU -> [0, 1]
    patch = data.extract_patch(img01[0], x=200, y=180, size=96)
    vol = data.read_volume("scan.nii.gz", modality="CT")  # any format with volumes -> [0, 1] + geometry
    ps = data.load_data("patches.npy")                    # any input as patches (data.readers)
    ts = data.load_testset("testsets/", "CT", "Inject")   # authors' layout -> patches + labels
    data.prepare("LIDC-IDRI/", "stores/lidc")              # slice store for training at scale
    st = data.SliceStore("stores/lidc")                    # memory-mapped .npy shards + manifest

Subpackages by role:

* :mod:`btd_jax.data.readers` -- the input formats, one table (``readers.markdown_table()``), one module each;
* :mod:`btd_jax.data.store` -- the slice store: its format and reading, resumable writing, ``prepare``;
* :mod:`btd_jax.data.crops` -- fresh training crops from slices, their host loader, the authors' CT folder;
* :mod:`btd_jax.data.testsets` -- the authors' published test-set layout, read and written.

The modules at this level are what all of them use: errors, records, input checks, preprocessing,
DICOM, splits and :mod:`~btd_jax.data.datasets` (any input as patches). Simulated tampering and the
demo's data serve the attacks: :mod:`btd_jax.attacks.tamper`, :mod:`btd_jax.attacks.demo_data`.
"""

import importlib

from btd_jax.data.errors import DataError, MissingInput
from btd_jax.data.preprocess import (
    extract_patch, extract_patches, normalize_mri, random_locations, resample, to_unit_range,
    window_ct,
)
from btd_jax.data.dicom import Series, list_series, load_all_series, load_series, read_slice
from btd_jax.data.records import PatchSet, Skipped, TestSet
from btd_jax.data.splits import split_patients
from btd_jax.data.testsets.layout import load_testset, write_testset

# The readers pull in the slice store's modules (etils, for cloud paths): loaded when first used.
_LAZY = {"SliceStore": "store.slice_store", "prepare": "store.sources", "open_slices": "readers",
         "SliceSet": "crops.sampling", "split_slices": "crops.sampling", "load_data": "datasets",
         "load_patches": "readers", "patches_from_dicom": "datasets", "write_manifest": "datasets",
         "read_volume": "readers"}

__all__ = [
    "DataError", "MissingInput", "window_ct", "normalize_mri", "to_unit_range", "extract_patch", "extract_patches",
    "random_locations", "resample", "PatchSet", "TestSet", "Skipped", "load_testset", "write_testset",
    "split_patients", "Series", "load_series", "load_all_series", "list_series", "read_slice", *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

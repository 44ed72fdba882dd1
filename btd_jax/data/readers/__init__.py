"""Input formats: one table (:mod:`~btd_jax.data.readers.formats`), one reader module per format, and the
generic paths every command reads through.

    fmt = readers.detect("scan_folder/")                          # the Format entry (fmt.name == "dicom")
    vol = readers.read_volume("scan.nii.gz", modality="CT")       # screen, localize: (S, H, W) in [0, 1] + geometry
    ps = readers.read_patches("patches.npy")                      # train, score: PatchSet (TestSet for test sets)
    ps = readers.located_patches("points.csv", "scans/", size=96) # score --locations
    src = readers.open_slices("stores/lidc")                      # train: a crop source, or None
    print(readers.markdown_table())                               # the docs' format table

Formats, in detection order: ``store``, ``authors_ct``, ``testset``, ``fastmri``, ``nifti``, ``npy``,
``images``, then ``dicom`` (whatever no other format claims). To add one, write a module that calls
:func:`register` with its :class:`Format` and import it below (before ``dicom_scans``).
"""

from btd_jax.data.readers.formats import (
    FORMATS, READERS, Format, Probe, ReadOptions, Scan, ScanRef, StoreInput, detect, get, help_text, markdown_table,
    names, register, resolve,
)
from btd_jax.data.readers.geometry import LPS_TO_RAS, Geometry, geometry_from_affines, slice_affine
from btd_jax.data.readers.volumes import Volume, check_volume, read_volume, scans_of, store_input, unit_range
from btd_jax.data.readers.patches import PATCH_COLUMNS, located_patches, random_patches, read_patches

# The built-in formats register in this order, which is the order detection tries them in.
from btd_jax.data.readers import slice_store, authors_ct, testset, fastmri, nifti, arrays, images  # noqa: E402,I001
from btd_jax.data.readers import dicom_scans  # noqa: E402  (the fallback: last)
from btd_jax.data.readers.arrays import load_patches, validate_patches  # noqa: E402
from btd_jax.data.readers.dicom_scans import geometry_from_series  # noqa: E402
from btd_jax.data.readers.nifti import read_nifti  # noqa: E402

__all__ = [
    "FORMATS", "READERS", "Format", "Probe", "ReadOptions", "Scan", "ScanRef", "StoreInput", "register", "get", "names",
    "detect", "resolve", "help_text", "markdown_table", "Geometry", "LPS_TO_RAS", "slice_affine",
    "geometry_from_affines", "geometry_from_series", "Volume", "check_volume", "read_volume", "read_nifti",
    "scans_of", "store_input", "unit_range", "PATCH_COLUMNS", "read_patches", "random_patches", "located_patches",
    "load_patches", "validate_patches", "open_slices",
]


def open_slices(path: str, size: int | None = None):
    """A crop source for training when ``path``'s format offers one (a slice store, local or remote;
    the authors' CT folder, read directly); None for any other input."""
    fmt = detect(path)
    return None if fmt.slices is None else fmt.slices(path, ReadOptions(size=size))

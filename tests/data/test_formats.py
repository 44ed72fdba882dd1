"""The input-format registry: every built-in format is detected from what the path holds, the table
refuses bad entries, and the docs' format table is the registry's."""

import glob
import os

import numpy as np
import pytest

from _dicom_files import shipped, write_ct_series
from _layouts import write_authors_ct, write_pngs
from btd_jax.data import DataError, MissingInput, readers
from btd_jax.data.store import sources
from btd_jax.data.testsets.layout import write_testset

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def test_builtin_formats_in_detection_order():
    assert readers.names() == ("store", "authors_ct", "testset", "fastmri", "nifti", "npy", "images", "dicom")
    assert readers.get("dicom").fallback and not any(readers.get(n).fallback for n in readers.names()[:-1])
    assert readers.names("screen") == ("store", "fastmri", "nifti", "npy", "dicom")
    assert readers.names("prepare") == ("store", "authors_ct", "fastmri", "nifti", "npy", "images", "dicom")
    assert set(readers.names("train")) == set(readers.names())  # every format trains, as crops or as patches
    with pytest.raises(DataError, match="unknown input format 'nope'; expected auto or one of store"):
        readers.get("nope")


def test_detects_dicom_npy_store_and_the_authors_layouts(tmp_path):
    write_ct_series(tmp_path / "dcm", [0, 1])
    assert readers.detect(tmp_path / "dcm").name == "dicom"
    assert readers.detect(shipped("CT_small.dcm")).name == "dicom"
    np.save(tmp_path / "p.npy", np.zeros((2, 4, 4), np.float32))
    np.savez(tmp_path / "p.npz", patches=np.zeros((2, 4, 4), np.float32))
    assert readers.detect(tmp_path / "p.npy").name == readers.detect(tmp_path / "p.npz").name == "npy"
    write_authors_ct(tmp_path / "ct", patients=1, slices=2, h=24, w=24)
    assert readers.detect(tmp_path / "ct").name == readers.detect(tmp_path / "ct" / "train_csv.csv").name == "authors_ct"
    sources.prepare(tmp_path / "ct", tmp_path / "store", size=16, progress=False)
    assert readers.detect(tmp_path / "store").name == "store"
    write_pngs(tmp_path / "png", patients=1, per=2)
    (tmp_path / "png" / "README.txt").write_text("notes beside the images do not change the format")
    assert readers.detect(tmp_path / "png").name == "images"
    img = np.zeros((24, 24), np.float32)
    write_testset(tmp_path / "ts", "CT", "injection", [dict(image=img, x=12, y=12, type="TM")])
    assert readers.detect(tmp_path / "ts").name == "testset"  # its .npy images and CSV are no image folder
    write_testset(tmp_path / "mri_ts", "MRI", "removal", [dict(image=img, x=12, y=12, type="TB")], image_format="png")
    assert readers.detect(tmp_path / "mri_ts").name == "testset"  # PNGs + CSV, yet not an image folder
    with pytest.raises(MissingInput, match="nowhere: no such file or folder"):
        readers.detect(tmp_path / "nowhere")


def test_detects_nifti_and_fastmri(tmp_path):
    nib = pytest.importorskip("nibabel")
    h5py = pytest.importorskip("h5py")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)), tmp_path / "a.nii.gz")
    assert readers.detect(tmp_path / "a.nii.gz").name == "nifti"
    (tmp_path / "vols").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 2), np.float32), np.eye(4)), tmp_path / "vols" / "b.nii")
    assert readers.detect(tmp_path / "vols").name == "nifti"
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f["reconstruction_rss"] = np.ones((1, 4, 4), np.float32)
    assert readers.detect(tmp_path / "f.h5").name == "fastmri"


def test_register_refuses_taken_names_and_entries_without_readers():
    with pytest.raises(ValueError, match="'dicom' is already registered"):
        readers.register(readers.Format("dicom", "again", lambda p: False, scans=lambda p, o: ([], [])))
    with pytest.raises(ValueError, match="offers no reader"):
        readers.register(readers.Format("empty", "nothing", lambda p: False))
    assert "empty" not in readers.FORMATS


def test_a_format_that_gives_no_volumes_says_so(tmp_path):
    write_pngs(tmp_path / "png", patients=1, per=1)
    with pytest.raises(DataError, match="images input holds no volumes .*patches, units"):
        readers.read_volume(tmp_path / "png", "MRI")
    write_authors_ct(tmp_path / "ct", patients=1, slices=1, h=24, w=24)
    with pytest.raises(DataError, match="authors_ct input gives no patches .*btd-jax prepare"):
        readers.read_patches(tmp_path / "ct")


def test_docs_format_table_is_the_registry():
    """The docs' input-format table is readers.markdown_table(): pasted in the README, or generated into a
    docs page by the ``formats`` marker (docs/hooks.py)."""
    table, marker = readers.markdown_table(), "<!-- generated: formats -->"
    docs = [os.path.join(ROOT, "README.md")] + glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)
    texts = [open(p, encoding="utf-8").read() for p in docs]
    assert any(table in t or marker in t for t in texts), \
        "paste readers.markdown_table() into the README's input-format table, or put the formats marker in a docs page"

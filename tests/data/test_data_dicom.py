"""btd_jax.data.dicom on the real files shipped by pydicom and pydicom-data (incl. broken ones)."""

import shutil

import numpy as np
import pytest

from btd_jax.data import DataError, dicom
from _dicom_files import shipped, stored_hu, write_ct_series


def test_ct_small_in_hounsfield_units_with_metadata():
    s = dicom.read_slice(shipped("CT_small.dcm"))
    assert s.pixels.shape == (1, 128, 128) and s.pixels.dtype == np.float32
    np.testing.assert_array_equal(s.pixels[0], stored_hu(shipped("CT_small.dcm")))
    # RescaleIntercept -1024, slope 1: air about -1000 HU at the corner
    assert s.pixels.min() == -896.0 and s.pixels.max() == 1167.0
    assert s.modality == "CT" and s.patient_id == "1CT1"
    assert s.scanner == "GE MEDICAL SYSTEMS RHAPSODE"
    assert s.pixel_spacing == pytest.approx((0.661468, 0.661468))
    assert s.slice_thickness == pytest.approx(5.0)
    np.testing.assert_allclose(s.positions, [[-158.135803, -179.035797, -75.699997]])


def test_load_series_on_a_file_equals_read_slice():
    s = dicom.load_series(shipped("MR_small.dcm"))
    assert s.pixels.shape == (1, 64, 64) and s.modality == "MR"
    assert s.scanner == "TOSHIBA_MEC MRT50H1" and s.patient_id == "4MR1"
    np.testing.assert_array_equal(s.pixels[0], dicom.read_slice(shipped("MR_small.dcm")).pixels[0])
    assert len(s) == 1 and s.frames == (0,)


def test_rle_and_big_endian_decode_to_the_same_values():
    ref = dicom.read_slice(shipped("MR_small.dcm")).pixels
    for name in ("MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm"):
        np.testing.assert_array_equal(dicom.read_slice(shipped(name)).pixels, ref)


def test_multiframe_mri():
    s = dicom.load_series(shipped("emri_small.dcm"))
    import pydicom
    raw = pydicom.dcmread(shipped("emri_small.dcm")).pixel_array
    assert s.pixels.shape == (10, 64, 64) and s.frames == tuple(range(10))
    np.testing.assert_array_equal(s.pixels, raw.astype(np.float32))
    assert len(set(s.paths)) == 1


def test_enhanced_ct_rescale_from_functional_groups():
    import pydicom
    path = shipped("eCT_Supplemental.dcm")
    s = dicom.load_series(path)
    raw = pydicom.dcmread(path).pixel_array.astype(np.float32)
    assert s.pixels.shape == (2, 512, 512)
    # RescaleIntercept -1024 lives only in SharedFunctionalGroupsSequence
    np.testing.assert_array_equal(s.pixels, raw[list(s.frames)] - 1024.0)
    # frames ordered along the slice normal (here -z: orientation row cosine is -x)
    assert np.all(np.diff(s.locations) >= 0)
    assert s.pixel_spacing == pytest.approx((0.388672, 0.388672))
    assert s.slice_thickness == 10.0 and s.locations is not None


def test_rescale_slope_applied_for_mr():
    s = dicom.read_slice(shipped("MR2_UNCR.dcm"))
    import pydicom
    ds = pydicom.dcmread(shipped("MR2_UNCR.dcm"))
    expect = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(s.pixels[0], expect, rtol=1e-6)


def test_folder_sorted_by_position_not_instance_or_name(tmp_path):
    write_ct_series(tmp_path, [3, 0, 2, 1])
    s = dicom.load_series(tmp_path)
    assert s.pixels.shape == (4, 128, 128)
    np.testing.assert_array_equal(s.pixels[:, 0, 0], np.array([0, 1, 2, 3]) - 1024.0)
    np.testing.assert_allclose(s.locations, [0, 5, 10, 15])
    assert [p.split("/")[-1] for p in s.paths] == ["f1.dcm", "f3.dcm", "f2.dcm", "f0.dcm"]


def test_folder_falls_back_to_instance_number(tmp_path):
    write_ct_series(tmp_path, [2, 0, 1], drop_position=True)
    s = dicom.load_series(tmp_path)
    np.testing.assert_array_equal(s.pixels[:, 0, 0], np.array([0, 1, 2]) - 1024.0)
    assert s.locations is None


def test_nested_folders_and_sidecar_files(tmp_path):
    write_ct_series(tmp_path / "a" / "b", [1, 0])
    (tmp_path / "README.txt").write_text("not dicom")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x01")
    assert dicom.load_series(tmp_path).pixels.shape == (2, 128, 128)


def test_several_series_need_a_choice(tmp_path):
    write_ct_series(tmp_path, [0, 1], name="a", series_uid="1.2.3.1")
    write_ct_series(tmp_path, [0, 1, 2], name="b", series_uid="1.2.3.2")
    with pytest.raises(DataError, match=r"2 series in one folder.*series_uid=.*1\.2\.3\.1.*1\.2\.3\.2"):
        dicom.load_series(tmp_path)
    infos = {i.series_uid: i for i in dicom.list_series(tmp_path)}
    assert set(infos) == {"1.2.3.1", "1.2.3.2"} and infos["1.2.3.2"].n_files == 3
    assert infos["1.2.3.1"].modality == "CT" and infos["1.2.3.1"].scanner.startswith("GE")
    assert dicom.load_series(tmp_path, series_uid="1.2.3.2").pixels.shape[0] == 3
    with pytest.raises(DataError, match="no image series with SeriesInstanceUID 9.9"):
        dicom.load_series(tmp_path, series_uid="9.9")
    all_series, skipped = dicom.load_all_series(tmp_path)
    assert sorted(len(s) for s in all_series) == [2, 3] and skipped == []


def test_mixed_modalities_in_one_folder(tmp_path):
    write_ct_series(tmp_path, [0, 1])
    shutil.copy(shipped("MR_small.dcm"), tmp_path / "mr.dcm")
    with pytest.raises(DataError, match="mixed modalities CT/MR"):
        dicom.load_series(tmp_path)
    with pytest.raises(DataError, match="mixed modalities in one folder"):
        dicom.load_all_series(tmp_path)
    assert dicom.load_series(tmp_path, modality="CT").pixels.shape == (2, 128, 128)
    assert dicom.load_series(tmp_path, modality="MRI").modality == "MR"
    series, skipped = dicom.load_all_series(tmp_path, strict=False)
    assert [s.modality for s in series] == ["CT"]
    assert [(sk.item.split("/")[-1], "differs" in sk.reason) for sk in skipped] == [("mr.dcm", True)]


def test_mixed_modalities_inside_one_series(tmp_path):
    paths = write_ct_series(tmp_path, [0, 1, 2])
    import pydicom
    ds = pydicom.dcmread(paths[0])
    ds.Modality = "MR"
    ds.save_as(paths[0])
    with pytest.raises(DataError, match="mixed modalities in one series"):
        dicom.load_series(tmp_path, series_uid=ds.SeriesInstanceUID)


@pytest.mark.parametrize("name,match", [
    ("rtstruct.dcm", "not an image: a RTSTRUCT object"),
    ("test-SR.dcm", "not an image: a SR object"),
    ("rtplan.dcm", "not an image: a RTPLAN object"),
    ("liver_1frame.dcm", "not an image: a SEG object"),
    ("MR_truncated.dcm", "corrupt or truncated pixel data"),
    ("emri_small_jpeg_2k_lossless_too_short.dcm", "truncated DICOM file"),
    ("no_meta.dcm", "not a DICOM file"),
    ("ExplVR_BigEnd.dcm", r"colour image \(SamplesPerPixel=3"),
])
def test_bad_files_raise_one_error_naming_the_file(name, match):
    path = shipped(name)
    with pytest.raises(DataError, match=match) as e:
        dicom.read_slice(path)
    assert str(e.value).startswith(path)


def test_truncated_copies(tmp_path):
    data = open(shipped("CT_small.dcm"), "rb").read()
    for n, cut in enumerate((100, 500, 1000, len(data) // 2, len(data) - 3000)):
        p = tmp_path / f"cut{n}.dcm"
        p.write_bytes(data[:cut])
        with pytest.raises(DataError, match="truncated|corrupt|not a DICOM") as e:
            dicom.read_slice(p)
        assert str(p) in str(e.value)


def test_random_bytes_and_empty_file(tmp_path):
    (tmp_path / "junk.dcm").write_bytes(np.random.default_rng(0).bytes(2000))
    (tmp_path / "empty.dcm").write_bytes(b"")
    for name in ("junk.dcm", "empty.dcm"):
        with pytest.raises(DataError, match=name):
            dicom.read_slice(tmp_path / name)


def test_missing_pixel_data(tmp_path):
    import pydicom
    ds = pydicom.dcmread(shipped("CT_small.dcm"))
    del ds.PixelData
    ds.save_as(tmp_path / "nopix.dcm")
    with pytest.raises(DataError, match="nopix.dcm: no pixel data"):
        dicom.read_slice(tmp_path / "nopix.dcm")


@pytest.mark.parametrize("name,package", [
    ("JPEG-LL.dcm", "pylibjpeg-libjpeg"),
    ("MR_small_jpeg_ls_lossless.dcm", "pylibjpeg-libjpeg"),
    ("JPGExtended.dcm", "pylibjpeg-libjpeg"),
])
def test_compressed_without_decoder_names_the_package(name, package):
    import pydicom
    ds = pydicom.dcmread(shipped(name))
    try:
        ds.pixel_array
        pytest.skip("a decoder for this transfer syntax is installed here")
    except Exception:
        pass
    with pytest.raises(DataError, match=f"cannot decode pixel data compressed as .*{package}"):
        dicom.read_slice(shipped(name))


def test_decodable_compressed_matches_uncompressed():
    # JPEG 2000 lossless through Pillow/openjpeg when available; otherwise the hint is given.
    ref = dicom.read_slice(shipped("MR_small.dcm")).pixels
    try:
        got = dicom.read_slice(shipped("MR_small_jp2klossless.dcm")).pixels
    except DataError as e:
        assert "pylibjpeg-openjpeg" in str(e)
        return
    np.testing.assert_array_equal(got, ref)


def test_decoder_hint_table():
    assert "pylibjpeg-openjpeg" in dicom.decoder_hint("1.2.840.10008.1.2.4.90")
    assert "pyjpegls" in dicom.decoder_hint("1.2.840.10008.1.2.4.80")
    assert "python-gdcm" in dicom.decoder_hint("1.2.840.10008.1.2.4.50")


def test_folder_strict_vs_lenient(tmp_path):
    write_ct_series(tmp_path, [0, 1, 2])
    shutil.copy(shipped("rtstruct.dcm"), tmp_path / "rt.dcm")
    data = open(shipped("CT_small.dcm"), "rb").read()
    (tmp_path / "trunc.dcm").write_bytes(data[:500])
    with pytest.raises(DataError, match="strict=False") as e:
        dicom.load_series(tmp_path)
    assert "rt.dcm" in str(e.value) or "trunc.dcm" in str(e.value)
    s = dicom.load_series(tmp_path, strict=False)
    assert s.pixels.shape == (3, 128, 128)
    reasons = {sk.item.split("/")[-1]: sk.reason for sk in s.skipped}
    assert set(reasons) == {"rt.dcm", "trunc.dcm"}
    assert "RTSTRUCT" in reasons["rt.dcm"] and "truncated file?" in reasons["trunc.dcm"]


def test_lenient_skips_slices_of_another_size(tmp_path):
    paths = write_ct_series(tmp_path, [0, 1, 2])
    import pydicom
    ds = pydicom.dcmread(paths[1])
    small = ds.pixel_array[:64, :64].copy()
    ds.Rows, ds.Columns, ds.PixelData = 64, 64, small.tobytes()
    ds.save_as(paths[1])
    with pytest.raises(DataError, match=r"f1.dcm: slice size \(64, 64\) differs"):
        dicom.load_series(tmp_path)
    s = dicom.load_series(tmp_path, strict=False)
    assert s.pixels.shape == (2, 128, 128) and s.skipped[0].item.endswith("f1.dcm")


def test_empty_and_missing_folder(tmp_path):
    with pytest.raises(DataError, match="empty folder"):
        dicom.load_series(tmp_path)
    with pytest.raises(DataError, match="no such file or folder"):
        dicom.load_series(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="empty folder"):
        dicom.list_series(tmp_path)


def test_folder_of_only_non_images(tmp_path):
    shutil.copy(shipped("rtstruct.dcm"), tmp_path / "rt.dcm")
    shutil.copy(shipped("test-SR.dcm"), tmp_path / "sr.dcm")
    with pytest.raises(DataError, match="no usable DICOM image; first skipped"):
        dicom.load_series(tmp_path, strict=False)
    assert sorted(i.modality for i in dicom.list_series(tmp_path)) == ["RTSTRUCT", "SR"]


def test_non_finite_float_pixels(tmp_path):
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian
    ds = pydicom.dcmread(shipped("MR_small.dcm"))
    arr = ds.pixel_array.astype(np.float32)
    arr[3, 4] = np.nan
    del ds.PixelData
    ds.BitsAllocated, ds.BitsStored = 32, 32
    ds.FloatPixelData = arr.tobytes()
    for k in ("HighBit", "PixelRepresentation"):
        if k in ds:
            delattr(ds, k)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(tmp_path / "nan.dcm")
    with pytest.raises(DataError, match="nan.dcm: pixel data contains NaN or inf"):
        dicom.read_slice(tmp_path / "nan.dcm")

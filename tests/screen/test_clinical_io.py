"""Outputs clinical tools open: NIfTI affine and DICOM references round-trip; the screen command."""

import json

import numpy as np
import pytest

from btd_jax import checkpoints, cli, clinical_io, configs
from btd_jax.data import readers
from _volumes import quick_params, write_series

CFG = configs.get("tiny")


@pytest.fixture()
def series(tmp_path):
    paths, uids = write_series(tmp_path / "series", [4.0, 6.5, 9.0])
    return readers.read_volume(tmp_path / "series", "CT"), paths, uids


def test_nifti_affine_round_trip(tmp_path, series):
    nib = pytest.importorskip("nibabel")
    vol, _, _ = series
    sus = np.random.default_rng(0).uniform(size=vol.pixels.shape).astype(np.float32)
    path = clinical_io.write_nifti(tmp_path / "s.nii.gz", sus, vol.geometry)
    back, affine_lps = readers.read_nifti(path)
    np.testing.assert_array_equal(back, sus)
    np.testing.assert_allclose(affine_lps, vol.geometry.affine, atol=1e-6)
    img = nib.load(path)  # what a viewer sees: voxel (col, row, slice) -> RAS mm
    ras = img.affine @ np.array([20, 10, 2, 1.0])
    x, y, z = vol.geometry.to_mm(2, 10, 20)
    np.testing.assert_allclose(ras[:3], [-x, -y, z], atol=1e-4)
    assert img.header.get_sform(coded=True)[1] == 1


def test_secondary_captures_reference_the_source(tmp_path, series):
    import pydicom

    vol, paths, uids = series
    g = vol.geometry
    rgb = clinical_io.overlay_rgb(vol.pixels[1], vol.pixels[1], 1.0, [(5, 6, 16)])
    assert rgb.shape == (128, 128, 3) and rgb.dtype == np.uint8 and tuple(rgb[5, 10]) == (51, 255, 51)
    (out,) = clinical_io.write_secondary_captures(tmp_path / "sc", rgb[None], [1], g)
    ds = pydicom.dcmread(out)
    src = pydicom.dcmread(paths[1])
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == uids[1]
    assert ds.SourceImageSequence[0].ReferencedSOPClassUID == src.SOPClassUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.PatientID == src.PatientID
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID and ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    np.testing.assert_allclose([float(v) for v in ds.ImagePositionPatient], [-100.0, -80.0, 6.5])
    np.testing.assert_array_equal(ds.pixel_array, rgb)


def test_parametric_map_references_the_source(tmp_path, series):
    pytest.importorskip("highdicom")
    import pydicom

    vol, paths, uids = series
    sus = np.random.default_rng(1).uniform(0, 0.01, vol.pixels.shape).astype(np.float32)
    path = clinical_io.write_parametric_map(tmp_path / "pm.dcm", sus, vol.geometry)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    assert ds.StudyInstanceUID == pydicom.dcmread(paths[0]).StudyInstanceUID
    refs = {i.ReferencedSOPInstanceUID for s in ds.ReferencedSeriesSequence for i in s.ReferencedInstanceSequence}
    assert refs == set(uids) and ds.ReferencedSeriesSequence[0].SeriesInstanceUID == vol.geometry.series_uid
    # highdicom orders the frames itself; each frame names its position and source image
    for i, f in enumerate(ds.PerFrameFunctionalGroupsSequence):
        s = uids.index(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        assert float(f.PlanePositionSequence[0].ImagePositionPatient[2]) == [4.0, 6.5, 9.0][s]
        np.testing.assert_allclose(ds.pixel_array[i], sus[s], rtol=1e-6)


def test_screen_command_writes_everything(tmp_path):
    wd = str(tmp_path / "model")
    checkpoints.save_params_checkpoint(wd, quick_params(CFG), CFG)
    write_series(tmp_path / "series", [0.0, 2.0])
    (tmp_path / "series" / "junk.dcm").write_bytes(b"not a DICOM file")
    argv = ["screen", "--workdir", wd, "--input", str(tmp_path / "series"), "--out", str(tmp_path / "out"),
            "--top_k", "2", "--center", "8", "--stride", "16", "--proposal", "fullconv"]
    assert cli._main(cli.build_parser().parse_args(argv)) == 2  # the junk file stops a strict run
    assert not (tmp_path / "out" / "findings.json").exists()
    assert cli._main(cli.build_parser().parse_args(argv + ["--lenient"])) == 0
    skipped = (tmp_path / "out" / "skipped.csv").read_text().splitlines()
    assert skipped[0] == "item,reason" and len(skipped) == 2 and "junk.dcm" in skipped[1]
    assert cli._main(cli.build_parser().parse_args(argv + ["--lenient"])) == 2  # a rerun needs --overwrite
    rep = json.loads((tmp_path / "out" / "findings.json").read_text())
    assert len(rep["findings"]) == 2 and rep["decision"]["calibrated"] is False
    f = rep["findings"][0]
    assert {"slice", "row", "col", "score", "x_mm", "y_mm", "z_mm", "sop_instance_uid", "path"} <= set(f)
    assert (tmp_path / "out" / "findings.csv").read_text().startswith("rank,slice,row,col,score")
    assert np.load(tmp_path / "out" / "suspicion.npy").shape == (2, 128, 128)
    assert (tmp_path / "out" / "overlays" / f"slice_{f['slice']:04d}.png").exists()
    assert any((tmp_path / "out" / "dicom" / "sc").iterdir())
    with pytest.raises(SystemExit) as e:  # a missing input stops at the flag
        cli.build_parser().parse_args(["screen", "--workdir", wd, "--input", str(tmp_path / "nope.npy"),
                                       "--out", str(tmp_path / "o2")])
    assert e.value.code == 2 and not (tmp_path / "o2").exists()


def test_slice_store_series_keeps_geometry(tmp_path, series):
    pytest.importorskip("nibabel")
    from btd_jax.data import preprocess
    from btd_jax.data.store import sources

    vol, _, _ = series
    hu = np.random.default_rng(2).uniform(-1000, 1500, vol.pixels.shape).astype(np.float32)
    clinical_io.write_nifti(tmp_path / "scan.nii.gz", hu, vol.geometry)
    sources.prepare(tmp_path / "scan.nii.gz", tmp_path / "store", modality="CT", size=16, progress=False)
    back = readers.read_volume(tmp_path / "store")
    np.testing.assert_allclose(back.pixels, preprocess.window_ct(hu), atol=1e-3)  # float16 shards
    np.testing.assert_allclose(back.geometry.affine, vol.geometry.affine, atol=1e-5)

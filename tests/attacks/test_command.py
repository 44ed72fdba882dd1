import json

import numpy as np
import pytest

from btd_jax import cli, evaluate
from btd_jax.data import preprocess


def _run(argv):
    return cli._main(cli.build_parser().parse_args(argv))


@pytest.fixture(scope="module")
def written(tmp_path_factory, ddpm_workdir, hu_slices):
    path, _ = hu_slices
    root = tmp_path_factory.mktemp("attacked")
    rc = _run(["attack", "--method", "sdedit", "--attack", "injection", "--input", str(path), "--model", ddpm_workdir,
               "--out", str(root), "--n", "4", "--seed", "0", "--steps", "4", "--jump_length", "2",
               "--resamplings", "2", "--strength", "0.3"])
    assert rc == 0
    return root


def test_layout_round_trips_through_evaluates_loader(written, hu_slices):
    _, hu = hu_slices
    patches, labels, meta = evaluate.load_eval_set(str(written), "CT", "injection", size=16)
    assert patches.shape == (8, 16, 16) and labels.tolist() == [1] * 4 + [0] * 4
    assert evaluate.dataset_indices(labels, meta, "CT", "injection")["SDEdit-CT-Inject"].tolist() == list(range(8))
    for i in range(8):
        y, x, f = int(meta["src_y"][i]), int(meta["src_x"][i]), int(meta["frame"][i])
        crop = np.load(str(meta["path"][i]))
        mask = np.load(written / "CT" / "Inject" / str(meta["mask"][i]))
        original = preprocess.extract_patch(hu[f], x, y, 16)
        cy, cx = int(meta["y"][i]), int(meta["x"][i])
        mine = preprocess.extract_patch(crop, cx, cy, 16)
        m = preprocess.extract_patch(mask.astype(np.float32), cx, cy, 16) > 0
        np.testing.assert_array_equal(mine[~m], original[~m])  # HU outside the attack: untouched
        assert (m.any() and np.abs(mine - original)[m].mean() > 1.0) == (labels[i] == 1)
        np.testing.assert_allclose(patches[i], preprocess.window_ct(mine), atol=1e-6)


def test_evaluate_command_reads_the_layout(written, ddpm_workdir, tmp_path):
    rc = _run(["evaluate", "--workdir", ddpm_workdir, "--dataset", str(written), "--attack", "injection",
               "--out", str(tmp_path), "--centers", "8", "--n_boot", "3"])
    assert rc == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert {r["dataset"] for r in rows} == {"SDEdit-CT-Inject"}
    assert all(r["n_real"] == 4 and r["n_fake"] == 4 for r in rows)


@pytest.mark.parametrize("argv,message", [
    (["--method", "stylegan", "--attack", "injection"], "unknown --method 'stylegan'"),
    (["--method", "repaint", "--attack", "injection"], "does not do --attack injection"),
])
def test_bad_choices_give_one_clear_error(argv, message, capsys, tmp_path, hu_slices):
    rc = _run(["attack", *argv, "--input", str(hu_slices[0]), "--model", str(tmp_path), "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("btd-jax attack: error:") and message in err[-1]


def test_slices_smaller_than_the_model_are_refused(capsys, tmp_path, ddpm_workdir):
    np.save(tmp_path / "small.npy", np.zeros((2, 12, 12), np.float32))
    rc = _run(["attack", "--method", "sdedit", "--attack", "injection", "--input", str(tmp_path / "small.npy"),
               "--model", ddpm_workdir, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "no 16x16 patch fits" in err[-1]


def test_missing_cgan_model_is_refused(capsys, tmp_path, hu_slices):
    rc = _run(["attack", "--method", "cgan", "--attack", "removal", "--input", str(hu_slices[0]),
               "--model", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "no cGAN attacker" in capsys.readouterr().err


def test_inputs_read_dicom_and_npy(hu_slices):
    from btd_jax.attacks import inputs
    from btd_jax.data import demo_data

    src = inputs.load_sources(demo_data.source_path("CT_small.dcm"), "CT")
    assert len(src) == 1 and src[0].image.shape == (128, 128) and src[0].image.min() < -500  # HU, not [0, 1]
    assert src[0].body.mean() > 0.3 and src[0].test.all()
    path, hu = hu_slices
    got = inputs.load_sources(path, "CT", max_slices=1)
    assert len(got) == 1 and np.array_equal(got[0].image, hu[0])


_SDEDIT = ["attack", "--method", "sdedit", "--attack", "injection", "--n", "1", "--steps", "2", "--resamplings", "1",
           "--strength", "0.3"]


def test_rerun_needs_overwrite_and_never_writes_into_the_model(written, ddpm_workdir, hu_slices, capsys):
    csv_path = written / "CT" / "Inject" / "CT_Inject.csv"
    before = csv_path.read_text()
    rc = _run([*_SDEDIT, "--input", str(hu_slices[0]), "--model", ddpm_workdir, "--out", str(written)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].endswith("already holds SDEdit-CT-Inject rows; pass --overwrite to replace them "
                                        "(rows of other methods are kept)")
    assert csv_path.read_text() == before
    rc = _run([*_SDEDIT, "--input", str(hu_slices[0]), "--model", ddpm_workdir, "--out", ddpm_workdir, "--overwrite"])
    assert rc == 2 and "refusing to write outputs there: it is the workdir" in capsys.readouterr().err


@pytest.fixture
def dicom_with_junk(tmp_path):
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "data"))
    try:
        from _dicom_files import write_ct_series
    finally:
        sys.path.pop(0)
    folder = tmp_path / "dicom"
    write_ct_series(folder, [0, 1])
    (folder / "junk.dcm").write_bytes(b"not a DICOM file at all")
    return folder


def test_lenient_skips_bad_dicom_files_and_lists_them_next_to_the_csv(dicom_with_junk, ddpm_workdir, tmp_path,
                                                                      capsys):
    out = tmp_path / "root"
    argv = [*_SDEDIT, "--input", str(dicom_with_junk), "--model", ddpm_workdir, "--out", str(out)]
    rc = _run(argv)
    assert rc == 2 and "--lenient" in capsys.readouterr().err and not (out / "CT").exists()
    rc = _run(argv + ["--lenient"])
    assert rc == 0, capsys.readouterr().err
    assert "btd-jax attack: skipped 1 item(s)" in capsys.readouterr().err
    listed = (out / "CT" / "Inject" / "SDEdit-CT-Inject.skipped.csv").read_text().splitlines()
    assert listed[0] == "item,reason" and len(listed) == 2 and "junk.dcm" in listed[1]
    assert len((out / "CT" / "Inject" / "CT_Inject.csv").read_text().splitlines()) == 3  # 1 fake + 1 real

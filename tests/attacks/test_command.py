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
    from btd_jax.attacks import demo_data, inputs

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


def test_attacker_data_choices_pick_the_attackers_training_slices(hu_slices):
    from btd_jax.attacks import attacker, inputs

    unseen = attacker.training_sources("unseen", "CT")
    assert {s.patient for s in unseen} == {"PANCREAS_0001", "JXD191021006"} and all(s.train.all() for s in unseen)
    same, demo = attacker.training_sources("same", "CT"), inputs.demo_sources("CT")
    assert [s.name for s in same] == ["693_UNCR", "CT_small"] and {s.patient for s in same} == {s.patient for s in demo}
    for s, d in zip(same, demo):  # the demo detector's training columns; its test columns stay unseen
        assert np.array_equal(s.train, d.train) and s.test.any() and not (s.train & s.test).any()
    got = attacker.training_sources(str(hu_slices[0]), "CT")
    assert len(got) == 2 and np.array_equal(got[1].image, hu_slices[1][1]) and got[0].train.all()
    assert {s.patient for s in attacker.training_sources("unseen", "MRI")} == {"021234567"}
    assert {s.scanner for s in attacker.training_sources("same", "MRI")} == {"MR2-shoulder", "emri", "MR-small"}


def test_same_attacker_data_trains_on_the_demo_and_attacks_its_held_out_columns(tmp_path, capsys):
    from btd_jax.attacks import inputs

    out = tmp_path / "root"
    rc = _run(["attack", "--method", "cgan", "--attack", "removal", "--input", "demo", "--model",
               str(tmp_path / "gan"), "--out", str(out), "--train_attacker", "--attacker_data", "same",
               "--attacker_steps", "1", "--attacker_patches", "16", "--size", "16", "--n", "2"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "attacker (same): 16 training patches of 16 px from 1CT1, CQ500-CT-310" in err
    _, labels, meta = evaluate.load_eval_set(str(out), "CT", "removal", size=16)
    demo = {(s.name, s.frame): s for s in inputs.demo_sources("CT")}
    for i in range(len(labels)):
        src = demo[(str(meta["source"][i]), int(meta["frame"][i]))]
        y, x = int(meta["src_y"][i]), int(meta["src_x"][i])
        assert src.test[y - 8:y + 8, x - 8:x + 8].all()  # every attacked or real site: held-out columns
    rc = _run(["attack", "--method", "cgan", "--attack", "removal", "--input", "demo", "--model",
               str(tmp_path / "gan2"), "--out", str(tmp_path / "root2"), "--train_attacker", "--attacker_data",
               str(tmp_path / "missing")])
    assert rc == 2 and "no such input" in capsys.readouterr().err


def test_mri_sets_are_written_in_the_layout_that_evaluate_reads(tmp_path, ddpm_workdir, capsys):
    rng = np.random.default_rng(0)
    mr = np.clip(rng.normal(0.5, 0.05, (2, 40, 40)), 0, 1).astype(np.float32)
    np.save(tmp_path / "mr.npy", mr)
    root = tmp_path / "root"
    rc = _run(["attack", "--method", "sdedit", "--attack", "injection", "--modality", "MRI", "--input",
               str(tmp_path / "mr.npy"), "--model", ddpm_workdir, "--out", str(root), "--n", "3", "--strength", "0.1"])
    assert rc == 0, capsys.readouterr().err
    assert (root / "MRI").is_dir() and not (root / "CT").exists()
    patches, labels, meta = evaluate.load_eval_set(str(root), "MRI", "injection", size=16)
    assert labels.tolist() == [1] * 3 + [0] * 3
    assert evaluate.dataset_indices(labels, meta, "MRI", "injection")["SDEdit-MRI-Inject"].tolist() == list(range(6))
    for i in range(6):
        y, x, f = int(meta["src_y"][i]), int(meta["src_x"][i]), int(meta["frame"][i])
        m = preprocess.extract_patch(np.load(root / "MRI" / str(meta["mask"][i])).astype(np.float32),
                                     int(meta["x"][i]), int(meta["y"][i]), 16) > 0
        original = preprocess.extract_patch(mr[f], x, y, 16)
        np.testing.assert_allclose(patches[i][~m], original[~m], atol=1.0 / 65535)  # 16-bit PNG
        assert m.any() == (labels[i] == 1)
    rc = _run(["evaluate", "--workdir", ddpm_workdir, "--dataset", str(root), "--modality", "MRI", "--attack",
               "injection", "--out", str(tmp_path / "ev"), "--centers", "8", "--n_boot", "3"])
    assert rc == 0, capsys.readouterr().err
    rows = json.loads((tmp_path / "ev" / "results.json").read_text())
    rows = rows["rows"] if isinstance(rows, dict) else rows
    assert {r["dataset"] for r in rows} == {"SDEdit-MRI-Inject"} and all(r["n_fake"] == 3 for r in rows)


def test_python_attack_writes_what_the_command_writes(written, ddpm_workdir, hu_slices, tmp_path):
    from btd_jax import attacks

    seen = []

    def before_work(modality):  # called before anything is written
        seen.append((modality, (tmp_path / "CT").exists()))

    done = attacks.attack("sdedit", "inject", hu_slices[0], ddpm_workdir, tmp_path, n=4, seed=0, steps=4,
                          jump_length=2, resamplings=2, strength=0.3, before_work=before_work)
    assert seen == [("CT", False)]
    csv_path = tmp_path / "CT" / "Inject" / "CT_Inject.csv"
    assert (done.csv_path, done.rows, done.n, done.dataset, done.attack) == (
        csv_path, 8, 4, "SDEdit-CT-Inject", "injection")
    assert done.skipped == [] and done.skipped_path is None and done.training is None
    command_csv = written / "CT" / "Inject" / "CT_Inject.csv"
    assert csv_path.read_text() == command_csv.read_text()
    files = sorted(p.name for p in (csv_path.parent / "images").iterdir())
    assert files == sorted(p.name for p in (command_csv.parent / "images").iterdir()) and len(files) == 16
    for name in files:  # 8 crops and 8 masks, the same arrays
        np.testing.assert_array_equal(np.load(csv_path.parent / "images" / name),
                                      np.load(command_csv.parent / "images" / name))
    with pytest.raises(ValueError, match="method repaint does not do attack injection"):
        attacks.attack("repaint", "injection", hu_slices[0], ddpm_workdir, tmp_path)


def test_output_plan_is_checked_before_the_attacker_is_trained(written, hu_slices, tmp_path, capsys):
    model = tmp_path / "ddpm"
    rc = _run(["attack", "--method", "sdedit", "--attack", "injection", "--input", str(hu_slices[0]), "--model",
               str(model), "--out", str(written), "--train_attacker", "--config", "tiny", "--attacker_steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "already holds SDEdit-CT-Inject rows" in err and "attacker (" not in err
    assert not model.exists() or not any(model.iterdir())  # nothing trained

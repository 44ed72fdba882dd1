"""The latent-diffusion attacker: autoencoder, latent RePaint/SDEdit, paste-back, files and the command."""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest

from btd_jax import cli, configs, evaluate, parallel
from btd_jax.attacks import attacker, autoencoder, ldm, pipeline, repaint
from btd_jax.data import preprocess
from btd_jax.data.errors import DataError
from btd_jax.models.unet import init_params
from btd_jax.train import feed

FAST = repaint.RePaintOptions(sampler="ddpm", steps=6, jump_length=2, resamplings=2, clip_denoised=False)
_HU = preprocess.CT_HI - preprocess.CT_LO


def _run(argv):
    return cli._main(cli.build_parser().parse_args(argv))


@pytest.fixture(scope="module")
def real_patches():
    """(train, held-out) 16 px crops in [0, 1] of the attacker's own CT slices."""
    src = attacker.attacker_sources("CT")
    return attacker.attacker_patches(src, 16, 512, seed=1), attacker.attacker_patches(src, 16, 64, seed=9)


def test_autoencoder_round_trips_real_patches(real_patches):
    train, held = real_patches
    cfg = autoencoder.AutoencoderConfig(image_size=16, features=16, latent_channels=4, batch_size=16, num_steps=300,
                                        learning_rate=3e-3, warmup_steps=10)
    params, info = autoencoder.train(train, cfg, jax.random.key(0), mesh=parallel.make_mesh(jax.local_devices()[:1]))
    z = autoencoder.encode(params, cfg, held)
    assert z.shape == (64, 4, 4, 4) and info["steps"] == 300
    mae_hu = np.abs(autoencoder.decode(params, cfg, z) - held).mean() * _HU
    flat_hu = np.abs(held - held.mean(axis=(1, 2), keepdims=True)).mean() * _HU  # each patch's own mean
    # Measured on these held-out crops: 35 HU after 300 steps, against 79 HU for a flat patch.
    assert mae_hu < 50.0 and mae_hu < 0.65 * flat_hu
    with pytest.raises(DataError, match="another size"):
        autoencoder.encode(params, cfg, np.zeros((2, 32, 32), np.float32))


def test_latent_and_feather_masks():
    m = np.zeros((1, 8, 8), bool)
    m[0, 3, 4] = True
    assert np.argwhere(ldm.latent_mask(m, 4)[0]).tolist() == [[0, 1]]  # the 4x4 cell holding (3, 4)
    w = ldm.feather_weights(m, 2)[0]
    assert w[3, 4] == 1.0 and np.isclose(w[3, 5], 2 / 3) and np.isclose(w[3, 6], 1 / 3) and w[3, 7] == 0.0
    np.testing.assert_array_equal(ldm.feather_weights(m, 0), m.astype(np.float32))


@pytest.fixture(scope="module")
def ldm_dir(tmp_path_factory, hu_slices):
    """An untrained tiny LDM saved by ``ldm.save`` and the removal layout ``btd-jax attack`` wrote with it."""
    path, _ = hu_slices
    tmp = tmp_path_factory.mktemp("ldm")
    model, root = tmp / "model", tmp / "root"
    cfg = dataclasses.replace(ldm.ldm_config("tiny", 16), scale=0.5)
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {"autoencoder": autoencoder.init(cfg.autoencoder, k1),
              "ddpm": init_params(cfg.ddpm.model, cfg.ddpm.image_size, k2)}
    ldm.save(model, params, cfg, {"note": "untrained"})
    rc = _run(["attack", "--method", "ldm", "--attack", "removal", "--input", str(path), "--model", str(model),
               "--out", str(root), "--n", "3", "--seed", "0", "--steps", "6", "--jump_length", "2",
               "--resamplings", "2"])  # = FAST: the tests below reuse its compiled sampler
    assert rc == 0
    return model, root


@pytest.fixture(scope="module")
def loaded(ldm_dir):
    return ldm.load(ldm_dir[0])


def test_save_load_round_trip(loaded, ldm_dir):
    params, cfg = loaded
    assert cfg == dataclasses.replace(ldm.ldm_config("tiny", 16), scale=0.5)
    assert json.loads((ldm_dir[0] / ldm.LDM_FILE).read_text())["info"] == {"note": "untrained"}
    autoencoder.check_params(params["autoencoder"], cfg.autoencoder)
    repaint.check_params(params["ddpm"], cfg.ddpm.model)


def test_latent_ddpm_data_may_leave_the_unit_range_but_not_be_nan(loaded):
    _, cfg = loaded
    z = np.full((4, 4, 4, 2), 3.0, np.float32)  # scaled latents: auto_normalize is off
    assert feed.check_patches(z, cfg.ddpm, "latents").shape == z.shape
    z[1, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        feed.check_patches(z, cfg.ddpm, "latents")
    with pytest.raises(DataError, match=r"outside \[0, 1\]"):
        feed.check_patches(np.full((2, 16, 16), 3.0, np.float32), configs.get("tiny"), "patches")


def test_command_writes_the_layout_that_evaluate_reads(ldm_dir, hu_slices):
    model, root = ldm_dir
    _, hu = hu_slices
    patches, labels, meta = evaluate.load_eval_set(str(root), "CT", "removal", size=16)
    assert patches.shape == (6, 16, 16) and labels.tolist() == [1] * 3 + [0] * 3
    assert evaluate.dataset_indices(labels, meta, "CT", "removal")["LDM-CT-Remove"].tolist() == list(range(6))
    for i in range(6):
        y, x, f = int(meta["src_y"][i]), int(meta["src_x"][i]), int(meta["frame"][i])
        crop = np.load(str(meta["path"][i]))
        mask = np.load(root / "CT" / "Remove" / str(meta["mask"][i]))
        cy, cx = int(meta["y"][i]), int(meta["x"][i])
        mine = preprocess.extract_patch(crop, cx, cy, 16)
        original = preprocess.extract_patch(hu[f], x, y, 16)
        m = preprocess.extract_patch(mask.astype(np.float32), cx, cy, 16) > 0
        np.testing.assert_array_equal(mine[~m], original[~m])  # HU outside the returned mask: untouched
        assert (m.any() and np.abs(mine - original)[m].mean() > 1.0) == (labels[i] == 1)


@pytest.fixture(scope="module")
def inputs16(hu_slices):
    _, hu = hu_slices
    x = preprocess.window_ct(np.stack([hu[0, 10:26, 5:21], hu[1, 20:36, 12:28], hu[0, 22:38, 20:36],
                                       hu[1, 4:20, 2:18], hu[0, 12:28, 14:30]]))
    m = np.zeros(x.shape, bool)
    m[:, 6:10, 5:11] = True
    return x, m


@pytest.fixture(scope="module")
def removed(loaded, inputs16):
    params, cfg = loaded
    x, m = inputs16
    return ldm.remove(params, cfg, x, m, jax.random.key(3), options=FAST)


def test_only_the_returned_mask_changes(removed, inputs16, loaded):
    x, m = inputs16
    out, changed = removed
    assert out.shape == x.shape and out.dtype == np.float32 and changed.dtype == bool
    assert np.all(changed[m]) and changed.sum() > m.sum()  # the mask and its feather ring
    np.testing.assert_array_equal(out[~changed], x[~changed])
    assert np.abs(out - x)[m].mean() > 0.01 and 0.0 <= out.min() and out.max() <= 1.0
    params, cfg = loaded
    prior = np.clip(x + 0.05 * m, 0.0, 1.0)
    out, changed = ldm.inject(params, cfg, x, prior, m, jax.random.key(3), strength=0.3, dilation=1, options=FAST)
    assert np.all(changed[m]) and not np.all(changed)
    np.testing.assert_array_equal(out[~changed], x[~changed])
    # MRI patches ([0, 1] units) through the pipeline: the same compiled sampler (t* and shapes as above)
    mri = np.clip(x * 2.0, 0.0, 1.0)
    atk = pipeline.Attacker("ldm", params, cfg, options=FAST, strength=0.3, dilation=1)
    fake, masks, _, contrasts = pipeline.attack_patches(atk, "injection", mri, jax.random.key(3),
                                                        np.random.default_rng(0), ct=False)
    np.testing.assert_array_equal(fake[~masks], mri[~masks])
    assert masks.any(axis=(1, 2)).all() and 0.0 <= fake.min() and fake.max() <= 1.0 and np.all(contrasts < 1.0)


def test_reproducible_across_batch_sizes_and_device_counts(removed, loaded, inputs16):
    params, cfg = loaded
    x, m = inputs16
    out, changed = removed
    one = ldm.remove(params, cfg, x, m, jax.random.key(3), options=FAST, batch_size=2,
                     mesh=parallel.make_mesh(jax.local_devices()[:1]))
    np.testing.assert_array_equal(one[1], changed)
    # equal to float rounding (other convolution shapes); measured up to 6e-5 with these random weights
    np.testing.assert_allclose(one[0], out, rtol=0, atol=5e-4)
    other = ldm.remove(params, cfg, x, m, jax.random.key(4), options=FAST)[0]
    assert np.abs(other - out)[m].mean() > 1e-3


def test_bad_input_gets_one_clear_error(loaded, inputs16, tmp_path, ldm_dir, hu_slices, capsys):
    params, cfg = loaded
    x, m = inputs16
    key = jax.random.key(0)
    with pytest.raises(DataError, match="a mask outside the image"):
        ldm.remove(params, cfg, x, np.pad(m, ((0, 0), (0, 4), (0, 4))), key, options=FAST)
    with pytest.raises(DataError, match="selects no pixel"):
        ldm.remove(params, cfg, x, np.zeros_like(m), key, options=FAST)
    with pytest.raises(DataError, match="another size"):
        ldm.remove(params, cfg, np.zeros((2, 32, 32), np.float32), np.ones((2, 32, 32), bool), key, options=FAST)
    other = dataclasses.replace(ldm.ldm_config("demo", 16), scale=cfg.scale)  # wider networks, same patch size
    with pytest.raises(DataError, match="another size"):
        ldm.remove(params, other, x, m, key, options=FAST)
    with pytest.raises(DataError, match="no LDM attacker here"):
        ldm.load(tmp_path)
    (tmp_path / ldm.LDM_FILE).write_text("{not json")
    (tmp_path / ldm.AE_FILE).write_bytes(b"")
    (tmp_path / ldm.DDPM_DIR).mkdir()
    with pytest.raises(DataError, match="not a valid LDM description"):
        ldm.load(tmp_path)
    wider = tmp_path / "wider"
    shutil.copytree(ldm_dir[0], wider)
    meta = json.loads((wider / ldm.LDM_FILE).read_text())
    meta["config"]["autoencoder"]["features"] = 16
    (wider / ldm.LDM_FILE).write_text(json.dumps(meta))
    with pytest.raises(DataError, match="another size"):
        ldm.load(wider)
    rc = _run(["attack", "--method", "ldm", "--attack", "injection", "--input", str(hu_slices[0]),
               "--model", str(tmp_path / "none"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "no LDM attacker here" in capsys.readouterr().err


@pytest.mark.slow
def test_command_trains_the_attacker_first(tmp_path, hu_slices):
    path, _ = hu_slices
    model = tmp_path / "model"
    rc = _run(["attack", "--method", "ldm", "--attack", "injection", "--input", str(path), "--model", str(model),
               "--out", str(tmp_path / "root"), "--n", "2", "--train_attacker", "--attacker_data", str(path),
               "--config", "tiny", "--size", "16", "--attacker_steps", "4", "--attacker_patches", "32",
               "--steps", "4", "--jump_length", "2", "--resamplings", "2", "--strength", "0.3"])
    assert rc == 0
    info = json.loads((model / ldm.LDM_FILE).read_text())["info"]
    assert info["autoencoder"]["steps"] == 4 and info["ddpm"]["steps"] == 4 and info["scale"] > 0
    _, cfg = ldm.load(model)
    assert cfg.scale == info["scale"] and cfg.autoencoder.num_steps == 4
    _, labels, _ = evaluate.load_eval_set(str(tmp_path / "root"), "CT", "injection", size=16)
    assert labels.tolist() == [1, 1, 0, 0]

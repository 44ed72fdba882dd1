"""Every attack through the pipeline, CT and MRI: untouched outside its mask, reproducible, clear errors."""

import jax
import numpy as np
import pytest

from btd_jax import configs, parallel
from btd_jax.attacks import cgan, pipeline, repaint, suite
from btd_jax.data import preprocess
from btd_jax.data.errors import DataError
from btd_jax.models.unet import abstract_params

# Cheap settings of the published samplers' kinds: the ancestral chain with jumps (RePaint), every
# step from t* (SDEdit); the tiny model has 100 timesteps.
OPTS = {"repaint": repaint.RePaintOptions(sampler="ddpm", steps=6, jump_length=2, resamplings=2),
        "sdedit": repaint.RePaintOptions(sampler="ddpm", steps=None, resamplings=1)}
CASES = [(m, a, mod) for m, a in pipeline.COMBINATIONS if m in ("repaint", "sdedit", "cgan")
         for mod in ("CT", "MRI")]


@pytest.fixture(scope="module")
def attackers(tiny_params):
    tiny = configs.get("tiny")
    out = {m: pipeline.Attacker(m, tiny_params, tiny, options=OPTS[m], strength=0.1) for m in OPTS}
    for mod in ("CT", "MRI"):
        gcfg = suite.gan_config(16, 8, 1, mod)
        out[f"cgan-{mod}"] = pipeline.Attacker("cgan", cgan.init(gcfg, jax.random.key(0)), gcfg)
    return out


def _patches(mod: str, n: int = 5) -> np.ndarray:
    """(n, 16, 16) tissue-like patches in tamper units: HU (CT) or [0, 1] (MRI)."""
    rng = np.random.default_rng(7)
    if mod == "CT":
        return rng.normal(40.0, 20.0, (n, 16, 16)).astype(np.float32)
    return np.clip(rng.normal(0.45, 0.05, (n, 16, 16)), 0, 1).astype(np.float32)


def _atk(attackers, method, mod):
    return attackers[f"cgan-{mod}"] if method == "cgan" else attackers[method]


@pytest.mark.parametrize("method,attack,mod", CASES)
def test_attack_changes_only_its_mask(attackers, method, attack, mod):
    x = _patches(mod)
    out, masks, radii, _ = pipeline.attack_patches(_atk(attackers, method, mod), attack, x, jax.random.key(2),
                                                   np.random.default_rng(0), ct=mod == "CT")
    assert out.shape == x.shape and out.dtype == np.float32 and masks.shape == x.shape
    assert np.array_equal(out[~masks], x[~masks])  # float equality, not a tolerance
    assert all(m.any() for m in masks) and np.abs(out - x)[masks].mean() > 0
    assert np.isfinite(out).all() and (mod == "CT" or (out.min() >= 0 and out.max() <= 1))


@pytest.mark.parametrize("method,attack", [("repaint", "removal"), ("sdedit", "injection"), ("cgan", "injection")])
def test_attack_is_reproducible_across_batch_sizes_and_device_counts(attackers, method, attack):
    x = _patches("CT")
    atk = _atk(attackers, method, "CT")

    def run(**kw):
        return pipeline.attack_patches(atk, attack, x, jax.random.key(5), np.random.default_rng(3), **kw)[0]

    assert jax.local_device_count() == 8
    eight = run(batch_size=64)
    np.testing.assert_array_equal(run(batch_size=64), eight)
    one = run(batch_size=2, mesh=parallel.make_mesh(jax.local_devices()[:1]))
    np.testing.assert_allclose(one, eight, atol=1e-5 * (preprocess.CT_HI - preprocess.CT_LO))  # HU
    other = pipeline.attack_patches(atk, attack, x, jax.random.key(6), np.random.default_rng(3))[0]
    assert method == "cgan" or np.abs(other - eight).max() > 1e-3  # the noise comes from the key


def test_an_attacker_model_of_another_size_is_one_clear_error(attackers, tiny_params):
    demo = configs.get("demo")  # 32 px, dim 8, three levels: not the tiny model's parameters
    with pytest.raises(DataError, match="another size"):
        pipeline.attack_patches(pipeline.Attacker("repaint", tiny_params, demo, options=OPTS["repaint"]), "removal",
                                np.zeros((2, 32, 32), np.float32), jax.random.key(0), np.random.default_rng(0))
    shapes = abstract_params(configs.override(configs.get("tiny"), {"model.dim": 16}).model)
    bigger = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), shapes)  # a wider U-Net's weights
    with pytest.raises(DataError, match="another size"):
        pipeline.attack_patches(pipeline.Attacker("sdedit", bigger, configs.get("tiny"), options=OPTS["sdedit"]),
                                "injection", _patches("CT", 2), jax.random.key(0), np.random.default_rng(0))
    with pytest.raises(DataError, match="wrong size"):
        pipeline.attack_patches(attackers["cgan-CT"], "removal", np.zeros((2, 32, 32), np.float32),
                                jax.random.key(0), np.random.default_rng(0))


def test_a_mask_outside_the_image_is_one_clear_error(tiny):
    params, cfg = tiny
    x = preprocess.window_ct(_patches("CT", 2))
    with pytest.raises(DataError, match="does not match"):
        repaint.inpaint(params, cfg, x, np.ones((2, 20, 20), bool), jax.random.key(0), options=OPTS["repaint"])
    beyond = np.zeros((2, 16, 16), bool)  # a mask that selects no pixel of the image
    with pytest.raises(DataError, match="selects no pixel"):
        repaint.inpaint(params, cfg, x, beyond, jax.random.key(0), options=OPTS["repaint"])


def test_presets_are_the_published_settings_and_fast_is_kept():
    full, fast = repaint.PRESETS["full"], repaint.PRESETS["fast"]
    assert repaint.DEFAULT_PRESET == "full"
    assert (full["repaint"].sampler, full["repaint"].steps, full["repaint"].jump_length,
            full["repaint"].resamplings) == ("ddpm", 250, 10, 10)
    assert (full["sdedit"].sampler, full["sdedit"].steps, full["sdedit"].resamplings) == ("ddpm", None, 1)
    assert fast == {"repaint": repaint.REMOVAL, "sdedit": repaint.INJECTION}
    assert repaint.time_grid(1000, None, t_start=150).tolist() == list(range(151))  # every step from t*
    assert len(repaint.time_grid(1000, 250)) == 250
    pairs = repaint.jump_schedule(250, 10, 10)
    assert int((pairs[:, 1] < pairs[:, 0]).sum()) == 2410  # model calls per RePaint fake
    assert pipeline.Attacker("repaint", None, configs.get("tiny")).options is None  # None: the full preset
    with pytest.raises(DataError, match="unknown sampling preset"):
        repaint.preset_options("medium", "repaint")

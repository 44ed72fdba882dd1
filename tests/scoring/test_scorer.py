"""Scorer: cfg.score is the default of every call, overrides by name, ScoreResult, auto_normalize."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from btd_jax import configs, diffusion, parallel, score
from btd_jax.models.unet import Unet, init_params
from btd_jax.scoring import ResidualModel, ScoreResult, stream

CFG = configs.get("tiny")
SIZE = CFG.image_size


@pytest.fixture
def params(tiny_params):
    return tiny_params


def _images(n, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, SIZE, SIZE)).astype(np.float32)


def _with_score(cfg, **fields):
    return dataclasses.replace(cfg, score=dataclasses.replace(cfg.score, **fields))


def test_preset_center_and_every_score_field_are_the_defaults(params):
    x = _images(6)
    whole = score.btd_score(params, x, CFG, center=None)
    win8 = score.btd_score(params, x, CFG, center=8)
    assert not np.allclose(whole, win8)
    scorer = score.Scorer.from_params(params, _with_score(CFG, center=8))
    np.testing.assert_allclose(scorer.score(x), win8, rtol=1e-6)  # the preset's window, not the whole patch
    np.testing.assert_allclose(scorer.score(x, center=None), whole, rtol=1e-6)  # an explicit None wins
    # d, sampler and pooling come from the config too.
    d3 = score.Scorer.from_params(params, _with_score(CFG, steps=3, sampler="ddim", reduction="max"))
    np.testing.assert_allclose(d3.score(x), score.btd_score(params, x, CFG, steps=3, sampler="ddim",
                                                            reduction="max"), rtol=1e-6)
    assert d3.settings(center=4).center == 4 and d3.settings().steps == 3


def test_demo_preset_scores_its_window():
    cfg = configs.get("demo-quick")
    assert cfg.score.center == 8
    p = init_params(cfg.model, cfg.image_size, jax.random.key(1))
    x = np.random.default_rng(2).uniform(size=(3, cfg.image_size, cfg.image_size)).astype(np.float32)
    np.testing.assert_allclose(score.Scorer.from_params(p, cfg).score(x),
                               score.btd_score(p, x, cfg, center=8), rtol=1e-6)


def test_unknown_overrides_raise_type_error_naming_them(params):
    scorer = score.Scorer.from_params(params, CFG)
    with pytest.raises(TypeError, match="unexpected keyword argument 'centre'"):
        scorer.score(_images(2), centre=8)
    with pytest.raises(TypeError, match="unexpected keyword argument 'step'"):
        scorer.run(_images(2), step=1)
    with pytest.raises(TypeError, match="variant"):
        scorer.residual_map(_images(2), variant="multi_t")  # variants give scores, not maps
    with pytest.raises(TypeError, match="bogus"):
        scorer.settings(bogus=1)
    with pytest.raises(ValueError, match="score.sampler"):
        scorer.score(_images(2), sampler="euler")


def test_clip_is_a_deprecated_alias_of_clip_inputs(params):
    scorer = score.Scorer.from_params(params, CFG)
    over = _images(3) * 1.5 - 0.25
    with pytest.warns(DeprecationWarning, match="clip_inputs"):
        a = scorer.score(over, clip=True)
    np.testing.assert_array_equal(a, scorer.score(over, clip_inputs=True))
    with pytest.warns(DeprecationWarning):
        assert scorer.settings(clip=True).clip_inputs is True


def test_run_returns_a_score_result(params):
    x = _images(5, seed=3)
    scorer = score.Scorer.from_params(params, CFG)
    res = scorer.run(x, maps=True, center=8)
    assert isinstance(res, ScoreResult) and res.scores.shape == (5,) and res.maps.shape == (5, SIZE, SIZE)
    s, m = res  # still a tuple
    np.testing.assert_allclose(s, scorer.score(x, center=8), rtol=1e-6)
    np.testing.assert_allclose(m, scorer.residual_map(x), rtol=1e-6)
    np.testing.assert_allclose(s, m[:, 4:12, 4:12].mean(axis=(1, 2)), rtol=1e-5)
    assert scorer.run(x).maps is None
    assert isinstance(scorer.score_and_maps(x), ScoreResult)
    with pytest.raises(ValueError, match="only available with variant 'btd'"):
        scorer.run(x, maps=True, variant="multi_t", key=jax.random.key(0))
    assert isinstance(scorer, ResidualModel)


def _hand_maps(params, cfg, x_model):
    """d = 1 at t = 0 by hand on images already in the model's units."""
    sched = diffusion.make_schedule(cfg.diffusion)
    x = jnp.asarray(x_model[..., None])
    eps = Unet.from_config(cfg.model).apply({"params": params}, x, jnp.zeros((len(x),), jnp.int32))
    x0 = jnp.clip(sched.sqrt_recip_alphas_cumprod[0] * x - sched.sqrt_recipm1_alphas_cumprod[0] * eps, -1, 1)
    x1 = sched.posterior_mean_coef1[0] * x0 + sched.posterior_mean_coef2[0] * x
    return np.asarray(jnp.square(x - x1)[..., 0])


def test_auto_normalize_false_scores_raw_values(params):
    x = _images(4, seed=5)
    raw_cfg = dataclasses.replace(CFG, diffusion=dataclasses.replace(CFG.diffusion, auto_normalize=False))
    maps = score.Scorer.from_params(params, raw_cfg).residual_map(x)
    np.testing.assert_allclose(maps, _hand_maps(params, raw_cfg, x), rtol=1e-5, atol=1e-7)  # x not mapped
    np.testing.assert_allclose(score.residual_map(params, x, CFG), _hand_maps(params, CFG, x * 2 - 1),
                               rtol=1e-5, atol=1e-7)  # the default maps [0, 1] -> [-1, 1]
    assert not np.allclose(maps, score.residual_map(params, x, CFG))


def test_index_offset_gives_a_slice_of_the_whole_call(params):
    x, key = _images(12, seed=6), jax.random.key(4)
    scorer = score.Scorer.from_params(params, CFG)
    whole = scorer.score(x, steps=3, key=key)
    np.testing.assert_allclose(scorer.score(x[5:], steps=3, key=key, index_offset=5), whole[5:], rtol=1e-5)
    assert not np.allclose(scorer.score(x[5:], steps=3, key=key), whole[5:])


def test_driver_keeps_explicit_defaults_and_the_clip_alias(params):
    x = _images(3, seed=7)
    p, sched = stream.replicate(params, CFG, parallel.make_mesh(jax.local_devices()))
    res = stream.score_and_maps(p, sched, x, CFG, center=8)
    np.testing.assert_allclose(res.scores, score.btd_score(params, x, CFG, center=8), rtol=1e-6)
    with pytest.warns(DeprecationWarning):
        stream.score_and_maps(p, sched, x, CFG, clip=True)
    with pytest.raises(TypeError, match="bogus"):
        stream.score_and_maps(p, sched, x, CFG, bogus=1)

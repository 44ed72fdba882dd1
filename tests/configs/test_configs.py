import dataclasses

import pytest

from btd_jax import configs


def test_presets_match_the_paper():
    ct = configs.get("ct")
    assert ct.model.dim == 32 and ct.model.dim_mults == (1, 2, 4, 8) and ct.model.channels == 1
    assert ct.image_size == 96 and ct.modality == "CT"
    assert ct.diffusion.objective == "pred_noise" and ct.diffusion.timesteps == 1000
    assert ct.diffusion.beta_schedule == "sigmoid" and ct.model.version == "v1"
    assert ct.train.learning_rate == 8e-6 and ct.train.adam_betas == (0.9, 0.99)
    assert (ct.train.batch_size, ct.train.grad_accum, ct.train.max_grad_norm) == (64, 2, 1.0)
    assert (ct.train.ema_decay, ct.train.ema_update_every) == (0.995, 10)
    assert configs.get("mri").image_size == 128 and configs.get("mri").modality == "MRI"
    assert configs.get("ct8").model.dim == 8 and configs.get("ct8").image_size == 96
    assert set(configs.NAMES) >= {"ct", "mri", "ct8", "tiny"}


def test_unknown_name_lists_valid_names():
    with pytest.raises(KeyError, match="valid names are ct, mri"):
        configs.get("nope")


def test_full_attn_default_is_last_stage():
    assert configs.get("ct").model.full_attn_per_stage == (False, False, False, True)
    assert configs.get("tiny").model.full_attn_per_stage == (False, True)


@pytest.mark.parametrize("name", ["ct", "mri", "ct8", "tiny"])
def test_json_round_trip(name):
    cfg = configs.get(name)
    assert configs.from_json(configs.to_json(cfg)) == cfg


def test_override_parses_strings_and_rejects_unknown_keys():
    cfg = configs.override(configs.get("ct"), {"train.batch_size": "8", "model.full_attn": "[false,true,true,true]",
                                               "model.dtype": "bfloat16", "train.hflip": "true"})
    assert cfg.train.batch_size == 8 and cfg.model.full_attn == (False, True, True, True)
    assert cfg.model.dtype == "bfloat16" and cfg.train.hflip is True
    with pytest.raises(KeyError, match="unknown config key 'train.nope'"):
        configs.override(cfg, {"train.nope": 1})
    with pytest.raises(KeyError, match="unknown config section"):
        configs.override(cfg, {"optim.lr": 1})


def test_invalid_values_are_refused():
    with pytest.raises(ValueError, match="objective must be one of"):
        dataclasses.replace(configs.get("ct").diffusion, objective="pred_eps")
    with pytest.raises(ValueError, match="full_attn has 3 entries but dim_mults has 4"):
        configs.ModelConfig(full_attn=(False, False, True))
    with pytest.raises(ValueError, match="model.dtype"):
        configs.ModelConfig(dtype="float16")
    with pytest.raises(ValueError, match="unknown keys"):
        configs.from_dict({"model": {"dimm": 3}})


def test_fast_presets_change_only_the_training_timesteps_and_pooling():
    fast, base = configs.get("ct-fast"), configs.get("ct")
    assert fast.train.t_sampling == "truncated" and fast.train.t_max == 10
    assert fast.score.reduction == "percentile:99" and base.score.reduction == "mean"
    assert fast.model == base.model and fast.diffusion == base.diffusion
    assert dataclasses.replace(fast, name="ct", train=base.train, score=base.score) == base


@pytest.mark.parametrize("bad", ["median", "percentile:101", "percentile:x", "max:3", ""])
def test_score_reduction_is_validated(bad):
    with pytest.raises(ValueError, match="score.reduction"):
        configs.ScoreConfig(reduction=bad)
    assert configs.ScoreConfig(reduction="percentile:99.5").reduction == "percentile:99.5"


def test_config_json_without_reduction_still_loads():
    d = configs.to_dict(configs.get("tiny"))
    del d["score"]["reduction"]  # a config.json written before the field existed
    assert configs.from_dict(d) == configs.get("tiny")
    assert {"mri-fast", "ct8-fast"} <= set(configs.NAMES)


def test_demo_presets_need_no_demo_import():
    import subprocess
    import sys

    code = ("import sys; from btd_jax import configs; c = configs.get('demo'); q = configs.get('demo-quick'); "
            "assert 'btd_jax.demo' not in sys.modules; print(c.image_size, q.image_size, c.train.t_sampling)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["32", "16", "lowt"]

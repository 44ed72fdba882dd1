import dataclasses
import re

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


# --- values parsed by the declared field type ---------------------------------------------------------

@pytest.mark.parametrize("key,text,want", [
    ("train.batch_size", "8", 8),                                   # int
    ("train.learning_rate", "2e-4", 2e-4),                          # float
    ("train.max_grad_norm", "1", 1.0),                              # float from an integer literal
    ("train.hflip", "True", True), ("train.hflip", "0", False),     # bool
    ("model.version", "v2", "v2"),                                  # str
    ("score.center", "16", 16), ("score.center", "none", None),     # Optional[int]
    ("model.dim_mults", "1,2,4", (1, 2, 4)),                        # Tuple[int, ...]
    ("model.dim_mults", "[1, 2]", (1, 2)), ("model.dim_mults", "(1, 2, 4, 8)", (1, 2, 4, 8)),
    ("train.adam_betas", "0.9,0.999", (0.9, 0.999)),                # Tuple[float, float]
    ("model.full_attn", "false,true", (False, True)),               # Optional[Tuple[bool, ...]]
    ("model.full_attn", "null", None),
    ("diffusion.schedule_kwargs", "start=-3,tau=1.5", (("start", -3.0), ("tau", 1.5))),  # Tuple[Tuple[str, float], ...]
    ("diffusion.schedule_kwargs", '{"start": -3, "tau": 1}', (("start", -3.0), ("tau", 1.0))),
    ("diffusion.schedule_kwargs", '[["tau", 0.5]]', (("tau", 0.5),)),
    ("diffusion.schedule_kwargs", "", ()),
    ("score.micro_batch", "4", 4), ("score.micro_batch", "auto", "auto"), ("score.micro_batch", "None", None),
])
def test_parse_value_by_declared_type(key, text, want):
    got = configs.parse_value(key, text)
    assert got == want and type(got) is type(want)
    if isinstance(want, tuple):
        assert [type(v) for v in got] == [type(v) for v in want]


@pytest.mark.parametrize("key,text,expected", [
    ("train.batch_size", "abc", "expected int"),
    ("train.batch_size", "8.5", "expected int"),
    ("train.learning_rate", "fast", "expected float"),
    ("train.hflip", "maybe", "expected bool"),
    ("score.center", "mid", "expected int or None"),
    ("model.dim_mults", "1,two", "expected a tuple of int"),
    ("train.adam_betas", "0.9", r"expected \(float, float\)"),
    ("diffusion.schedule_kwargs", "tau", r"expected a tuple of \(str, float\)"),
    ("diffusion.schedule_kwargs", "tau=x", r"expected a tuple of \(str, float\)"),
    ("train.num_steps", "none", "expected int"),
])
def test_set_with_a_wrong_type_names_the_key_and_type(key, text, expected):
    with pytest.raises(ValueError, match=f"^--set {key}={re.escape(text)}: {expected}$"):
        configs.parse_assignments([f"{key}={text}"])
    with pytest.raises(ValueError, match=f"^{key}={re.escape(text)}: {expected}$"):
        configs.override(configs.get("tiny"), {key: text})


def test_override_checks_typed_values_too():
    cfg = configs.override(configs.get("tiny"), {"model.dim_mults": [1, 2, 4], "train.adam_betas": [0.5, 0.9],
                                                 "diffusion.schedule_kwargs": {"tau": 2}, "score.center": None})
    assert cfg.model.dim_mults == (1, 2, 4) and cfg.train.adam_betas == (0.5, 0.9)
    assert cfg.diffusion.schedule_kwargs == (("tau", 2.0),) and cfg.score.center is None
    with pytest.raises(ValueError, match="train.batch_size=8.0: expected int"):
        configs.override(cfg, {"train.batch_size": 8.0})
    with pytest.raises(ValueError, match="model.dtype=16: expected str"):
        configs.override(cfg, {"model.dtype": 16})


def test_parse_assignments_keeps_order_and_refuses_bad_items():
    got = configs.parse_assignments(["train.seed=3", " score.reduction = percentile:99 ", "name=x=y"])
    assert got == {"train.seed": 3, "score.reduction": "percentile:99", "name": "x=y"}
    with pytest.raises(ValueError, match="--set expects KEY=VALUE, got 'train.seed'"):
        configs.parse_assignments(["train.seed"])
    with pytest.raises(KeyError, match="unknown config key 'train.nope'"):
        configs.parse_assignments(["train.nope=1"])


def test_schedule_kwargs_from_set_reach_the_schedule():
    cfg = configs.override(configs.get("tiny"), {"diffusion.schedule_kwargs": "start=-2,tau=0.5"})
    assert configs.from_json(configs.to_json(cfg)) == cfg
    assert dict(cfg.diffusion.schedule_kwargs) == {"start": -2.0, "tau": 0.5}


# --- configs.load: a preset name or a JSON file ---------------------------------------------------------

def test_load_takes_a_preset_or_a_json_file(tmp_path):
    assert configs.load("ct") == configs.get("ct")
    mine = configs.override(configs.get("tiny"), {"name": "mine", "train.num_steps": 7})
    (tmp_path / "mine.json").write_text(configs.to_json(mine))
    assert configs.load(str(tmp_path / "mine.json")) == mine
    with pytest.raises(KeyError, match="not a preset nor a JSON config file; valid names are ct, mri"):
        configs.load(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text('{"train": {"batch_size": "many"}}')
    with pytest.raises(ValueError, match="bad.json: not a valid btd-jax config .train.batch_size=many: expected int"):
        configs.load(str(tmp_path / "bad.json"))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="broken.json: not a valid btd-jax config"):
        configs.load(str(tmp_path / "broken.json"))


def test_name_lists_are_defined_once():
    from btd_jax import diffusion, schedules

    assert schedules.OBJECTIVES is configs.OBJECTIVES and diffusion.OBJECTIVES is configs.OBJECTIVES
    assert schedules.BETA_SCHEDULES is configs.BETA_SCHEDULES
    assert diffusion.T_DISTRIBUTIONS is configs.T_SAMPLINGS

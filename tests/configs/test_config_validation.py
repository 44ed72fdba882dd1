"""Config values are validated where declared, before any run uses (or saves) them."""

import json

import pytest

from btd_jax import configs


@pytest.mark.parametrize("assignment, message", [
    ("train.checkpoint_every=0", "train.checkpoint_every must be >= 1, got 0"),
    ("train.log_every=0", "train.log_every must be >= 1, got 0"),
    ("train.eval_every=-5", "train.eval_every must be >= 1, got -5"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints must be >= 1"),
    ("train.ema_update_every=0", "train.ema_update_every must be >= 1"),
    ("train.learning_rate=-1", "train.learning_rate must be > 0, got -1.0"),
    ("train.learning_rate=0", "train.learning_rate must be > 0"),
    ("train.learning_rate=nan", "train.learning_rate must be > 0"),
    ("train.learning_rate=inf", "train.learning_rate must be > 0"),
    ("train.adam_betas=0.9,1.0", "train.adam_betas must be in"),
    ("train.ema_decay=1.5", "train.ema_decay must be in"),
    ("train.max_grad_norm=-1", "train.max_grad_norm must be >= 0"),
    ("train.t_max=0", "train.t_max must be >= 1"),
    ("train.mixture_uniform_frac=2", "train.mixture_uniform_frac must be in"),
])
def test_bad_values_refused_naming_the_key(assignment, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        configs.override(configs.get("tiny"), configs.parse_assignments([assignment]))


@pytest.mark.parametrize("assignment, message", [
    ("train.checkpoint_every=two", "--set train.checkpoint_every=two: expected int"),
    ("train.learning_rate=fast", "--set train.learning_rate=fast: expected float"),
    ("train.hflip=maybe", "--set train.hflip=maybe: expected bool"),
    ("model.dim_mults=1,x", "--set model.dim_mults=1,x: expected a tuple of int"),
    ("train.batch_size", "--set expects KEY=VALUE"),
])
def test_set_parse_errors_name_key_and_type(assignment, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        configs.parse_assignments([assignment], "--set")


def test_good_edge_values_accepted():
    cfg = configs.override(configs.get("tiny"), configs.parse_assignments(
        ["train.checkpoint_every=1", "train.max_grad_norm=0", "train.ema_decay=1", "train.num_steps=0"]))
    assert (cfg.train.checkpoint_every, cfg.train.max_grad_norm, cfg.train.num_steps) == (1, 0.0, 0)
    for name in configs.NAMES:
        configs.get(name)  # every preset is valid


@pytest.mark.parametrize("text", ['{"foo": 1}', "{}", "[1, 2]", '{"model": {}, "diffusion": {}, "extra": 1}'])
def test_foreign_json_is_not_a_config(text):
    with pytest.raises(ValueError, match="not a btd_jax config"):
        configs.from_json(text)


def test_saved_config_round_trips_and_bad_saved_values_refused():
    cfg = configs.get("tiny")
    assert configs.from_json(configs.to_json(cfg)) == cfg
    d = json.loads(configs.to_json(cfg))
    d["train"]["checkpoint_every"] = 0
    with pytest.raises(ValueError, match="train.checkpoint_every must be >= 1"):
        configs.from_dict(d)

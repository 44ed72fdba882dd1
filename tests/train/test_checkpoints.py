"""Checkpoints: params-only checkpoints for convert/Scorer, clear errors, crash and Ctrl-C safety."""

import os

import jax
import numpy as np
import pytest

from btd_jax import configs, parallel, train
from btd_jax.train import checkpoints, feed

CFG = configs.override(configs.get("tiny"), {
    "train.batch_size": 8, "train.grad_accum": 1, "train.num_steps": 6, "train.log_every": 2,
    "train.eval_every": 3, "train.checkpoint_every": 3, "train.keep_checkpoints": 2})


def _params(cfg=CFG, seed=1):
    """Random parameters shaped for ``cfg`` (from the abstract init: no compilation)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype),
                        checkpoints.expected_param_shapes(cfg))


def _equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _data(n=24):
    base = np.random.default_rng(0).random((n, 4, 4), dtype=np.float32)
    return np.kron(base, np.ones((4, 4), np.float32))


def test_params_checkpoint_round_trip(tmp_path):
    p = _params()
    wd = str(tmp_path / "conv")
    assert train.save_params_checkpoint(wd, p, CFG) == wd
    assert os.path.isfile(os.path.join(wd, "config.json"))
    for which in ("ema", "params"):
        q, cfg = train.load_params(wd, which=which)
        assert cfg == CFG and _equal(p, q)
        assert jax.tree.structure(q) == jax.tree.structure(p)


def test_load_params_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train.load_params(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="not a btd-jax workdir"):
        train.load_params(str(tmp_path))
    checkpoints.write_config(str(tmp_path), CFG)
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        train.load_params(str(tmp_path))
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(FileNotFoundError, match="no finished checkpoint"):
        train.load_params(str(tmp_path))
    with pytest.raises(ValueError, match="which must be"):
        train.load_params(str(tmp_path), which="best")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid btd-jax config"):
        train.load_params(str(tmp_path))


def test_checkpoint_that_does_not_match_its_config(tmp_path):
    wd = str(tmp_path / "w")
    train.save_params_checkpoint(wd, _params(), CFG)
    with pytest.raises(FileNotFoundError, match="no checkpoint at step 5"):
        train.load_params(wd, step=5)
    bigger = configs.override(CFG, {"model.dim": 16})
    checkpoints.write_config(wd, bigger)
    with pytest.raises(ValueError, match=r"parameters do not match the config: .*has shape \(3, 3, 8, 8\), "
                                         r"config expects \(3, 3, 16, 16\)"):
        train.load_params(wd)


def test_save_params_checkpoint_refusals(tmp_path):
    wd = str(tmp_path / "w")
    with pytest.raises(ValueError, match="parameters do not match the config"):
        train.save_params_checkpoint(wd, _params(configs.override(CFG, {"model.dim": 16})), CFG)
    train.save_params_checkpoint(wd, _params(), CFG)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        train.save_params_checkpoint(wd, _params(), CFG)


def test_training_starts_from_a_params_checkpoint(tmp_path):
    wd = str(tmp_path / "w")
    p = _params(seed=1)
    train.save_params_checkpoint(wd, p, CFG)
    state = train.train_and_evaluate(configs.override(CFG, {"train.num_steps": 0}), wd, _data(), progress=False)
    assert int(state.step) == 0 and _equal(state.params, p) and _equal(state.ema_params, p)
    fresh = train.create_train_state(CFG, jax.random.PRNGKey(CFG.train.seed), parallel.make_mesh())
    assert _equal(state.opt_state, fresh.opt_state)  # a new Adam state


def _failing_feed(monkeypatch, at_step, exc):
    original = feed.TrainFeed.host_batch

    def host_batch(self, step):
        if step == at_step:
            raise exc
        return original(self, step)

    monkeypatch.setattr(feed.TrainFeed, "host_batch", host_batch)


def test_crash_keeps_finished_checkpoints(tmp_path, monkeypatch):
    wd = str(tmp_path / "w")
    _failing_feed(monkeypatch, 4, OSError("disk went away"))
    with pytest.raises(OSError, match="disk went away"):
        train.train_and_evaluate(CFG, wd, _data(), progress=False)
    assert checkpoints.latest_step(wd) == 3
    _, cfg = train.load_params(wd)
    assert cfg == CFG


def test_interrupt_saves_the_step_reached(tmp_path, monkeypatch):
    wd = str(tmp_path / "w")
    _failing_feed(monkeypatch, 5, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(CFG, wd, _data(), progress=False)
    assert checkpoints.latest_step(wd) == 5
    monkeypatch.undo()
    state = train.train_and_evaluate(CFG, wd, _data(), progress=False)
    assert int(state.step) == 6
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["5", "6"]

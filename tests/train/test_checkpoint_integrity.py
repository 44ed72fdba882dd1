"""Checkpoints are verified on restore: damaged newest steps are skipped, NaN/inf is never saved."""

import glob
import logging
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from btd_jax import checkpoints, configs, parallel
from btd_jax.runtime.finite import NonFiniteError
from btd_jax.train import checkpoints as train_ckpt
from btd_jax.train.state import TrainState, make_optimizer

CFG = configs.get("tiny")


def _state(step, mesh=None):
    """A tiny state with random params and EMA told apart by ``step`` (no compilation needed)."""
    rng = np.random.default_rng(step)
    leaf = lambda s: jnp.asarray(rng.standard_normal(s.shape).astype(np.float32))  # noqa: E731
    params = jax.tree.map(leaf, checkpoints.expected_param_shapes(CFG))
    ema = jax.tree.map(leaf, checkpoints.expected_param_shapes(CFG))
    state = TrainState(params=params, ema_params=ema, opt_state=make_optimizer(CFG.train).init(params),
                       step=jnp.asarray(step, jnp.int32), rng=jnp.zeros(2, jnp.uint32))
    return state if mesh is None else jax.device_put(state, parallel.replicated(mesh))


def write_steps(wd, steps):
    checkpoints.write_config(wd, CFG)
    with checkpoints.open_manager(wd, keep=5, async_save=False) as mngr:
        for step in steps:
            train_ckpt.save_state(mngr, _state(step, parallel.make_mesh()))
        mngr.wait_until_finished()


def _workdir(tmp_path, steps=(2, 4, 6)):
    """A workdir with good train checkpoints at ``steps``, written by another process: tensorstore
    caches what a process has written or read, so only a fresh process sees damage done to the files."""
    wd = str(tmp_path / "w")
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); "
            f"import test_checkpoint_integrity as t; t.write_steps({wd!r}, {tuple(steps)!r})")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=600)
    return wd


def _data_files(wd, step, item="ema_params"):
    """The data files of one item of one step (orbax's OCDBT keeps several; which one holds which array varies)."""
    files = glob.glob(os.path.join(wd, "checkpoints", str(step), item, "**", "d", "*"), recursive=True)
    return [f for f in files if os.path.getsize(f) >= 1024]


def _truncate(paths):
    for path in paths:
        data = open(path, "rb").read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])


def _flip(paths, n=64):
    for path in paths:
        data = bytearray(open(path, "rb").read())
        mid = len(data) // 2
        for i in range(mid, mid + n):
            data[i] ^= 0xFF
        with open(path, "wb") as f:
            f.write(bytes(data))


def _expected_ema(step):
    return _state(step).ema_params


def _same(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_damaged_newest_steps_are_skipped_with_a_warning(tmp_path, caplog, monkeypatch):
    reports = []  # what reaches the process's hook for exceptions raised in background callbacks
    monkeypatch.setattr(sys, "unraisablehook", lambda u: reports.append(str(u.exc_value)))
    workdir = _workdir(tmp_path)
    _truncate(_data_files(workdir, 6))  # a cut-off data file: tensorstore cannot read it
    _flip(_data_files(workdir, 4))  # 64 flipped bytes per file
    with pytest.raises(checkpoints.DamagedCheckpoint, match="step 6"):  # an explicit step never falls back
        checkpoints.load_params(workdir, step=6)
    with caplog.at_level(logging.WARNING):
        params, cfg = checkpoints.load_params(workdir)
    assert cfg == CFG and _same(params, _expected_ema(2))
    # asyncio may also log tensorstore's unretrieved read errors, whose text holds this test's tmp path
    warnings = [r.getMessage() for r in caplog.records if "is damaged and was skipped" in r.getMessage()]
    assert len(warnings) == 2
    assert "checkpoint step 6 is damaged and was skipped (" in warnings[0] and "using step 2" in warnings[0]
    assert "step 4 is damaged and was skipped (" in warnings[1]
    # Tensorstore callbacks left by a failed read may report orbax's closed event loop, one traceback per
    # array (timing-dependent, so sent here by hand): those are dropped, anything else still gets through.
    for text in ("Event loop is closed", "another problem"):
        sys.unraisablehook(types.SimpleNamespace(exc_value=RuntimeError(text)))
    assert [r for r in reports if r != "Event loop is closed"] == reports and "another problem" in reports


def test_silently_altered_values_are_caught_by_the_checksum(tmp_path, caplog):
    """Bytes that still decode (no read error, finite values) but differ from what was saved."""
    import orbax.checkpoint as ocp

    workdir = str(tmp_path / "w")
    write_steps(workdir, (2,))
    good, other = _state(4), _state(5)
    sums = checkpoints.checksums({"params": good.params, "ema_params": good.ema_params})
    with checkpoints.open_manager(workdir, keep=5, async_save=False) as mngr:
        mngr.save(4, args=ocp.args.Composite(
            params=ocp.args.StandardSave(good.params), ema_params=ocp.args.StandardSave(other.ema_params),
            meta=ocp.args.JsonSave({"kind": "params", "step": 4, "checksums": sums})))
        mngr.wait_until_finished()
    with caplog.at_level(logging.WARNING):
        params, _ = checkpoints.load_params(workdir)
    assert _same(params, _expected_ema(2))
    assert "step 4 is damaged and was skipped" in caplog.text
    assert "ema_params does not match the checksum saved with it" in caplog.text


def test_nothing_usable_lists_every_step(tmp_path):
    workdir = _workdir(tmp_path, (2, 4))
    for step in (2, 4):
        _truncate(_data_files(workdir, step))
    with pytest.raises(checkpoints.DamagedCheckpoint, match=r"no usable checkpoint: step 4: .*; step 2: "):
        checkpoints.load_params(workdir)


def test_training_resume_sets_damaged_steps_aside(tmp_path, caplog):
    workdir = _workdir(tmp_path)
    _flip(_data_files(workdir, 6, "params"))
    mesh = parallel.make_mesh()
    with checkpoints.open_manager(workdir, keep=5, async_save=False) as mngr:
        with caplog.at_level(logging.WARNING):
            state = train_ckpt.restore_state(mngr, CFG, mesh, where=workdir, set_aside_damaged=True)
        assert int(state.step) == 4 and _same(state.params, _state(4).params)
        assert mngr.all_steps() == [2, 4]
        train_ckpt.save_state(mngr, state.replace(step=jnp.asarray(5, jnp.int32)))  # saving goes on from there
        mngr.wait_until_finished()
        assert mngr.all_steps() == [2, 4, 5]
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "6.damaged"))
    assert "step 6 is damaged" in caplog.text and "6.damaged" in caplog.text


def test_non_finite_state_is_never_saved(tmp_path):
    workdir = str(tmp_path / "w")
    write_steps(workdir, (2, 4))
    mesh = parallel.make_mesh()
    bad = _state(8, mesh)
    bad = bad.replace(ema_params=jax.tree.map(lambda x: x.at[(0,) * x.ndim].set(jnp.nan), bad.ema_params))
    with checkpoints.open_manager(workdir, keep=2, async_save=False) as mngr:
        with pytest.raises(NonFiniteError, match=r"step 8 holds NaN/inf values \(in ema_params/"):
            train_ckpt.save_state(mngr, bad)
        mngr.wait_until_finished()
        assert mngr.all_steps() == [2, 4]  # rotation (keep 2) deleted nothing


def test_params_checkpoint_with_nan_refused_and_old_nan_checkpoint_detected(tmp_path):
    params = checkpoints.expected_param_shapes(CFG)
    params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), params)
    leaf = jax.tree_util.tree_leaves_with_path(params)[0][0]
    nan = jax.tree_util.tree_map_with_path(lambda p, x: x * jnp.nan if p == leaf else x, params)
    with pytest.raises(ValueError, match="NaN/inf values .*refusing to save"):
        checkpoints.save_params_checkpoint(str(tmp_path / "a"), nan, CFG)
    assert not os.path.exists(os.path.join(tmp_path, "a", "checkpoints"))
    # A step written without checksums (older versions) is still checked for NaN/inf.
    import orbax.checkpoint as ocp

    wd = str(tmp_path / "b")
    checkpoints.write_config(wd, CFG)
    with checkpoints.open_manager(wd, keep=1, async_save=False) as mngr:
        mngr.save(0, args=ocp.args.Composite(params=ocp.args.StandardSave(nan), ema_params=ocp.args.StandardSave(nan),
                                             meta=ocp.args.JsonSave({"kind": "params", "step": 0})))
        mngr.wait_until_finished()
    with pytest.raises(checkpoints.DamagedCheckpoint, match="ema_params holds NaN/inf values"):
        checkpoints.load_params(wd)


def test_converted_checkpoint_round_trips_with_checksums(tmp_path):
    params = jax.tree.map(lambda s: jnp.full(s.shape, 0.5, s.dtype), checkpoints.expected_param_shapes(CFG))
    wd = checkpoints.save_params_checkpoint(str(tmp_path / "c"), params, CFG, step=3)
    with checkpoints.open_manager(wd, create=False) as mngr:
        sums = checkpoints.read_meta(mngr, 3)["checksums"]
    assert sums["params"] == sums["ema_params"] == checkpoints.checksums({"x": params})["x"]
    got, _ = checkpoints.load_params(wd)
    assert _same(got, params)

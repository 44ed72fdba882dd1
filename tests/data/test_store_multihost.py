"""2 CPU processes x 2 devices reading one slice store == 1 process x 4 devices."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from btd_jax import configs, parallel, train
from btd_jax.data.crops import sampling
from btd_jax.data.store import slice_store, sources
from _layouts import write_authors_ct

HERE = os.path.dirname(os.path.abspath(__file__))
CFG = configs.override(configs.get("tiny"), {
    "train.batch_size": 8, "train.grad_accum": 2, "train.num_steps": 3, "train.log_every": 1,
    "train.checkpoint_every": 3, "train.hflip": True, "train.ema_update_every": 1})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_reading_a_store_equal_one_process(tmp_path):
    write_authors_ct(tmp_path / "ct", patients=3, slices=3, h=40, w=36)
    sources.prepare(tmp_path / "ct", tmp_path / "st", size=16, progress=False)
    (tmp_path / "cfg.json").write_text(configs.to_json(CFG))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    addr = f"localhost:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "store_multihost_worker.py"),
                               "--coordinator_address", addr, "--num_processes", "2", "--process_id", str(i),
                               "--store", str(tmp_path / "st"), "--workdir", str(tmp_path / "multi"),
                               "--out", str(tmp_path / f"out{i}.npz")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        logs = [p.communicate(timeout=900)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"process {i} failed:\n{logs[i][-4000:]}"
    outs = [dict(np.load(tmp_path / f"out{i}.npz")) for i in range(2)]
    assert int(outs[0]["step"]) == int(outs[1]["step"]) == CFG.train.num_steps
    for k in outs[0]:
        np.testing.assert_array_equal(outs[0][k], outs[1][k], err_msg=k)

    tr, _ = sampling.split_slices(slice_store.SliceStore(tmp_path / "st"), 0.0)
    mesh = parallel.make_mesh(jax.devices()[:4])
    state = jax.device_get(train.train_and_evaluate(CFG, str(tmp_path / "single"), tr, mesh=mesh,
                                                    progress=False))
    single = {jax.tree_util.keystr(k): np.asarray(v) for k, v in
              jax.tree_util.tree_leaves_with_path({"params": state.params, "ema": state.ema_params})}
    assert set(single) == set(outs[0]) - {"step"}
    # As in the array-fed multi-host test: cross-process (gloo) all-reduces may add in another
    # order; weights whose gradient is zero up to rounding can move by up to ~lr under Adam.
    nu = state.opt_state[1][0].nu
    real = {jax.tree_util.keystr(k): np.sqrt(np.asarray(v)) > 1e-7 for k, v in
            jax.tree_util.tree_leaves_with_path({"params": nu, "ema": nu})}
    lr = CFG.train.learning_rate
    for k, v in single.items():
        np.testing.assert_allclose(v[real[k]], outs[0][k][real[k]], rtol=1e-4, atol=2e-5, err_msg=k)
        assert np.max(np.abs(v - outs[0][k])) <= 3 * lr, k

"""Multi-host training: 2 CPU processes x 2 devices (gloo) == 1 process x 4 devices."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from btd_jax import parallel, train
from multihost_common import CFG, data

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one_process_four_devices(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([HERE] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    addr = f"localhost:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "multihost_worker.py"), "--coordinator_address", addr,
                               "--num_processes", "2", "--process_id", str(i), "--workdir", str(tmp_path / "multi"),
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
    for k in outs[0]:  # every process holds the same replicated parameters, bit for bit
        np.testing.assert_array_equal(outs[0][k], outs[1][k], err_msg=k)

    # the same run in this process on 4 of its 8 devices
    mesh = parallel.make_mesh(jax.devices()[:4])
    state = train.train_and_evaluate(CFG, str(tmp_path / "single"), data(), mesh=mesh, progress=False)
    state = jax.device_get(state)
    single = {jax.tree_util.keystr(k): np.asarray(v) for k, v in
              jax.tree_util.tree_leaves_with_path({"params": state.params, "ema": state.ema_params})}
    assert set(single) == set(outs[0]) - {"step"}
    # Cross-process (gloo) and in-process all-reduces may add in another order: agreement to
    # rounding, except where the gradient is zero up to rounding (conv biases before one-channel
    # GroupNorm groups): Adam divides that noise by sqrt(v) + 1e-8, moving such weights by up to ~lr.
    nu = state.opt_state[1][0].nu
    real = {jax.tree_util.keystr(k): np.sqrt(np.asarray(v)) > 1e-7 for k, v in
            jax.tree_util.tree_leaves_with_path({"params": nu, "ema": nu})}
    lr = CFG.train.learning_rate
    for k, v in single.items():
        np.testing.assert_allclose(v[real[k]], outs[0][k][real[k]], rtol=1e-4, atol=2e-5, err_msg=k)
        assert np.max(np.abs(v - outs[0][k])) <= 3 * lr, k
    # the multi-process run wrote one orbax checkpoint that a single process can read
    ema, cfg = train.load_params(str(tmp_path / "multi"))
    assert cfg == CFG
    np.testing.assert_array_equal(np.asarray(ema["final_conv"]["kernel"]), outs[0]["['ema']['final_conv']['kernel']"])

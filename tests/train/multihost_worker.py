"""One process of the 2-process CPU training run of ``test_multihost.py`` (not a test module itself).

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python tests/multihost_worker.py \
        --coordinator_address localhost:PORT --num_processes 2 --process_id I --workdir DIR --out OUT.npz

Trains the shared tiny config for a few steps through ``train_and_evaluate`` (orbax checkpoint
included) and writes this process's copy of the final parameters to ``--out``.
"""

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_default_matmul_precision", "highest")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--coordinator_address", required=True)
    ap.add_argument("--num_processes", type=int, required=True)
    ap.add_argument("--process_id", type=int, required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from btd_jax import parallel

    assert parallel.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    import numpy as np

    from btd_jax import train
    from multihost_common import CFG, data

    assert jax.process_count() == args.num_processes and jax.device_count() == 2 * args.num_processes
    state = train.train_and_evaluate(CFG, args.workdir, data(), progress=False)
    flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in
            jax.tree_util.tree_leaves_with_path({"params": state.params, "ema": state.ema_params})}
    np.savez(args.out, step=np.asarray(state.step), **flat)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()

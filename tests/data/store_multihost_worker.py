"""One process of the 2-process run of ``test_store_multihost.py`` (not a test module itself).

    XLA_FLAGS=--xla_force_host_platform_device_count=2 python tests/data/store_multihost_worker.py \
        --coordinator_address localhost:PORT --num_processes 2 --process_id I --store DIR \
        --workdir DIR --out OUT.npz

Trains the test's tiny config from the slice store (fresh crops, each process cutting only the
crops of its own devices) and writes this process's copy of the final parameters to ``--out``.
"""

import argparse
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.config.update("jax_default_matmul_precision", "highest")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--coordinator_address", required=True)
    ap.add_argument("--num_processes", type=int, required=True)
    ap.add_argument("--process_id", type=int, required=True)
    ap.add_argument("--store", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from btd_jax import parallel

    assert parallel.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    import numpy as np

    from btd_jax import configs, train
    from btd_jax.data.crops import sampling
    from btd_jax.data.store import slice_store

    cfg = configs.load(os.path.join(os.path.dirname(args.out), "cfg.json"))
    assert jax.process_count() == args.num_processes and jax.device_count() == 2 * args.num_processes
    tr, _ = sampling.split_slices(slice_store.SliceStore(args.store), 0.0)
    state = train.train_and_evaluate(cfg, args.workdir, tr, progress=False)
    flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in
            jax.tree_util.tree_leaves_with_path({"params": state.params, "ema": state.ema_params})}
    np.savez(args.out, step=np.asarray(state.step), **flat)
    jax.distributed.shutdown()


if __name__ == "__main__":
    main()

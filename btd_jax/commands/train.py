"""``btd-jax train``: train the BTD diffusion model on real patches, resuming the workdir if it has a run.

    btd-jax train --config ct --data patches.npy --workdir runs/ct [--num_steps N --batch_size B --set key=value ...]

``--data`` takes a ``.npy``/``.npz`` array of patches in [0, 1], a folder of DICOM files (random
patch centres, ``--n_per_slice`` per slice) or a folder in the authors' test-set layout (its real
rows only). Validation patches come from ``--val_data`` or are held out by patient
(``--val_fraction``). ``--config`` is a preset name or a JSON config file; ``--set KEY=VALUE``
changes one field (parsed by its type). A workdir with a run continues from its newest checkpoint;
``--config`` may then be left out. Multi-host: start one process per host with
``--coordinator_address``, ``--num_processes`` and ``--process_id`` (or ``--distributed`` on TPU
pods / SLURM).
"""

from __future__ import annotations

import argparse
import os
import sys


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train the diffusion model (resumes a workdir)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None,
                   help="preset name (ct, mri, ct8, tiny, ...) or JSON config file; default: the workdir's")
    p.add_argument("--data", required=True, help=".npy/.npz patches in [0,1], a DICOM folder or a test-set folder")
    p.add_argument("--workdir", required=True, help="output directory: config.json, checkpoints/, metrics.jsonl")
    p.add_argument("--num_steps", "--num-steps", type=int, default=None, help="total optimiser steps (train.num_steps)")
    p.add_argument("--steps", dest="steps_alias", type=int, default=None, help="deprecated alias of --num_steps")
    p.add_argument("--batch_size", "--batch-size", type=int, default=None, help="global batch per micro-step")
    p.add_argument("--grad_accum", "--grad-accum", type=int, default=None, help="micro-batches per optimiser step")
    p.add_argument("--lr", type=float, default=None, help="learning rate (train.learning_rate)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="compute dtype (params stay f32)")
    p.add_argument("--hflip", action="store_true", help="random horizontal flips")
    p.add_argument("--seed", type=int, default=None, help="run seed (init, data order, noise)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override parsed by the field's type, e.g. --set train.eval_every=500 (repeatable)")
    p.add_argument("--val_data", "--val-data", default=None, help="held-out real patches (same formats as --data)")
    p.add_argument("--val_fraction", "--val-fraction", type=float, default=0.05,
                   help="fraction of patients held out for validation when --val_data is absent (0: none)")
    p.add_argument("--n_per_slice", "--n-per-slice", type=int, default=4, help="random patches per DICOM slice")
    p.add_argument("--stop_at", "--stop-at", type=int, default=None, help="stop (with a checkpoint) at this step")
    p.add_argument("--no_progress", "--no-progress", action="store_true", help="log lines instead of a progress bar")
    g = p.add_argument_group("multi-host")
    g.add_argument("--coordinator_address", default=None, help="host:port of process 0")
    g.add_argument("--num_processes", type=int, default=None)
    g.add_argument("--process_id", type=int, default=None)
    g.add_argument("--distributed", action="store_true", help="auto-detect the cluster (TPU pods, SLURM)")
    return p


def _config(args):
    from btd_jax import configs
    from btd_jax import checkpoints

    saved = os.path.isfile(os.path.join(args.workdir, checkpoints.CONFIG_FILE))
    if args.config is not None:
        cfg = configs.load(args.config)
    elif saved:
        cfg = checkpoints.read_config(args.workdir)
    else:
        raise ValueError(f"--config is required: {args.workdir!r} holds no run to continue")
    updates = configs.parse_assignments(args.overrides, "--set")
    flags = {"train.num_steps": _num_steps(args), "train.batch_size": args.batch_size, "train.grad_accum": args.grad_accum,
             "train.learning_rate": args.lr, "model.dtype": args.dtype, "train.seed": args.seed,
             "train.hflip": True if args.hflip else None}
    updates.update({k: v for k, v in flags.items() if v is not None})
    return configs.override(cfg, updates)


def _num_steps(args):
    """``--num_steps``, or the deprecated ``--steps`` with a one-line warning."""
    if args.steps_alias is None:
        return args.num_steps
    if args.num_steps is not None:
        raise ValueError("--steps is a deprecated alias of --num_steps; give only --num_steps")
    print("btd-jax train: --steps is deprecated, use --num_steps (optimiser steps)", file=sys.stderr)
    return args.steps_alias


def _real_patches(path: str, cfg, n_per_slice: int, seed: int):
    """(patches (N,H,W), patient ids or None) of real images from any --data format."""
    from btd_jax.data import datasets
    from btd_jax.train.feed import check_patches

    ps = datasets.load_data(path, modality=cfg.modality, size=cfg.image_size, n_per_slice=n_per_slice, seed=seed)
    x, cols = check_patches(ps.patches, cfg, path)[..., 0] if cfg.model.channels == 1 else ps.patches, ps.columns
    if isinstance(ps, datasets.TestSet):
        real = ps.labels == 0
        if not real.any():
            raise ValueError(f"{path}: the test set has no real patches to train on")
        print(f"{path}: training on the {int(real.sum())} real patches of the test set "
              f"({int((~real).sum())} fakes left out)", file=sys.stderr)
        x, cols = x[real], {k: v[real] for k, v in cols.items()}
    patients = cols.get("patient")
    return x, patients, cols.get("scanner")


def _hold_out(x, patients, scanners, fraction: float, seed: int):
    """Splits patches into (train, val); by patient when there are several, else by rows."""
    import numpy as np

    from btd_jax.data import datasets

    if fraction <= 0:
        return x, None
    if not 0 < fraction < 1:
        raise ValueError(f"--val_fraction must be in [0, 1), got {fraction}")
    if patients is not None and len(set(map(str, patients))) >= 2:
        part = datasets.split_patients(patients, scanners, fractions=(1 - fraction, fraction), seed=seed)
    else:
        part = np.zeros(len(x), np.int64)
        part[np.random.default_rng((seed, 1)).permutation(len(x))[:max(1, int(round(fraction * len(x))))]] = 1
    if part.min() == 1 or part.max() == 0:  # too few patients to split: fall back to rows
        return _hold_out(x, None, None, fraction, seed)
    return x[part == 0], x[part == 1]


_CHATTY = ("orbax", "xla_bridge")


def _quiet_orbax() -> None:
    """Keeps orbax's per-save and JAX's backend-probe INFO lines (absl logging) off the terminal."""
    import logging as pylogging

    from absl import logging

    class _Filter(pylogging.Filter):
        def filter(self, record):
            return record.levelno >= pylogging.WARNING or not any(n in record.pathname for n in _CHATTY)

    logging.get_absl_handler().addFilter(_Filter())


# XLA:CPU trains this U-Net ~1.5x faster with its own convolution kernels than through the YNN library
# fusion that jaxlib 0.10 enables by default (experiments/bench_train.py); CPU-only, GPUs ignore it.
_CPU_CONV_FLAG = "--xla_cpu_experimental_ynn_fusion_type=dot"


def run(args) -> int:
    if "ynn_fusion_type" not in os.environ.get("XLA_FLAGS", ""):  # read when the backend starts, below
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _CPU_CONV_FLAG).strip()
    from btd_jax import parallel

    _quiet_orbax()

    if args.distributed:
        os.environ["BTD_DISTRIBUTED"] = "1"
    # Before any computation: joins the other processes of a multi-host run (no-op otherwise).
    parallel.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)

    import jax

    from btd_jax import train

    cfg = _config(args)
    x, patients, scanners = _real_patches(args.data, cfg, args.n_per_slice, cfg.train.seed)
    if args.val_data:
        train_x, (val_x, _, _) = x, _real_patches(args.val_data, cfg, args.n_per_slice, cfg.train.seed + 1)
    else:
        train_x, val_x = _hold_out(x, patients, scanners, args.val_fraction, cfg.train.seed)
    if jax.process_index() == 0:
        print(f"btd-jax train: {cfg.name} ({cfg.model.version} dim={cfg.model.dim} {cfg.image_size}px, "
              f"{cfg.model.dtype}) on {len(train_x)} patches (+{0 if val_x is None else len(val_x)} validation), "
              f"{jax.device_count()} devices / {jax.process_count()} processes, batch {cfg.train.batch_size} x "
              f"{cfg.train.grad_accum}, {cfg.train.num_steps} steps -> {args.workdir}", file=sys.stderr)
    state = train.train_and_evaluate(cfg, args.workdir, train_x, val_x, stop_at=args.stop_at,
                                     progress=not args.no_progress)
    if jax.process_index() == 0:
        print(f"trained to step {int(state.step)}; checkpoints in {os.path.join(args.workdir, 'checkpoints')}")
    return 0

"""``btd-jax train``: train the BTD diffusion model on real patches, resuming the workdir if it has a run.

    btd-jax train --config ct --data patches.npy --workdir runs/ct [--num_steps N --batch_size B --set key=value ...]

``--data`` takes any input format (``--format``): a slice store (``btd-jax prepare``; local or
``gs://``) or the authors' CT training folder (``train_csv.csv``): a fresh random crop per batch
position every step, ``--workers`` worker processes cutting them; or a ``.npy`` array of patches in
[0, 1] (memory-mapped, never read whole), an ``.npz``, scans (DICOM, NIfTI, ...: random patch centres,
``--n_per_slice`` per slice), a folder of MRI images or a folder in the authors' test-set layout (its
real rows only). The work is :func:`btd_jax.train.train`. Validation patches come from ``--val_data`` or are held out by patient
(``--val_fraction``). ``--config`` is a preset name or a JSON config file; ``--set KEY=VALUE``
changes one field (parsed by its type). A workdir with a run continues from its newest checkpoint;
``--config`` may then be left out. ``--workdir`` must be new, empty or a btd-jax workdir, and never
(inside) the data; every number is checked at its flag and every ``--set`` by the config's own
validation, before any work. ``--lenient`` skips unreadable DICOM files, bad test-set rows and
unreadable slices of the authors' CT folder (listed in ``WORKDIR/skipped.csv``). Multi-host: start one
process per host with ``--coordinator_address``, ``--num_processes`` and ``--process_id`` (or
``--distributed`` on TPU pods / SLURM).
"""

from __future__ import annotations

import argparse
import logging as pylogging
import os
import sys

import jax
from absl import logging

from btd_jax import checkpoints, configs, train
from btd_jax.commands._flags import (
    existing_path, fraction_below_one, non_negative_int, positive_float, positive_int,
)
from btd_jax.commands._safety import LENIENT_HELP
from btd_jax.data import readers


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train the diffusion model (resumes a workdir)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None,
                   help="preset name (ct, mri, ct8, tiny, ...) or JSON config file; default: the workdir's")
    p.add_argument("--data", required=True, type=existing_path,
                   help=f"training data of a format --format names: {', '.join(readers.names('train'))}")
    p.add_argument("--format", default="auto", choices=("auto", *readers.names("train")),
                   help=f"format of --data (default auto: detected): {readers.help_text('train')}")
    p.add_argument("--workdir", required=True, help="output directory: config.json, checkpoints/, metrics.jsonl")
    p.add_argument("--num_steps", "--num-steps", type=positive_int, default=None,
                   help="total optimiser steps (train.num_steps)")
    p.add_argument("--steps", dest="steps_alias", type=positive_int, default=None, help="deprecated alias of --num_steps")
    p.add_argument("--batch_size", "--batch-size", type=positive_int, default=None, help="global batch per micro-step")
    p.add_argument("--grad_accum", "--grad-accum", type=positive_int, default=None,
                   help="micro-batches per optimiser step")
    p.add_argument("--lr", type=positive_float, default=None, help="learning rate (train.learning_rate)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="compute dtype (params stay f32)")
    p.add_argument("--hflip", action="store_true", help="random horizontal flips")
    p.add_argument("--seed", type=non_negative_int, default=None, help="run seed (init, data order, noise)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override parsed by the field's type, e.g. --set train.eval_every=500 (repeatable)")
    p.add_argument("--val_data", "--val-data", default=None, type=existing_path,
                   help="held-out real patches (same formats as --data)")
    p.add_argument("--val_fraction", "--val-fraction", type=fraction_below_one, default=0.05,
                   help="fraction of patients held out for validation when --val_data is absent (0: none)")
    p.add_argument("--n_per_slice", "--n-per-slice", type=positive_int, default=4,
                   help="random patches per DICOM slice")
    p.add_argument("--workers", type=non_negative_int, default=0,
                   help="slice stores: worker processes cutting crops (grain; 0: a background thread)")
    p.add_argument("--stop_at", "--stop-at", type=positive_int, default=None,
                   help="stop (with a checkpoint) at this step")
    p.add_argument("--no_progress", "--no-progress", action="store_true", help="log lines instead of a progress bar")
    p.add_argument("--lenient", action="store_true", help=LENIENT_HELP.format(where="WORKDIR/skipped.csv"))
    p.add_argument("--tensorboard", action="store_true",
                   help="also log metrics as TensorBoard events in WORKDIR/tensorboard (needs tensorboardX)")
    g = p.add_argument_group("multi-host")
    g.add_argument("--coordinator_address", default=None, help="host:port of process 0")
    g.add_argument("--num_processes", type=positive_int, default=None)
    g.add_argument("--process_id", type=non_negative_int, default=None)
    g.add_argument("--distributed", action="store_true", help="auto-detect the cluster (TPU pods, SLURM)")
    return p


def _config(args):
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
    return configs.override(cfg, updates)  # validates every field, --set ones included


def _num_steps(args):
    """``--num_steps``, or the deprecated ``--steps`` with a one-line warning."""
    if args.steps_alias is None:
        return args.num_steps
    if args.num_steps is not None:
        raise ValueError("--steps is a deprecated alias of --num_steps; give only --num_steps")
    print("btd-jax train: --steps is deprecated, use --num_steps (optimiser steps)", file=sys.stderr)
    return args.steps_alias


_CHATTY = ("orbax", "xla_bridge")


def _quiet_orbax() -> None:
    """Keeps orbax's per-save and JAX's backend-probe INFO lines (absl logging) off the terminal."""
    class _Filter(pylogging.Filter):
        def filter(self, record):
            return record.levelno >= pylogging.WARNING or not any(n in record.pathname for n in _CHATTY)

    logging.get_absl_handler().addFilter(_Filter())


def run(args) -> int:
    _quiet_orbax()
    cfg = _config(args)  # reads files only: no JAX computation before the multi-host start in train()
    state = train.train(cfg, args.workdir, args.data, val_data=args.val_data, val_fraction=args.val_fraction,
                        n_per_slice=args.n_per_slice, workers=args.workers, stop_at=args.stop_at,
                        progress=not args.no_progress, strict=not args.lenient, tensorboard=args.tensorboard,
                        fmt=args.format, coordinator_address=args.coordinator_address,
                        num_processes=args.num_processes, process_id=args.process_id, distributed=args.distributed)
    if jax.process_index() == 0:
        print(f"trained to step {int(state.step)}; checkpoints in {os.path.join(args.workdir, 'checkpoints')}")
    return 0

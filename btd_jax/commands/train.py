"""``btd-jax train``: train the BTD diffusion model on real patches, resuming the workdir if it has a run.

    btd-jax train --config ct --data patches.npy --workdir runs/ct [--num_steps N --batch_size B --set key=value ...]

``--data`` takes a slice store (``btd-jax prepare``; local or ``gs://``) or the authors' CT training
folder (``train_csv.csv``): a fresh random crop per batch position every step, ``--workers`` worker
processes cutting them; or a ``.npy`` array of patches in [0, 1] (memory-mapped, never read whole),
an ``.npz``, a folder of DICOM files (random patch centres, ``--n_per_slice`` per slice) or a folder
in the authors' test-set layout (its real rows only). Validation patches come from ``--val_data`` or are held out by patient
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
import numpy as np
from absl import logging

from btd_jax import checkpoints, configs, parallel, train
from btd_jax.commands._flags import (
    existing_path, fraction_below_one, non_negative_int, positive_float, positive_int,
)
from btd_jax.commands._safety import LENIENT_HELP, output_plan, report_skipped
from btd_jax.data import authors_train, crops, datasets, sources, validate
from btd_jax.data.errors import DataError
from btd_jax.data.records import Skipped
from btd_jax.train.feed import check_patches


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train the diffusion model (resumes a workdir)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None,
                   help="preset name (ct, mri, ct8, tiny, ...) or JSON config file; default: the workdir's")
    p.add_argument("--data", required=True, type=existing_path, help="slice store (btd-jax prepare), the authors' CT training folder, "
                   ".npy/.npz patches in [0,1], a DICOM folder or a test-set folder")
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
    cfg = configs.override(cfg, updates)  # validates every field, --set ones included
    if cfg.train.num_steps < 1:
        raise DataError(f"train.num_steps must be >= 1 to train, got {cfg.train.num_steps}")
    return cfg


def plan_outputs(args):
    """The workdir: new, empty, or one train (or convert) wrote; never the data or inside its folder."""
    local = [p for p in (args.data, args.val_data) if p and "://" not in p]
    plan = output_plan(args, inputs=local)
    plan.folder(args.workdir, resume=(checkpoints.CONFIG_FILE,))
    return plan.check()


def _num_steps(args):
    """``--num_steps``, or the deprecated ``--steps`` with a one-line warning."""
    if args.steps_alias is None:
        return args.num_steps
    if args.num_steps is not None:
        raise ValueError("--steps is a deprecated alias of --num_steps; give only --num_steps")
    print("btd-jax train: --steps is deprecated, use --num_steps (optimiser steps)", file=sys.stderr)
    return args.steps_alias


def _real_patches(path: str, cfg, n_per_slice: int, seed: int, skipped=None):
    """(patches (N,H,W), patient ids or None) of real images from any --data format; with a list
    ``skipped``, bad files and rows are left out and recorded there."""
    ps = datasets.load_data(path, modality=cfg.modality, size=cfg.image_size, n_per_slice=n_per_slice, seed=seed,
                            strict=skipped is None)
    if skipped is not None:
        skipped.extend(ps.skipped)
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


def _split_rows(n: int, patients, scanners, fraction: float, seed: int):
    """(train rows, validation rows or None) of n patches; by patient when there are several."""
    rows = np.arange(n)
    if fraction <= 0:
        return rows, None
    if not 0 < fraction < 1:
        raise ValueError(f"--val_fraction must be in [0, 1), got {fraction}")
    part = datasets.holdout_parts(n, patients, scanners, fraction, seed)
    return rows[part == 0], rows[part == 1]


def _readable_rows(sset, size: int, skipped, seen):
    """``sset`` of the authors' CT folder without the rows whose slice cannot be read (headers only)
    or is smaller than the ``size`` px crop, each recorded once in ``skipped``; none left is an error."""
    if sset is None or not hasattr(sset.src, "layout"):  # a slice store: checked when it was written
        return sset
    bad = []
    for row in np.unique(sset.rows).tolist():
        if row not in seen:
            try:
                h, w = sset.src.shape(row)
                why = None if min(h, w) >= size else f"a {h}x{w} slice, smaller than the {size} px crop"
            except DataError as e:
                why = str(e)
            seen[row] = None
            if why is not None:
                where = os.path.join(sset.src.path, authors_train.CT_CSV)
                seen[row] = Skipped(f"{where} row {sset.src.layout.records[row].get('csv_row', row)}", why)
                skipped.append(seen[row])
        if seen[row] is not None:
            bad.append(row)
    rows = sset.rows[~np.isin(sset.rows, bad)]
    if len(rows) == 0:
        raise DataError(f"{sset.src.path}: no readable slice left ({len(bad)} unreadable or too small)")
    return crops.SliceSet(sset.src, rows)


def _slice_data(args, cfg, skipped=None):
    """--data as a slice store or the authors' CT folder -> (train, validation, note); None otherwise.
    Unreadable slices of the authors' folder are an error naming the first, or with a list ``skipped``
    are left out and recorded there."""
    src = sources.open_slices(args.data, cfg.image_size)
    if src is None:
        return None
    if args.val_data:
        vsrc = sources.open_slices(args.val_data, cfg.image_size)
        if vsrc is None:
            raise ValueError(f"--val_data {args.val_data}: with a slice store as --data, give a slice store "
                             "(or the authors' CT folder) or use --val_fraction")
        tr, _ = crops.split_slices(src, 0.0)
        va, _ = crops.split_slices(vsrc, 0.0)
    else:
        tr, va = crops.split_slices(src, args.val_fraction, cfg.train.seed)
    # Headers are checked up front in both modes: a bad slice must not stop a long run when first drawn.
    found, seen = [], {}
    tr = _readable_rows(tr, cfg.image_size, found, seen)
    va = _readable_rows(va, cfg.image_size, found, seen if not args.val_data else {})
    if found and skipped is None:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise DataError(f"{found[0].item}: {found[0].reason}{more}; --lenient skips such slices")
    if skipped is not None:
        skipped.extend(found)
    n_pat = len(set(src.column("patient", "").tolist()))
    note = (f"fresh crops from {len(src)} slices of {n_pat} patients ({len(tr)} training rows, "
            f"{0 if va is None else len(va)} validation slices)")
    return tr, va, note


def _array_data(args, cfg, skipped=None):
    """Patches (memory-mapped for .npy) split into (data, train rows, validation patches, note)."""
    if args.data.lower().endswith(".npy"):
        x = validate.load_npy(args.data, mmap=True)
        # Shape now (cheap); values are checked chunk by chunk when training starts.
        validate.check_shape(x, args.data, size=cfg.image_size, channels=cfg.model.channels,
                             owner=f"config {cfg.name!r}")
        patients = scanners = None
    else:
        x, patients, scanners = _real_patches(args.data, cfg, args.n_per_slice, cfg.train.seed, skipped)
    if args.val_data:
        train_rows, (val_x, _, _) = None, _real_patches(args.val_data, cfg, args.n_per_slice, cfg.train.seed + 1,
                                                        skipped)
    else:
        train_rows, val_rows = _split_rows(len(x), patients, scanners, args.val_fraction, cfg.train.seed)
        val_x = None if val_rows is None else np.asarray(x[np.sort(val_rows)[:2048]])
    n = len(x) if train_rows is None else len(train_rows)
    return x, train_rows, val_x, f"{n} patches (+{0 if val_x is None else len(val_x)} validation)"


_CHATTY = ("orbax", "xla_bridge")


def _quiet_orbax() -> None:
    """Keeps orbax's per-save and JAX's backend-probe INFO lines (absl logging) off the terminal."""
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
    _quiet_orbax()

    if args.distributed:
        os.environ["BTD_DISTRIBUTED"] = "1"
    # Before any computation: joins the other processes of a multi-host run (no-op otherwise).
    parallel.initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)

    cfg = _config(args)
    if jax.process_index() == 0:
        plan_outputs(args)
    skipped = [] if args.lenient else None
    sliced = _slice_data(args, cfg, skipped)
    if sliced is not None:
        train_x, val_x, what = sliced
        train_rows = None
    else:
        train_x, train_rows, val_x, what = _array_data(args, cfg, skipped)
    if skipped and jax.process_index() == 0:
        report_skipped("train", args.workdir, skipped, folder=True)
    if jax.process_index() == 0:
        print(f"btd-jax train: {cfg.name} ({cfg.model.version} dim={cfg.model.dim} {cfg.image_size}px, "
              f"{cfg.model.dtype}) on {what}, "
              f"{jax.device_count()} devices / {jax.process_count()} processes, batch {cfg.train.batch_size} x "
              f"{cfg.train.grad_accum}, {cfg.train.num_steps} steps -> {args.workdir}", file=sys.stderr)
    state = train.train_and_evaluate(cfg, args.workdir, train_x, val_x, stop_at=args.stop_at,
                                     progress=not args.no_progress, train_rows=train_rows,
                                     workers=args.workers, tensorboard=args.tensorboard)
    if jax.process_index() == 0:
        print(f"trained to step {int(state.step)}; checkpoints in {os.path.join(args.workdir, 'checkpoints')}")
    return 0

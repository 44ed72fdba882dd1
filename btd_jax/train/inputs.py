"""Training from any input (``btd-jax train``): route the data, hold out validation, then train.

    state = btd_jax.train.train(cfg, "runs/ct", "stores/lidc", workers=8)      # a slice store: fresh crops
    state = btd_jax.train.train(cfg, "runs/ct", "patches.npy", val_fraction=0.05)
    state = btd_jax.train.train(cfg, "runs/ct", patches)                        # an array (N, H, W) in [0, 1]

What ``data`` holds decides how it is read (:mod:`btd_jax.data.readers`): a format with a crop source
(a slice store, the authors' CT folder) gives a fresh random crop per batch position every step; a
``.npy`` of patches is memory-mapped, never read whole; every other format gives patches
(:func:`~btd_jax.data.readers.read_patches`: an ``.npz``, scans as ``n_per_slice`` random patches per
slice, a test set's real rows). Validation comes from ``val_data`` or is held out by patient
(``val_fraction``, stratified by scanner).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, List, Optional, Union

import jax
import numpy as np

from btd_jax import checkpoints, parallel
from btd_jax.configs import Config
from btd_jax.data import readers, validate
from btd_jax.data.crops.authors_ct import CT_CSV
from btd_jax.data.crops.sampling import SliceSet, split_slices
from btd_jax.data.errors import DataError
from btd_jax.data.records import Skipped, TestSet
from btd_jax.data.splits import holdout_parts
from btd_jax.runtime.outputs import OutputPlan, write_skipped
from btd_jax.train.feed import check_patches
from btd_jax.train.loop import train_and_evaluate
from btd_jax.train.state import TrainState

__all__ = ["TrainingData", "training_data", "train", "SKIPPED_FILE"]

SKIPPED_FILE = "skipped.csv"  # in the workdir: what strict=False left out of the data
Data = Union[str, "os.PathLike[str]", np.ndarray, SliceSet]


@dataclasses.dataclass
class TrainingData:
    """What training reads: ``train`` patches (or a :class:`SliceSet` of slices to crop), ``rows`` of them
    to use (None: all), ``val`` patches or slices (None: no validation), what was ``skipped`` and a
    one-line ``note`` of the sizes."""

    train: Any
    val: Any
    rows: Optional[np.ndarray]
    note: str
    skipped: List[Skipped]


def _readable_rows(sset: Optional[SliceSet], size: int, skipped: List[Skipped], seen: dict) -> Optional[SliceSet]:
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
                where = os.path.join(sset.src.path, CT_CSV)
                seen[row] = Skipped(f"{where} row {sset.src.layout.records[row].get('csv_row', row)}", why)
                skipped.append(seen[row])
        if seen[row] is not None:
            bad.append(row)
    rows = sset.rows[~np.isin(sset.rows, bad)]
    if len(rows) == 0:
        raise DataError(f"{sset.src.path}: no readable slice left ({len(bad)} unreadable or too small)")
    return SliceSet(sset.src, rows)


def _slice_data(src: Any, val_data: Optional[Data], val_fraction: float, cfg: Config, strict: bool
                ) -> TrainingData:
    """Slices of a crop source; unreadable slices of the authors' folder are an error naming the first,
    or (``strict=False``) left out and listed."""
    if val_data is not None:
        vsrc = val_data if isinstance(val_data, SliceSet) else readers.open_slices(val_data, cfg.image_size)
        if vsrc is None:
            raise ValueError(f"validation data {val_data}: with slices as training data, give slices too (a slice "
                             "store or the authors' CT folder) or hold out a validation fraction")
        tr, _ = split_slices(src, 0.0)
        va = vsrc if isinstance(vsrc, SliceSet) else split_slices(vsrc, 0.0)[0]
    else:
        tr, va = split_slices(src, val_fraction, cfg.train.seed)
    # Headers are checked up front in both modes: a bad slice must not stop a long run when first drawn.
    found: List[Skipped] = []
    seen: dict = {}
    tr = _readable_rows(tr, cfg.image_size, found, seen)
    va = _readable_rows(va, cfg.image_size, found, seen if val_data is None else {})
    if found and strict:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise DataError(f"{found[0].item}: {found[0].reason}{more}; --lenient skips such slices (strict=False in Python)")
    n_pat = len(set(src.column("patient", "").tolist()))
    note = (f"fresh crops from {len(src)} slices of {n_pat} patients ({len(tr)} training rows, "
            f"{0 if va is None else len(va)} validation slices)")
    return TrainingData(tr, va, None, note, found)


def _patches(data: Data, cfg: Config, n_per_slice: int, seed: int, strict: bool, fmt: Any, skipped: List[Skipped]):
    """(patches, patient ids or None, scanners or None) of real images from any patch-giving input."""
    if isinstance(data, np.ndarray):
        return check_patches(data, cfg, "training data"), None, None
    if str(data).lower().endswith(".npy") and readers.resolve(data, fmt).name == "npy":
        x = validate.load_npy(data, mmap=True)
        # Shape now (cheap); values are checked chunk by chunk when training starts.
        validate.check_shape(x, str(data), size=cfg.image_size, channels=cfg.model.channels,
                             owner=f"config {cfg.name!r}")
        return x, None, None
    ps = readers.read_patches(data, fmt=fmt, modality=cfg.modality, size=cfg.image_size, n_per_slice=n_per_slice,
                              seed=seed, strict=strict)
    skipped.extend(ps.skipped)
    x, cols = check_patches(ps.patches, cfg, str(data)), ps.columns
    x = x[..., 0] if cfg.model.channels == 1 else x
    if isinstance(ps, TestSet):
        real = ps.labels == 0
        if not real.any():
            raise ValueError(f"{data}: the test set has no real patches to train on")
        print(f"{data}: training on the {int(real.sum())} real patches of the test set "
              f"({int((~real).sum())} fakes left out)", file=sys.stderr)
        x, cols = x[real], {k: v[real] for k, v in cols.items()}
    return x, cols.get("patient"), cols.get("scanner")


def training_data(data: Data, cfg: Config, *, val_data: Optional[Data] = None, val_fraction: float = 0.05,
                  n_per_slice: int = 4, strict: bool = True, fmt: Any = "auto") -> TrainingData:
    """What :func:`train` trains and validates on (see the module doc); ``strict=False`` leaves out
    unreadable files, rows and slices and lists them in ``.skipped``."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if isinstance(data, SliceSet):  # already chosen rows of slices: as they are
        return TrainingData(data, val_data, None, f"fresh crops from {len(data)} slice rows", [])
    src = None
    if not isinstance(data, np.ndarray):
        f = readers.resolve(data, fmt)
        src = None if f.slices is None else f.slices(os.fspath(data), readers.ReadOptions(size=cfg.image_size))
    if src is not None:
        return _slice_data(src, val_data, val_fraction, cfg, strict)
    skipped: List[Skipped] = []
    x, patients, scanners = _patches(data, cfg, n_per_slice, cfg.train.seed, strict, fmt, skipped)
    rows = None
    if val_data is not None:
        val_x = _patches(val_data, cfg, n_per_slice, cfg.train.seed + 1, strict, "auto", skipped)[0]
    elif val_fraction > 0:
        part = holdout_parts(len(x), patients, scanners, val_fraction, cfg.train.seed)
        rows, val_rows = np.flatnonzero(part == 0), np.flatnonzero(part == 1)
        val_x = np.asarray(x[np.sort(val_rows)[:2048]])
    else:
        val_x = None
    n = len(x) if rows is None else len(rows)
    return TrainingData(x, val_x, rows, f"{n} patches (+{0 if val_x is None else len(val_x)} validation)", skipped)


def _check_workdir(workdir: str, data: Data, val_data: Optional[Data]) -> None:
    """The workdir: new, empty, or one train (or convert) wrote; never the data or inside its folder."""
    local = [os.fspath(p) for p in (data, val_data) if isinstance(p, (str, os.PathLike)) and "://" not in str(p)]
    plan = OutputPlan("train", inputs=local)
    plan.folder(workdir, resume=(checkpoints.CONFIG_FILE,))
    plan.check()


def train(cfg: Config, workdir: str, data: Data, *, val_data: Optional[Data] = None, val_fraction: float = 0.05,
          n_per_slice: int = 4, workers: int = 0, stop_at: Optional[int] = None, progress: bool = True,
          strict: bool = True, tensorboard: bool = False, fmt: Any = "auto",
          coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
          process_id: Optional[int] = None, distributed: bool = False) -> TrainState:
    """Trains ``cfg`` on ``data`` in ``workdir`` (resuming it), from any input (see the module doc).

    Before any JAX computation it prefers XLA's own CPU convolution kernels
    (:func:`btd_jax.parallel.prefer_cpu_convolution_kernels`) and joins a multi-host run when asked
    (``coordinator_address``/``num_processes``/``process_id``, or ``distributed``: auto-detected on TPU
    pods and SLURM; :func:`btd_jax.parallel.initialize_distributed`). The workdir must be new, empty or
    a btd-jax workdir, never (inside) the data. ``strict=False`` leaves out unreadable files, rows and
    slices and lists them in ``WORKDIR/skipped.csv``. ``val_data``/``val_fraction``/``n_per_slice``: see
    :func:`training_data`; ``workers``, ``stop_at``, ``progress``, ``tensorboard``: see
    :func:`~btd_jax.train.train_and_evaluate`.
    """
    parallel.prefer_cpu_convolution_kernels()  # read when the backend starts, below
    parallel.initialize_distributed(coordinator_address, num_processes, process_id, auto=distributed)
    if cfg.train.num_steps < 1:
        raise DataError(f"train.num_steps must be >= 1 to train, got {cfg.train.num_steps}")
    main = jax.process_index() == 0
    if main:
        _check_workdir(workdir, data, val_data)
    td = training_data(data, cfg, val_data=val_data, val_fraction=val_fraction, n_per_slice=n_per_slice,
                       strict=strict, fmt=fmt)
    if main:
        listed = write_skipped(os.path.join(workdir, SKIPPED_FILE), td.skipped)
        for s in td.skipped:
            print(f"skipped {s.item}: {s.reason}", file=sys.stderr)
        if listed:
            print(f"skipped {len(td.skipped)} item(s) of the data; list -> {listed}", file=sys.stderr)
        print(f"training {cfg.name} ({cfg.model.version} dim={cfg.model.dim} {cfg.image_size}px, {cfg.model.dtype}) on "
              f"{td.note}, {jax.device_count()} devices / {jax.process_count()} processes, batch "
              f"{cfg.train.batch_size} x {cfg.train.grad_accum}, {cfg.train.num_steps} steps -> {workdir}",
              file=sys.stderr)
    return train_and_evaluate(cfg, workdir, td.train, td.val, stop_at=stop_at, progress=progress,
                              train_rows=td.rows, workers=workers, tensorboard=tensorboard)

"""The training loop: resume, feed, step, log, validate, checkpoint.

Progress goes to the terminal (a tqdm bar with loss, steps/s, images/s and ETA) and, as JSON lines,
to ``workdir/metrics.jsonl``; only process 0 writes. Checkpoints are saved asynchronously; the
manager is always closed in ``finally``, which waits for saves in flight, so a crash or Ctrl-C never
loses a checkpoint that was started, and an interrupted run saves the step it reached.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh

from btd_jax.configs import Config
from btd_jax.data.crops import CropSpec, SliceSet, fixed_crops
from btd_jax.parallel import make_mesh
from btd_jax.train import checkpoints as ckpt
from btd_jax.train.feed import CropFeed, TrainFeed, ValFeed, check_patches
from btd_jax.train.state import TrainState, create_train_state
from btd_jax.train.step import make_eval_step, make_train_step

__all__ = ["train_and_evaluate", "METRICS_FILE"]

METRICS_FILE = "metrics.jsonl"


class _Metrics:
    """Appends JSON lines to ``workdir/metrics.jsonl`` and shows progress (process 0 only)."""

    def __init__(self, workdir: str, start: int, end: int, progress: bool):
        self.main = jax.process_index() == 0
        self.file = open(os.path.join(workdir, METRICS_FILE), "a") if self.main else None
        self.bar = None
        if self.main and progress:
            from tqdm import tqdm

            self.bar = tqdm(total=end, initial=start, unit="step", dynamic_ncols=True, file=sys.stderr,
                            mininterval=1.0, smoothing=0.1)

    def write(self, record: Dict[str, Any], show: bool = False) -> None:
        if not self.main:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        text = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
        if self.bar is not None and show:
            self.bar.write(text)
        elif self.bar is None:
            print(text, file=sys.stderr, flush=True)

    def advance(self, n: int, postfix: Optional[str] = None) -> None:
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.file is not None:
            self.file.close()


def _format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s"


def _prepare_workdir(workdir: str, cfg: Config) -> None:
    os.makedirs(workdir, exist_ok=True)
    has_ckpt = ckpt.latest_step(workdir) is not None
    if os.path.isfile(os.path.join(workdir, ckpt.CONFIG_FILE)):
        ckpt.check_compatible(ckpt.read_config(workdir), cfg, workdir)
    elif has_ckpt:
        raise ValueError(f"workdir {workdir!r} has checkpoints but no {ckpt.CONFIG_FILE}; refusing to resume blindly")
    ckpt.write_config(workdir, cfg)


def _check_batch(cfg: Config, mesh: Mesh) -> None:
    n_dev = mesh.devices.size
    if cfg.train.batch_size % n_dev:
        raise ValueError(f"train.batch_size {cfg.train.batch_size} must divide by the {n_dev} devices of the mesh")


def train_and_evaluate(cfg: Config, workdir: str, train_data, val_data=None, *, mesh: Optional[Mesh] = None,
                       stop_at: Optional[int] = None, progress: bool = True, async_checkpoints: bool = True,
                       max_val_images: int = 2048, train_rows: Optional[np.ndarray] = None,
                       workers: int = 0) -> TrainState:
    """Trains ``cfg`` on ``train_data`` in ``workdir``, resuming from its newest checkpoint if any.

    Args:
      cfg: the full config; ``cfg.train`` sets steps, batch, accumulation, EMA, logging/eval/checkpoint
        periods (``log_every``, ``eval_every``, ``checkpoint_every``) and ``keep_checkpoints``.
      workdir: output directory: ``config.json``, ``checkpoints/``, ``metrics.jsonl``.
      train_data: patches ``(N, H, W)`` or ``(N, H, W, C)`` in [0, 1] (NumPy, may be memory-mapped:
        checked in chunks, never copied whole), or a :class:`btd_jax.data.crops.SliceSet` of slices
        (a slice store, the authors' CT folder) to cut a fresh crop from per position and step.
        In a multi-process run every process passes the same dataset and reads only its rows.
      val_data: optional held-out real patches (or a ``SliceSet``: one fixed crop per slice); their
        loss (online and EMA weights, fixed t and noise) is logged every ``eval_every`` steps and at
        the end.
      mesh: device mesh (default: every device of every process).
      stop_at: stop (with a checkpoint) once this step is reached, before ``num_steps``; for
        pre-emptible jobs and tests. A later call continues from there.
      progress: show a progress bar on process 0 (otherwise log lines via absl).
      async_checkpoints: write checkpoints in the background.
      max_val_images: validation uses at most this many patches.
      train_rows: train on these rows of an array ``train_data`` only (no copy).
      workers: crops from slices are cut in this many worker processes (0: a background thread).
    Returns:
      the final :class:`TrainState` (replicated over the mesh).
    """
    tc = cfg.train
    mesh = mesh or make_mesh()
    _check_batch(cfg, mesh)
    if isinstance(train_data, SliceSet):
        feed = CropFeed(train_data, cfg, mesh, workers=workers)
    else:
        feed = TrainFeed(check_patches(train_data, cfg, "training data"), cfg, mesh, rows=train_rows)
    val = None
    if isinstance(val_data, SliceSet):
        val_data = fixed_crops(val_data, CropSpec(cfg.image_size), tc.seed, max_val_images)
    if val_data is not None:
        val_x = check_patches(val_data[:max_val_images], cfg, "validation data")
        val = ValFeed(val_x, cfg, mesh, chunk=tc.batch_size, max_images=max_val_images)
    _prepare_workdir(workdir, cfg)
    images_per_step = tc.grad_accum * tc.batch_size
    mngr = ckpt.open_manager(workdir, keep=tc.keep_checkpoints, async_save=async_checkpoints)
    metrics: Optional[_Metrics] = None
    state: Optional[TrainState] = None
    saved_step = -1
    try:
        if mngr.latest_step() is not None:
            state = ckpt.restore_state(mngr, cfg, mesh, where=workdir)
            saved_step = mngr.latest_step()
            if jax.process_index() == 0:
                print(f"resuming {workdir} from step {int(state.step)}", file=sys.stderr, flush=True)
        else:
            state = create_train_state(cfg, jax.random.PRNGKey(tc.seed), mesh)
        start = int(state.step)
        end = tc.num_steps if stop_at is None else min(int(stop_at), tc.num_steps)
        step_fn = make_train_step(cfg, mesh)
        eval_fn = make_eval_step(cfg, mesh) if val is not None else None
        metrics = _Metrics(workdir, start, max(end, start), progress)
        window: List[Dict[str, jax.Array]] = []
        t_window, n_window = time.perf_counter(), 0
        for s, images in zip(range(start, end), feed.batches(range(start, end))):
            state, m = step_fn(state, images)
            done = s + 1
            window.append(m)
            n_window += 1
            if done == start + 1:  # exclude compilation from the throughput figures
                jax.block_until_ready(m["loss"])
                t_window, n_window = time.perf_counter(), 0
            if done % tc.log_every == 0 or done == end:
                stacked = jax.device_get({k: jnp.stack([w[k] for w in window]) for k in window[0]})
                elapsed = time.perf_counter() - t_window
                rate = n_window / elapsed if n_window and elapsed > 0 else float("nan")
                record = {"step": done, "loss": float(np.mean(stacked["loss"])),
                          "grad_norm": float(np.mean(stacked["grad_norm"])), "lr": float(stacked["lr"][-1]),
                          "steps_per_s": rate, "images_per_s": rate * images_per_step,
                          "eta_s": (end - done) / rate if rate == rate and rate > 0 else None}
                metrics.write(record)
                metrics.advance(len(window), f"loss {record['loss']:.4f} | {rate:.2f} step/s "
                                f"{rate * images_per_step:.0f} img/s | ETA {_format_eta(record['eta_s'] or 0)}")
                window, t_window, n_window = [], time.perf_counter(), 0
            if val is not None and (done % tc.eval_every == 0 or done == end):
                metrics.write({"step": done, "val_loss": val.loss(eval_fn, state.params),
                               "val_loss_ema": val.loss(eval_fn, state.ema_params)}, show=True)
            if done % tc.checkpoint_every == 0 or done == end:
                ckpt.save_state(mngr, state)
                saved_step = done
            if (val is not None and done % tc.eval_every == 0) or done % tc.checkpoint_every == 0:
                # Both waited for the device; restart the clock so throughput counts training only.
                t_window, n_window = time.perf_counter(), 0
        mngr.wait_until_finished()
    except KeyboardInterrupt:
        # Save where we are unless that step is already on disk; the state is whole between steps.
        if state is not None and int(state.step) != saved_step:
            logging.warning("interrupted: saving step %d", int(state.step))
            ckpt.save_state(mngr, state)
        raise
    finally:
        mngr.close()  # waits for saves in flight
        if metrics is not None:
            metrics.close()
    return state

"""The training loop: resume, feed, step, log, validate, checkpoint.

Progress goes to the terminal (a tqdm bar with loss, steps/s, images/s and ETA) and, as JSON lines,
to ``workdir/metrics.jsonl``; only process 0 writes. Checkpoints are saved asynchronously; the
manager is always closed in ``finally``, which waits for saves in flight, so a crash never loses a
checkpoint that was started.

Safety: the workdir is locked for the run; SIGTERM or Ctrl-C finishes the current step, saves it and
raises :class:`Stopped`; a NaN/inf loss or gradient norm stops the run with :class:`NonFiniteError`
before anything non-finite is saved, so rotation never deletes the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from btd_jax.configs import Config
from btd_jax.data.crops.sampling import CropSpec, SliceSet, fixed_crops
from btd_jax.parallel import data_sharding, make_mesh
from btd_jax.runtime import GracefulStop, Stopped, lock_workdir
from btd_jax.runtime.finite import NonFiniteError
from btd_jax.train import checkpoints as ckpt
from btd_jax.train.feed import CropFeed, TrainFeed, ValFeed, check_patches
from btd_jax.train.state import TrainState, create_train_state
from btd_jax.train.step import make_eval_step, make_train_step

__all__ = ["train_and_evaluate", "METRICS_FILE"]

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"  # event files beside metrics.jsonl (train_and_evaluate(tensorboard=True))


class _Metrics:
    """Appends JSON lines to ``workdir/metrics.jsonl`` and shows progress (process 0 only)."""

    def __init__(self, workdir: str, start: int, end: int, progress: bool, tensorboard: bool = False):
        self.main = jax.process_index() == 0
        self.file = open(os.path.join(workdir, METRICS_FILE), "a") if self.main else None
        self.tb = _summary_writer(os.path.join(workdir, TENSORBOARD_DIR)) if self.main and tensorboard else None
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
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.tb.add_scalar(f"train/{k}", v, record["step"])
            self.tb.flush()
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
        if self.tb is not None:
            self.tb.close()


def _summary_writer(logdir: str):
    """A TensorBoard event writer (tensorboardX, else torch's); optional extra ``tensorboard``."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("TensorBoard logging needs tensorboardX: pip install 'btd_jax[tensorboard]'") from None
    return SummaryWriter(logdir)


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


def _checkpoints_note(workdir: str, saved_step: int) -> str:
    if saved_step < 0:
        return "no checkpoint was written"
    return f"the newest good checkpoint is step {saved_step} in {os.path.join(workdir, ckpt.CHECKPOINT_DIR)}"


def _check_finite(stacked: Dict[str, np.ndarray], done: int, saved_step: int, workdir: str) -> None:
    """Raises NonFiniteError naming the first step of the window ending at ``done`` with a NaN/inf loss or gradient."""
    ok = np.isfinite(stacked["loss"]) & np.isfinite(stacked["grad_norm"])
    if ok.all():
        return
    i = int(np.argmin(ok))
    raise NonFiniteError(
        f"training diverged at step {done - len(ok) + 1 + i} (loss {float(stacked['loss'][i]):.4g}, gradient norm "
        f"{float(stacked['grad_norm'][i]):.4g}); stopped without saving it, {_checkpoints_note(workdir, saved_step)}. "
        "Lower the learning rate (--lr, train.learning_rate) or check the data")


def _make_probe(cfg: Config, mesh: Mesh):
    """``probe(params, images) -> loss`` on the first micro-batch of a step's images at fixed t and noise.

    A step's loss is computed from the weights before its update, so an update that overflows the
    weights (still finite) shows only one step later; a checkpoint is written only if this is finite.
    """
    eval_fn = make_eval_step(cfg, mesh)
    data, timesteps = data_sharding(mesh), cfg.diffusion.timesteps

    @functools.partial(jax.jit, out_shardings=(data,) * 4)
    def inputs(images):
        x = images[0]
        n = x.shape[0]
        t = jnp.arange(n, dtype=jnp.int32) * timesteps // n
        return x, t, jax.random.normal(jax.random.PRNGKey(0), x.shape, jnp.float32), jnp.ones((n,), jnp.float32)

    return lambda params, images: float(eval_fn(params, *inputs(images)))


def _stop_requested(stop: GracefulStop, at_boundary: bool) -> bool:
    """Whether to stop after this step; processes of a multi-host run agree at log boundaries."""
    if jax.process_count() == 1:
        return stop.requested
    return at_boundary and bool(np.any(multihost_utils.process_allgather(np.asarray(stop.requested))))


def train_and_evaluate(cfg: Config, workdir: str, train_data, val_data=None, *, mesh: Optional[Mesh] = None,
                       stop_at: Optional[int] = None, progress: bool = True, async_checkpoints: bool = True,
                       max_val_images: int = 2048, train_rows: Optional[np.ndarray] = None,
                       workers: int = 0, tensorboard: bool = False) -> TrainState:
    """Trains ``cfg`` on ``train_data`` in ``workdir``, resuming from its newest good checkpoint if any.

    Args:
      cfg: the full config; ``cfg.train`` sets steps, batch, accumulation, EMA, logging/eval/checkpoint
        periods (``log_every``, ``eval_every``, ``checkpoint_every``) and ``keep_checkpoints``.
      workdir: output directory: ``config.json``, ``checkpoints/``, ``metrics.jsonl`` (and ``.lock``
        while a run holds it).
      train_data: patches ``(N, H, W)`` or ``(N, H, W, C)`` in [0, 1], or any finite values in the
        model's units with ``diffusion.auto_normalize`` off (NumPy, may be memory-mapped:
        checked in chunks, never copied whole), or a :class:`btd_jax.data.crops.sampling.SliceSet` of slices
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
      tensorboard: also write the logged metrics as TensorBoard events to ``workdir/tensorboard``
        (needs tensorboardX, the optional extra ``tensorboard``).
    Returns:
      the final :class:`TrainState` (replicated over the mesh).
    Raises:
      WorkdirBusy: another live process trains in ``workdir``.
      Stopped: SIGTERM/SIGINT arrived; the step reached was saved (``.signum``, ``.step``).
      NonFiniteError: the loss or gradient became NaN/inf; nothing non-finite was saved.
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
    if isinstance(feed, TrainFeed) and feed.n < tc.grad_accum * tc.batch_size and jax.process_index() == 0:
        print(f"warning: {feed.n} training patches are fewer than one step's {tc.grad_accum * tc.batch_size} "
              f"(batch {tc.batch_size} x accumulation {tc.grad_accum}): every step repeats patches",
              file=sys.stderr, flush=True)
    with contextlib.ExitStack() as guards:
        if jax.process_index() == 0:
            guards.enter_context(lock_workdir(workdir))
        stop = guards.enter_context(GracefulStop())
        _prepare_workdir(workdir, cfg)
        state, stopped_at = _train(cfg, workdir, feed, val, mesh, stop_at, progress, async_checkpoints, stop,
                                   tensorboard)
    if stopped_at is not None:
        raise Stopped(f"stopped by {stop.name} after step {stopped_at}; saved it in "
                      f"{os.path.join(workdir, ckpt.CHECKPOINT_DIR)} (run the same command to continue)",
                      stop.signum, stopped_at)
    return state


def _train(cfg: Config, workdir: str, feed, val: Optional[ValFeed], mesh: Mesh,
           stop_at: Optional[int], progress: bool, async_checkpoints: bool, stop: GracefulStop,
           tensorboard: bool = False):
    """The loop of :func:`train_and_evaluate` -> (state, step it stopped at on a signal or None)."""
    tc = cfg.train
    images_per_step = tc.grad_accum * tc.batch_size
    mngr = ckpt.open_manager(workdir, keep=tc.keep_checkpoints, async_save=async_checkpoints)
    metrics: Optional[_Metrics] = None
    state: Optional[TrainState] = None
    saved_step, stopped_at = -1, None
    try:
        if mngr.latest_step() is not None:
            state = ckpt.restore_state(mngr, cfg, mesh, where=workdir, set_aside_damaged=True)
            saved_step = int(state.step)
            if jax.process_index() == 0:
                print(f"resuming {workdir} from step {saved_step}", file=sys.stderr, flush=True)
        else:
            state = create_train_state(cfg, jax.random.PRNGKey(tc.seed), mesh)
        start = int(state.step)
        end = tc.num_steps if stop_at is None else min(int(stop_at), tc.num_steps)
        step_fn = make_train_step(cfg, mesh)
        eval_fn = make_eval_step(cfg, mesh) if val is not None else None
        probe = _make_probe(cfg, mesh)
        metrics = _Metrics(workdir, start, max(end, start), progress, tensorboard)
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
            log_now = done % tc.log_every == 0 or done == end
            stop_now = _stop_requested(stop, log_now)
            save_now = done % tc.checkpoint_every == 0 or done == end or stop_now
            if log_now or save_now:  # the only places that wait for the device: check the steps since the last
                stacked = jax.device_get({k: jnp.stack([w[k] for w in window]) for k in window[0]})
                _check_finite(stacked, done, saved_step, workdir)
            if log_now:
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
            if save_now:
                try:
                    if not np.isfinite(probe(state.params, images)):
                        raise NonFiniteError(f"the weights after step {done} give a NaN/inf loss; not saved")
                    ckpt.save_state(mngr, state)  # refuses NaN/inf anywhere in the state
                except NonFiniteError as e:
                    raise NonFiniteError(f"training diverged: {e}, {_checkpoints_note(workdir, saved_step)}. "
                                         "Lower the learning rate (--lr, train.learning_rate)") from None
                saved_step = done
            if stop_now:
                stopped_at = done
                break
            if (val is not None and done % tc.eval_every == 0) or save_now:
                # Both waited for the device; restart the clock so throughput counts training only.
                t_window, n_window = time.perf_counter(), 0
        mngr.wait_until_finished()
    except KeyboardInterrupt:  # a second Ctrl-C: save where we are if that is whole and finite
        try:
            if state is not None and int(state.step) != saved_step:
                logging.warning("interrupted: saving step %d", int(state.step))
                ckpt.save_state(mngr, state)
        except Exception as e:  # buffers of a step in flight, or a non-finite state: nothing safe to save
            logging.warning("interrupted: nothing saved (%s)", e)
        raise
    finally:
        mngr.close()  # waits for saves in flight
        if metrics is not None:
            metrics.close()
    return state, stopped_at

"""Every measurement in one run and one JSON: what an accelerator host is worth to btd_jax.

    report = suite.run_suite(suite.SuiteSettings(), command="btd-jax bench --suite")

Parts (``SuiteSettings.parts``), in order:

* ``scoring``: BTD d = 1 patches/s of the preset (``ct``: 96 px, dim 32) for each dtype and batch
  size, GFLOP/s by XLA's cost analysis and its share of the chip's peak (points not started within
  ``scoring_budget_s`` are listed as skipped, so that slow compilation cannot blow the run's time);
* ``training``: one optimiser step at global batch ``train_batch`` in ``train_dtype``: images/s
  and the share of peak FLOP/s (cost analysis of the compiled step / step time / peak);
* ``input``: a slice store of 512 x 512 slices prepared on the host, training crops/s from it (one
  background thread), and how many times the measured training step's images/s that is;
* ``screening``: seconds per 512 x 512 slice of the default screening cascade (random weights) and of
  exhaustive stride-16 search of one slice, extrapolated to a 300-slice volume.

The peak is :data:`~btd_jax.benchmarks.devices.PEAK_BF16_FLOPS` (None for unknown chips).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from typing import Any, Dict, Optional, Tuple

import numpy as np

from btd_jax import configs
from btd_jax.benchmarks import devices, inputs, screening, training
from btd_jax.benchmarks.scoring import JaxBench
from btd_jax.timing import load_average

__all__ = ["PARTS", "SuiteSettings", "run_suite", "rerun_command"]

PARTS = ("scoring", "training", "input", "screening")


@dataclasses.dataclass(frozen=True)
class SuiteSettings:
    """What the suite runs; the defaults are the full run (at most ~6 minutes on one GPU/TPU host)."""

    config: str = "ct"
    parts: Tuple[str, ...] = PARTS
    batches: Tuple[int, ...] = (64, 256, 1024)
    dtypes: Tuple[str, ...] = ("float32", "bfloat16")
    min_time: float = 3.0
    micro_batch: Any = "auto"
    train_batch: int = 128
    train_dtype: str = "bfloat16"
    train_steps: int = 5
    store_slices: int = 32
    crop_steps: int = 20
    screen_slices: int = 8
    screen_size: int = 512
    screen_batch: Optional[int] = None
    devices: Optional[int] = None  # the first this many local devices (None: all)
    scoring_budget_s: float = 150.0  # no new scoring point starts after this long (each point compiles)
    seed: int = 0

    def __post_init__(self):
        unknown = set(self.parts) - set(PARTS)
        if unknown or not self.parts:
            raise ValueError(f"suite parts must be some of {PARTS}, got {self.parts}")
        for name in ("train_batch", "train_steps", "store_slices", "crop_steps", "screen_slices", "screen_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.batches or min(self.batches) < 1:
            raise ValueError(f"batch sizes must be positive, got {self.batches}")


def _scoring(s: SuiteSettings, cfg, peak: Optional[float], n_dev: int) -> Dict[str, Any]:
    x = np.random.default_rng(s.seed).uniform(
        size=(max(s.batches), cfg.image_size, cfg.image_size, cfg.model.channels)).astype(np.float32)
    jb = JaxBench(cfg, list(s.dtypes), s.seed, s.micro_batch, s.devices)
    rows, skipped, t0 = [], [], time.perf_counter()
    for b in s.batches:
        for dtype in s.dtypes:
            if rows and time.perf_counter() - t0 > s.scoring_budget_s:
                skipped.append({"batch": b, "dtype": dtype})
                continue
            row, _ = jb.run(dtype, b, x, s.min_time, verbose=False)
            row["share_of_peak"] = row["gflop_per_s"] * 1e9 / (peak * n_dev) if peak else None
            rows.append(row)
    best = {d: max((r["patches_per_s"] for r in rows if r["dtype"] == d), default=None) for d in s.dtypes}
    return {"config": cfg.name, "image_size": cfg.image_size, "dim": cfg.model.dim, "rows": rows,
            "best_patches_per_s": best, "skipped_for_time": skipped}


def _training(s: SuiteSettings, cfg, peak: Optional[float]) -> Dict[str, Any]:
    cfg = configs.override(cfg, {"train.batch_size": s.train_batch, "train.grad_accum": 1,
                                 "model.dtype": s.train_dtype})
    return training.time_train_step(cfg, s.train_steps, warmup=1, peak_flops=peak, seed=s.seed, devices=s.devices)


def _input(s: SuiteSettings, cfg, train_images_per_s: Optional[float]) -> Dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="btd_bench_input_")
    try:
        store = f"{tmp}/store"
        out = {"prepare": inputs.prepare_store(f"{tmp}/slices", store, s.store_slices)}
        out["crops"] = inputs.crops_per_s(store, s.crop_steps, workers=(0,), accum=1, batch=s.train_batch,
                                          size=cfg.image_size)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rate = out["crops"]["workers_0"]["crops_per_s"]
    out["crops_per_s"] = rate
    out["headroom_over_training"] = rate / train_images_per_s if train_images_per_s else None
    return out


def _screening(s: SuiteSettings, cfg) -> Dict[str, Any]:
    scorer = screening.random_scorer(cfg, cfg.model.dtype, s.seed, s.devices)
    vol, source = screening.ct_volume(s.screen_slices)
    o = max((vol.shape[1] - s.screen_size) // 2, 0)  # the middle: the slice's corners are air
    vol = vol[:, o:o + s.screen_size, o:o + s.screen_size]
    center = cfg.score.center if cfg.score.center is not None else cfg.image_size // 3  # the paper's 32 of 96
    timed = screening.time_screening(scorer, vol, {"default": {}}, center, s.screen_batch,
                                     warm_slices=min(2, len(vol)))["default"]
    ex = screening.time_exhaustive(scorer, vol[0], center)
    per_slice = timed["seconds_per_slice"]
    return {"volume": source, "slices": len(vol), "slice": list(vol.shape[1:]), "center": center,
            "weights": "random (speed does not depend on them)", "cascade": timed,
            "seconds_per_slice": per_slice, "exhaustive_stride16": ex,
            "speedup_vs_exhaustive": ex["seconds_per_slice"] / per_slice,
            "volume_300_s": 300 * per_slice, "exhaustive_volume_300_s": 300 * ex["seconds_per_slice"]}


def rerun_command(s: SuiteSettings, out: Optional[str] = None) -> str:
    """The command line that reruns the suite ``s``, every setting spelled out."""
    micro = "none" if s.micro_batch is None else s.micro_batch
    flags = {"config": s.config, "dtypes": ",".join(s.dtypes), "min_time": s.min_time, "micro_batch": micro,
             "seed": s.seed, "suite_batches": ",".join(map(str, s.batches)), "parts": ",".join(s.parts),
             "train_batch": s.train_batch, "train_dtype": s.train_dtype, "train_steps": s.train_steps,
             "store_slices": s.store_slices, "crop_steps": s.crop_steps, "screen_slices": s.screen_slices,
             "screen_size": s.screen_size, "devices": s.devices, "out": out}
    return " ".join(["btd-jax bench --suite"] + [f"--{k} {v}" for k, v in flags.items() if v is not None])


def run_suite(s: SuiteSettings, command: str = "", progress: bool = True) -> Dict[str, Any]:
    """Runs the parts of ``s``; returns the report (environment, settings, command, one key per part)."""
    t_all = time.perf_counter()
    env = devices.environment()
    peak = env["peak_bf16_flops_per_device"]
    cfg = configs.load(s.config)
    report: Dict[str, Any] = {"benchmark": "suite", "command": command, "environment": env,
                              "settings": dataclasses.asdict(s), "seconds": {}}
    for part in (p for p in PARTS if p in s.parts):
        t0 = time.perf_counter()
        if part == "scoring":
            report[part] = _scoring(s, cfg, peak, min(s.devices or env["local_devices"], env["local_devices"]))
        elif part == "training":
            report[part] = _training(s, cfg, peak)
        elif part == "input":
            report[part] = _input(s, cfg, report.get("training", {}).get("images_per_s"))
        else:
            report[part] = _screening(s, cfg)
        report["seconds"][part] = time.perf_counter() - t0
        if progress:
            print(f"bench --suite: {part} done in {report['seconds'][part]:.1f} s", flush=True)
    report["seconds"]["total"] = time.perf_counter() - t_all
    report["load_end"] = load_average()
    return report

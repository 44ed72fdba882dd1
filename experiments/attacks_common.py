"""Shared stages of the generative-attack experiments (cached in a work folder, rerun = reuse).

* :func:`demo_data`: the demo's data exactly as ``btd-jax demo`` builds it (seed 0).
* :func:`detector`: a BTD DDPM trained on the demo's real training patches (demo model; the
  timestep law decides the recipe: ``lowt`` = the demo, ``uniform`` = the paper's, ``truncated`` =
  the ``-fast`` presets').
* :func:`attackers`: the attacker's DDPM (every t) and cGAN, trained on CT patients the detector
  never sees (``btd_jax.attacks.attacker.ATTACKER_SOURCES``; :mod:`btd_jax.attacks.suite`).
* :func:`attack_sets`: the four generative test sets on the demo's test region, in the authors'
  layout under one root (RePaint-CT-Remove, SDEdit-CT-Inject, cGAN-CT-Inject, cGAN-CT-Remove).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Tuple

from btd_jax import configs, demo, train
from btd_jax.attacks import suite
from btd_jax.data import datasets
from btd_jax.data import demo_data as demo_data_lib

def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def demo_data(work: Path, n_test: int = 150, seed: int = 0):
    """The demo's data folder (train.npz + testset/), built once."""
    d = work / "data"
    if not (d / "data.json").is_file():
        log("building the demo data")
        demo_data_lib.build(d, "CT", size=32, n_train=4096, n_test=n_test, seed=seed)
    return d


def detector(work: Path, t_sampling: str = "lowt", steps: int = 800, seed: int = 0) -> Path:
    """A demo-preset DDPM trained ``steps`` steps with ``t_sampling`` on the demo training patches."""
    wd = work / f"detector_{t_sampling}_{steps}"
    if not (wd / "done.json").is_file():
        cfg = demo.demo_config("demo", steps, "CT", seed)
        if t_sampling != cfg.train.t_sampling:
            cfg = configs.override(cfg, {"name": f"demo-{t_sampling}", "train.t_sampling": t_sampling})
        log(f"training the {t_sampling} detector for {steps} steps in {wd}")
        t0 = time.perf_counter()
        train.train_and_evaluate(cfg, str(wd), datasets.load_patches(demo_data(work) / "train.npz"), progress=False,
                                 async_checkpoints=False)
        (wd / "done.json").write_text(json.dumps({"seconds": time.perf_counter() - t0, "steps": steps}))
    return wd


def attackers(work: Path, cfg: suite.SuiteConfig = suite.SuiteConfig(), seed: int = 0) -> Dict[str, Any]:
    """Trains (once) the attacker's DDPM and cGAN under ``work/attacker``; returns the training info."""
    out = work / "attacker"
    info_path = out / "info.json"
    if not info_path.is_file():
        log(f"training the attackers (DDPM {cfg.ddpm_steps} steps, cGAN {cfg.gan_steps} steps)")
        info = suite.train_attackers(out, cfg, 32, seed)
        info_path.write_text(json.dumps(info, indent=2, default=str))
    return json.loads(info_path.read_text())


def attack_sets(work: Path, cfg: suite.SuiteConfig = suite.SuiteConfig(), seed: int = 0,
                root_name: str = "attacks") -> Tuple[Path, Dict[str, float]]:
    """Writes (once) the four generative test sets on the demo's test regions under ``work/root_name``."""
    root = work / root_name
    done = root / "done.json"
    if not done.is_file():
        log(f"attacking the demo's test regions: {cfg.n} sites per data set")
        sources = demo_data_lib.load_sources("CT", test_frac=0.35, min_width=32)  # as demo_data.build
        seconds = suite.write_sets(root, suite.load_attackers(work / "attacker", cfg), sources, cfg.n, seed)
        done.write_text(json.dumps(seconds))
    return root, json.loads(done.read_text())


def ensure_dir(p: str | os.PathLike) -> Path:
    p = Path(p)
    p.mkdir(parents=True, exist_ok=True)
    return p

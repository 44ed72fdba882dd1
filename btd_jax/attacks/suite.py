"""The demo's generative deepfakes: attacker models trained on their own patients, four test sets.

    res = suite.build("out/generative", demo_data.load_sources("CT", 0.35, 32), SuiteConfig(), seed=0)
    ts = datasets.load_testset(res["root"], "CT", "Inject", size=32)   # SDEdit-CT-Inject, cGAN-CT-Inject

Rows (indicator columns of the authors' layout under ``out/testset``): ``RePaint-CT-Remove``
(diffusion in-painting from noise), ``SDEdit-CT-Inject`` (a painted nodule finished by the DDPM),
``cGAN-CT-Inject`` and ``cGAN-CT-Remove`` (the CT-GAN-style GAN). The attacker's DDPM (every t, the
demo's U-Net) and cGAN train on :data:`btd_jax.attacks.attacker.ATTACKER_SOURCES`, patients the
detector never sees; the attacks run on the ``test`` regions of the given sources. Training stops
early (and says so) when a time budget would be exceeded.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from btd_jax import train
from btd_jax.attacks import attacker, cgan, pipeline, repaint
from btd_jax.data import demo_data

__all__ = ["ROWS", "SuiteConfig", "QUICK", "train_attackers", "load_attackers", "write_sets", "build"]

ROWS: Tuple[Tuple[str, str], ...] = (("repaint", "removal"), ("sdedit", "injection"), ("cgan", "injection"),
                                     ("cgan", "removal"))


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
    """Attacker sizes and budgets: the DDPM is the ``ddpm_preset``'s U-Net trained ``ddpm_steps`` at
    every t; RePaint and SDEdit sample with ``repaint_options`` / ``sdedit_options``; ``n`` attacked
    and ``n`` real sites per row."""

    ddpm_preset: str = "demo"
    ddpm_steps: int = 1500
    gan_steps: int = 600
    gan_features: int = 16
    n_patches: int = 4096
    n: int = 150
    strength: float = 0.15
    repaint_options: repaint.RePaintOptions = repaint.REMOVAL
    sdedit_options: repaint.RePaintOptions = repaint.INJECTION


# A pipeline check in seconds (tests, ``btd-jax demo --quick``): 16 px, a few steps.
QUICK = SuiteConfig(ddpm_preset="demo-quick", ddpm_steps=4, gan_steps=3, gan_features=8, n_patches=64, n=6,
                    repaint_options=repaint.RePaintOptions(steps=4, jump_length=2, resamplings=2),
                    sdedit_options=repaint.RePaintOptions(steps=4, jump_length=2, resamplings=2))


def train_attackers(out: str | Path, cfg: SuiteConfig, size: int, seed: int = 0,
                    budget_s: Optional[float] = None) -> Dict[str, Any]:
    """Trains the attacker DDPM (``out/attacker_ddpm``) and cGAN (``out/attacker_gan``) on the
    attacker's own patients; ``budget_s`` is shared (the DDPM gets two thirds)."""
    out = Path(out)
    t0 = time.perf_counter()
    patches = attacker.attacker_patches(attacker.attacker_sources("CT"), size, cfg.n_patches, seed=seed + 1)
    ddpm_cfg = attacker.ddpm_config(cfg.ddpm_preset, cfg.ddpm_steps, seed=seed + 1)
    ddpm_budget = None if budget_s is None else budget_s * 2.0 / 3.0
    info = {"patients": sorted({s.patient for s in attacker.attacker_sources("CT")}), "n_patches": len(patches),
            "ddpm": attacker.train_ddpm(out / "attacker_ddpm", patches, ddpm_cfg, budget_s=ddpm_budget)}
    left = None if budget_s is None else max(budget_s - (time.perf_counter() - t0), 1.0)
    gan_cfg = cgan.GanConfig(image_size=size, hole=size // 2, features=cfg.gan_features,
                             disc_features=cfg.gan_features, num_steps=cfg.gan_steps)
    gan = attacker.train_gan(out / "attacker_gan", patches, gan_cfg, seed=seed, budget_s=left)
    info["gan"] = {k: v for k, v in gan.items() if k != "losses"}
    info["gan"]["final_losses"] = dict(zip(("step", "g_loss", "d_loss", "l1"), gan["losses"][-1]))
    info["seconds"] = time.perf_counter() - t0
    return info


def load_attackers(out: str | Path, cfg: SuiteConfig) -> Dict[str, pipeline.Attacker]:
    """{'repaint', 'sdedit', 'cgan'} attackers from the models :func:`train_attackers` wrote."""
    out = Path(out)
    params, ddpm_cfg = train.load_params(str(out / "attacker_ddpm"))
    gp, gcfg = cgan.load(out / "attacker_gan")
    return {"repaint": pipeline.Attacker("repaint", params, ddpm_cfg, options=cfg.repaint_options),
            "sdedit": pipeline.Attacker("sdedit", params, ddpm_cfg, options=cfg.sdedit_options, strength=cfg.strength),
            "cgan": pipeline.Attacker("cgan", gp, gcfg)}


def write_sets(root: str | Path, attackers: Dict[str, pipeline.Attacker], sources: Sequence[demo_data.SourceImage],
               n: int, seed: int = 0, rows: Sequence[Tuple[str, str]] = ROWS) -> Dict[str, float]:
    """Runs every (method, attack) of ``rows`` on the sources' test regions; seconds per data set."""
    seconds = {}
    for method, attack in rows:
        t0 = time.perf_counter()
        items, masks = pipeline.attack_sources(attackers[method], attack, sources, n, seed=seed, modality="CT",
                                               region="test")
        pipeline.write_layout(root, "CT", attack, items, masks, pipeline.METHODS[method])
        seconds[pipeline.dataset_name(method, "CT", attack)] = time.perf_counter() - t0
    return seconds


def build(out: str | Path, sources: Sequence[demo_data.SourceImage], cfg: SuiteConfig = SuiteConfig(),
          size: int = 32, seed: int = 0, budget_s: Optional[float] = None) -> Dict[str, Any]:
    """Train the attackers and write the four generative test sets under ``out/testset``."""
    out = Path(out)
    t0 = time.perf_counter()
    info = train_attackers(out, cfg, size, seed, budget_s)
    seconds = write_sets(out / "testset", load_attackers(out, cfg), sources, cfg.n, seed)
    return {"root": out / "testset", "attacker": info, "attack_seconds": seconds,
            "seconds": time.perf_counter() - t0}

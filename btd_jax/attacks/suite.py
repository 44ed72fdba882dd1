"""Generative deepfake test sets: attacker models trained on the attacker's data, four sets per modality.

    res = suite.build("out/generative", demo_data.load_sources("CT", 0.35, 32), SuiteConfig(), seed=0)
    ts = datasets.load_testset(res["root"], "CT", "Inject", size=32)   # SDEdit-CT-Inject, cGAN-CT-Inject
    cfg = dataclasses.replace(suite.FULL, modality="MRI", attacker_data="same")   # as published, MR

Rows (indicator columns of the authors' layout under ``out/testset``): ``RePaint-<CT|MRI>-Remove``
(diffusion in-painting from noise), ``SDEdit-<CT|MRI>-Inject`` (a painted nodule finished by the
DDPM), ``cGAN-<CT|MRI>-Inject`` and ``cGAN-<CT|MRI>-Remove`` (the CT-GAN-style GAN). The attacker's
DDPM (every t, the demo's U-Net) and cGAN train on ``cfg.attacker_data``
(:func:`btd_jax.attacks.attacker.training_sources`: by default patients the detector never sees);
the attacks run on the ``test`` regions of the given sources. :class:`SuiteConfig`'s defaults are
the demo's budget (the ``fast`` sampling preset); :data:`FULL` samples as published. Training stops
early (and says so) when a time budget would be exceeded.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from btd_jax import configs, train
from btd_jax.attacks import attacker, cgan, demo_data, pipeline, repaint, sdedit
from btd_jax.data import preprocess

__all__ = ["ROWS", "SuiteConfig", "QUICK", "FULL", "gan_config", "train_attackers", "load_attackers", "write_sets", "build"]

ROWS: Tuple[Tuple[str, str], ...] = (("repaint", "removal"), ("sdedit", "injection"), ("cgan", "injection"),
                                     ("cgan", "removal"))


@dataclasses.dataclass(frozen=True)
class SuiteConfig:
    """Attacker sizes and budgets: the DDPM is the ``ddpm_preset``'s U-Net trained ``ddpm_steps`` at
    every t; RePaint and SDEdit sample with ``repaint_options`` / ``sdedit_options`` (default the
    ``fast`` preset: the demo's budget); ``n`` attacked and ``n`` real sites per row; the attacker
    trains on ``attacker_data`` ('unseen' | 'same' | a path) of ``modality``."""

    ddpm_preset: str = "demo"
    ddpm_steps: int = 1500
    gan_steps: int = 600
    gan_features: int = 16
    n_patches: int = 4096
    n: int = 150
    strength: float = 0.15
    repaint_options: repaint.RePaintOptions = repaint.PRESETS["fast"]["repaint"]
    sdedit_options: repaint.RePaintOptions = repaint.PRESETS["fast"]["sdedit"]
    modality: str = "CT"
    attacker_data: str = "unseen"


# RePaint and SDEdit as published (the ``full`` preset): ~30x the demo's sampling cost.
FULL = SuiteConfig(repaint_options=repaint.PRESETS["full"]["repaint"],
                   sdedit_options=repaint.PRESETS["full"]["sdedit"])


# A pipeline check in seconds (tests, ``btd-jax demo --quick``): 16 px, a few steps.
QUICK = SuiteConfig(ddpm_preset="demo-quick", ddpm_steps=4, gan_steps=3, gan_features=8, n_patches=64, n=6,
                    repaint_options=repaint.RePaintOptions(steps=4, jump_length=2, resamplings=2),
                    sdedit_options=repaint.RePaintOptions(steps=4, jump_length=2, resamplings=2))


def gan_config(size: int, features: int, steps: int, modality: str = "CT") -> cgan.GanConfig:
    """The attacker cGAN for ``size`` px patches of ``modality`` (MRI nodules in [0, 1] units)."""
    mod = "CT" if preprocess.canonical_modality(modality) == "CT" else "MRI"
    return cgan.GanConfig(image_size=size, hole=size // 2, features=features, disc_features=features,
                          num_steps=steps, modality=mod,
                          contrast_hu=sdedit.CONTRAST_HU if mod == "CT" else sdedit.CONTRAST_MRI)


def train_attackers(out: str | Path, cfg: SuiteConfig, size: int, seed: int = 0,
                    budget_s: Optional[float] = None) -> Dict[str, Any]:
    """Trains the attacker DDPM (``out/attacker_ddpm``) and cGAN (``out/attacker_gan``) on
    ``cfg.attacker_data``; ``budget_s`` is shared (the DDPM gets two thirds)."""
    out = Path(out)
    t0 = time.perf_counter()
    sources = attacker.training_sources(cfg.attacker_data, cfg.modality)
    patches = attacker.attacker_patches(sources, size, cfg.n_patches, seed=seed + 1,
                                        min_body=attacker.min_body(cfg.modality))
    base = configs.override(configs.get(cfg.ddpm_preset), {"modality": cfg.modality})
    ddpm_cfg = attacker.ddpm_config(base, cfg.ddpm_steps, seed=seed + 1)
    ddpm_budget = None if budget_s is None else budget_s * 2.0 / 3.0
    info = {"attacker_data": cfg.attacker_data, "modality": cfg.modality,
            "patients": sorted({s.patient for s in sources}), "n_patches": len(patches),
            "ddpm": attacker.train_ddpm(out / "attacker_ddpm", patches, ddpm_cfg, budget_s=ddpm_budget)}
    left = None if budget_s is None else max(budget_s - (time.perf_counter() - t0), 1.0)
    gan_cfg = gan_config(size, cfg.gan_features, cfg.gan_steps, cfg.modality)
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
               n: int, seed: int = 0, rows: Sequence[Tuple[str, str]] = ROWS, modality: str = "CT",
               **kwargs) -> Dict[str, float]:
    """Runs every (method, attack) of ``rows`` on the sources' test regions; seconds per data set.
    Extra keywords go to :func:`pipeline.attack_sources` (e.g. ``batch_size``)."""
    seconds = {}
    for method, attack in rows:
        t0 = time.perf_counter()
        items, masks = pipeline.attack_sources(attackers[method], attack, sources, n, seed=seed, modality=modality,
                                               region="test", min_body=attacker.min_body(modality), **kwargs)
        pipeline.write_layout(root, modality, attack, items, masks, pipeline.METHODS[method])
        seconds[pipeline.dataset_name(method, modality, attack)] = time.perf_counter() - t0
    return seconds


def build(out: str | Path, sources: Sequence[demo_data.SourceImage], cfg: SuiteConfig = SuiteConfig(),
          size: int = 32, seed: int = 0, budget_s: Optional[float] = None) -> Dict[str, Any]:
    """Train the attackers and write the four generative test sets under ``out/testset``."""
    out = Path(out)
    t0 = time.perf_counter()
    info = train_attackers(out, cfg, size, seed, budget_s)
    seconds = write_sets(out / "testset", load_attackers(out, cfg), sources, cfg.n, seed, modality=cfg.modality)
    return {"root": out / "testset", "attacker": info, "attack_seconds": seconds,
            "seconds": time.perf_counter() - t0}

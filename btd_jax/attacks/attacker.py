"""The attacker's side: its own real slices and its own models, disjoint from the detector's data.

The detector of ``btd-jax demo`` trains on the left part of every slice of 693_UNCR (CQ500 head CT,
patient CQ500-CT-310) and CT_small (body CT). The attacker here never sees those patients: it trains
on the two other CT patients that pydicom ships (``ATTACKER_SOURCES``: an abdominal CT of
PANCREAS_0001 and a head CT of JXD191021006, both JPEG 2000 lossless, decoded offline by Pillow).
For MRI it uses a Siemens MR slice of patient 021234567 (the demo's detector uses MR2, emri and
MR_small).

Models: :func:`train_ddpm` fits a DDPM for RePaint/SDEdit (the detector's demo DDPM trains only at
low t, so it cannot generate from noise: the attacker needs every t) and :func:`train_gan` the
cGAN of :mod:`btd_jax.attacks.cgan`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import jax
import numpy as np
from scipy import ndimage as ndi

from btd_jax import configs, train
from btd_jax.attacks import cgan
from btd_jax.configs import Config
from btd_jax.data import demo_data, dicom, preprocess
from btd_jax.data.errors import DataError

__all__ = ["ATTACKER_SOURCES", "as_sources", "attacker_sources", "attacker_patches", "ddpm_config", "train_ddpm",
           "train_gan"]

# (file shipped with pydicom / pydicom-data, label) per modality: patients the detector never sees.
ATTACKER_SOURCES = {
    "CT": (("explicit_VR-UN.dcm", "PANCREAS_0001-abdomen"), ("J2K_pixelrep_mismatch.dcm", "JXD191021006-head")),
    "MRI": (("MR-SIEMENS-DICOM-WithOverlays.dcm", "Siemens-021234567"),),
}
_CT_BODY_HU = -500.0


def as_sources(images: np.ndarray, modality: str, names: Sequence[str], scanners: Sequence[str],
               patients: Sequence[str], frames: Sequence[int]) -> List[demo_data.SourceImage]:
    """(S, H, W) slices in tamper units (HU for CT; [0, 1] for MRI) -> SourceImages whose train and
    test regions are the whole slice, with a body mask (CT: > -500 HU; MRI: > 10% of the 99th pct)."""
    images = np.asarray(images, np.float32)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3:
        raise DataError(f"slices: expected (H, W) or (S, H, W), got shape {images.shape}")
    ct = preprocess.canonical_modality(modality) == "CT"
    out = []
    for i, img in enumerate(images):
        unit = preprocess.window_ct(img) if ct else np.clip(img, 0.0, 1.0)
        body = img > _CT_BODY_HU if ct else img > 0.1 * np.percentile(img, 99)
        body = ndi.binary_opening(body, iterations=2)
        whole = np.ones(img.shape, bool)
        out.append(demo_data.SourceImage(names[i], scanners[i], patients[i], int(frames[i]), img, unit, body,
                                         whole, whole.copy()))
    return out


def attacker_sources(modality: str = "CT") -> List[demo_data.SourceImage]:
    """The attacker's own slices (``ATTACKER_SOURCES``), read offline, as SourceImages."""
    mod = "CT" if preprocess.canonical_modality(modality) == "CT" else "MRI"
    out = []
    for filename, label in ATTACKER_SOURCES[mod]:
        sl = dicom.read_slice(demo_data.source_path(filename))
        px = sl.pixels.astype(np.float32)
        images = px if mod == "CT" else preprocess.normalize_mri(px)
        n = len(images)
        out += as_sources(images, mod, [Path(filename).stem] * n, [label] * n, [sl.patient_id or label] * n,
                          range(n))
    return out


def attacker_patches(sources: Sequence[demo_data.SourceImage], size: int, n: int, seed: int = 0,
                     min_body: float = 0.9) -> np.ndarray:
    """``n`` augmented real patches (N, size, size) in [0, 1] from ``sources`` (all of each slice)."""
    rng = np.random.default_rng(seed)
    return demo_data.train_patches(sources, size, n, rng, augment=True, min_body=min_body)["patches"]


def ddpm_config(base: str | Config = "demo", num_steps: int = 600, seed: int = 1) -> Config:
    """The attacker DDPM: ``base``'s model and schedule, trained at every t (uniform), ``num_steps``."""
    cfg = configs.get(base) if isinstance(base, str) else base
    return configs.override(cfg, {"name": f"{cfg.name}-attacker", "train.t_sampling": "uniform",
                                  "train.num_steps": int(num_steps), "train.seed": int(seed)})


def _losses(workdir: Path) -> List[Dict[str, Any]]:
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]


def train_ddpm(workdir: str | Path, patches: np.ndarray, cfg: Config, progress: bool = False,
               budget_s: Optional[float] = None, probe: int = 20) -> Dict[str, Any]:
    """Train the attacker DDPM in ``workdir`` (a btd_jax workdir: load it with ``train.load_params``).

    With ``budget_s``, ``probe`` steps are trained first to measure the speed, then as many more as
    fit (at most ``cfg.train.num_steps``); the info says whether it stopped early.
    """
    workdir = Path(workdir)
    t0 = time.perf_counter()
    total, done = cfg.train.num_steps, 0
    target = total
    if budget_s is not None and probe < total:
        train.train_and_evaluate(cfg, str(workdir), patches, stop_at=probe, progress=progress,
                                 async_checkpoints=False)
        done = probe
        rates = [r["steps_per_s"] for r in _losses(workdir) if r.get("steps_per_s")]
        rate = rates[-1] if rates else probe / max(time.perf_counter() - t0, 1e-3)
        target = int(min(total, probe + max(0.0, budget_s - (time.perf_counter() - t0) - 5.0) * rate * 0.95))
    if target > done:
        train.train_and_evaluate(cfg, str(workdir), patches, stop_at=target, progress=progress,
                                 async_checkpoints=False)
        done = target
    losses = [r["loss"] for r in _losses(workdir)]
    return {"steps": done, "planned_steps": total, "stopped_early": done < total,
            "seconds": time.perf_counter() - t0, "first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None}


def train_gan(out_dir: str | Path, patches: np.ndarray, cfg: cgan.GanConfig, seed: int = 0,
              budget_s: Optional[float] = None) -> Dict[str, Any]:
    """Train the cGAN on ``patches`` and save it in ``out_dir``; returns the training info."""
    params, info = cgan.train(patches, cfg, jax.random.key(seed), budget_s=budget_s)
    cgan.save(out_dir, params, cfg, info)
    return info

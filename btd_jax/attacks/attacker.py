"""The attacker's side: its training data (which patients) and its own models.

The detector of ``btd-jax demo`` trains on the left part of every slice of 693_UNCR (CQ500 head CT,
patient CQ500-CT-310) and CT_small (body CT). The attacker's data is a choice
(:func:`training_sources`, ``btd-jax attack --attacker_data``):

* ``unseen`` (default): patients the detector never sees (``ATTACKER_SOURCES``): for CT the two
  other CT patients that pydicom ships (an abdominal CT of PANCREAS_0001 and a head CT of
  JXD191021006, both JPEG 2000 lossless, decoded offline by Pillow); for MRI a Siemens MR slice of
  patient 021234567 (the demo's detector uses MR2, emri and MR_small). A scanner/patient shift
  separates its fakes from the detector's data.
* ``same``: the detector's own training distribution, as an attacker who downloaded the same public
  data set: the training regions of the demo's own slices (same patients and scanners); the attacks
  are then made on their held-out test regions (``--input demo``), so no attacked pixel was trained on.
* a path: DICOM file/folder, slice store or ``.npy`` slices (whole slices).

Models: :func:`train_ddpm` fits a DDPM for RePaint/SDEdit (the detector's demo DDPM trains only at
low t, so it cannot generate from noise: the attacker needs every t), :func:`train_gan` the
cGAN of :mod:`btd_jax.attacks.cgan` and :func:`train_ldm` the latent diffusion model of
:mod:`btd_jax.attacks.ldm`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import jax
import numpy as np

from btd_jax import configs, train
from btd_jax.attacks import cgan, demo_data, inputs, ldm
from btd_jax.attacks.inputs import as_sources
from btd_jax.configs import Config
from btd_jax.data import dicom, preprocess

__all__ = ["ATTACKER_SOURCES", "DATA_CHOICES", "MIN_BODY", "as_sources", "attacker_sources", "training_sources",
           "min_body", "attacker_patches", "ddpm_config", "train_ddpm", "train_gan", "train_ldm"]

# (file shipped with pydicom / pydicom-data, label) per modality: patients the detector never sees.
ATTACKER_SOURCES = {
    "CT": (("explicit_VR-UN.dcm", "PANCREAS_0001-abdomen"), ("J2K_pixelrep_mismatch.dcm", "JXD191021006-head")),
    "MRI": (("MR-SIEMENS-DICOM-WithOverlays.dcm", "Siemens-021234567"),),
}
DATA_CHOICES = ("unseen", "same")
# Least fraction of a patch inside the body, per modality (as btd_jax.attacks.demo_data.build).
MIN_BODY = {"CT": 0.9, "MRI": 0.5}


def _mod(modality: str) -> str:
    return "CT" if preprocess.canonical_modality(modality) == "CT" else "MRI"


def min_body(modality: str) -> float:
    """The least body fraction of a patch for ``modality`` (:data:`MIN_BODY`)."""
    return MIN_BODY[_mod(modality)]


def attacker_sources(modality: str = "CT") -> List[demo_data.SourceImage]:
    """The attacker's own slices (``ATTACKER_SOURCES``), read offline, as SourceImages."""
    mod = _mod(modality)
    out = []
    for filename, label in ATTACKER_SOURCES[mod]:
        sl = dicom.read_slice(demo_data.source_path(filename))
        px = sl.pixels.astype(np.float32)
        images = px if mod == "CT" else preprocess.normalize_mri(px)
        n = len(images)
        out += as_sources(images, mod, [Path(filename).stem] * n, [label] * n, [sl.patient_id or label] * n,
                          range(n))
    return out


def training_sources(choice: str, modality: str = "CT", skipped: Optional[list] = None) -> List[demo_data.SourceImage]:
    """The attacker's training slices: ``choice`` 'unseen' | 'same' | a path (see the module doc).

    Patches are cut from each source's ``train`` region (:func:`attacker_patches`): the whole slice
    for 'unseen' and a path, the demo's training columns for 'same'. ``skipped`` as
    :func:`btd_jax.attacks.inputs.load_sources` (bad DICOM files of a path are listed there).
    """
    if choice == "unseen":
        return attacker_sources(modality)
    if choice == "same":
        return inputs.demo_sources(_mod(modality))
    return inputs.load_sources(choice, modality, skipped=skipped)


def attacker_patches(sources: Sequence[demo_data.SourceImage], size: int, n: int, seed: int = 0,
                     min_body: float = 0.9) -> np.ndarray:
    """``n`` augmented real patches (N, size, size) in [0, 1] from the ``train`` regions of ``sources``."""
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


def train_ldm(out_dir: str | Path, patches: np.ndarray, cfg: ldm.LdmConfig, seed: int = 0, progress: bool = False,
              budget_s: Optional[float] = None) -> Dict[str, Any]:
    """Train the LDM attacker in ``out_dir``: its autoencoder (reused when ``out_dir`` holds one of this
    config), then the latent DDPM on the scaled latents of ``patches`` (:func:`train_ddpm` in
    ``out_dir/latent_ddpm``, resumed like any workdir). ``budget_s`` is shared (a third for the
    autoencoder). Load the result with :func:`btd_jax.attacks.ldm.load`; returns the training info."""
    t0 = time.perf_counter()
    key = jax.random.key(seed)
    ae_params, cfg, ae_info = ldm.train_autoencoder(out_dir, patches, cfg, key,
                                                    budget_s=None if budget_s is None else budget_s / 3.0)
    latents = ldm.training_latents(ae_params, cfg, patches, jax.random.fold_in(key, 2))
    left = None if budget_s is None else max(budget_s - (time.perf_counter() - t0), 1.0)
    ddpm_info = train_ddpm(Path(out_dir) / ldm.DDPM_DIR, latents, cfg.ddpm, progress=progress, budget_s=left)
    info = {"autoencoder": ae_info, "ddpm": ddpm_info, "scale": cfg.scale, "n_patches": len(patches),
            "seconds": time.perf_counter() - t0}
    ldm.save_autoencoder(out_dir, ae_params, cfg, info)
    return info

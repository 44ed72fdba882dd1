"""Latent diffusion in-painting (the paper's CT-SD / MRI-SD attack), small enough to train on a CPU.

The recipe of Stable Diffusion in-painting (Rombach et al. 2022) without text: a KL autoencoder
(:mod:`btd_jax.attacks.autoencoder`, f = 4, C = 4 latent channels, L1 + L2 + 1e-6 KL) trained on
real patches; the latents scaled by ``scale`` = 1 / their standard deviation (SD's 0.18215);
a DDPM on the scaled latents (the btd_jax U-Net with ``channels`` = C, linear betas over 1000
steps, eps-prediction, ``auto_normalize`` off) trained by :func:`btd_jax.train.train_and_evaluate`.
An attack encodes the patch (posterior means), in-paints the latent cells that touch the pixel mask
with RePaint in latent space (:func:`btd_jax.attacks.repaint.inpaint_model_space`; the known
cells are the patch's own latents), decodes, and pastes the decoded pixels into the original with a
mask feathered over ``feather`` pixels (as SD in-painting front-ends blur their masks):

* removal (:func:`remove`): the masked latent cells are regenerated from noise (t = T - 1);
* injection (:func:`inject`): a painted blob (:func:`btd_jax.attacks.sdedit.paint_nodule`, the
  "prompt") is encoded and SDEdit runs in latent space from t* = ``strength`` (T - 1) inside the
  dilated nodule's cells.

Defaults: :data:`LDM_REMOVAL` samples at full strength (ancestral DDPM, 250 respaced steps, jump
length 10, 10 resamplings), :data:`LDM_INJECTION` is SDEdit as given (ancestral, every step from
t* = 0.15 (T - 1), :data:`STRENGTH`; a ``steps`` grid keeps the whole grid's density below t*), x0 is
not clipped (latents are not in [-1, 1]), ``feather`` 2 px. The returned mask covers every pixel
that changed; outside it the output is the input bit for bit. Item i draws from ``fold_in(key, i)``
and every stage is sharded over the local devices, so results do not depend on batch size or
device count::

    params, cfg = ldm.load("attacker_ldm")         # {'autoencoder', 'ddpm'} and an LdmConfig
    out, changed = ldm.remove(params, cfg, patches01, masks, jax.random.key(0))

Sizes (:func:`ldm_config`): ``demo``, for 32-48 px patches on a CPU: autoencoder widths 32/64/64,
latents (S/4, S/4, 4), 1500 Adam steps (1e-3, warm-up 50, cosine, batch 32); latent U-Net dim 32,
dim_mults (1, 2), 3000 steps (Adam 1e-3, cosine, batch 32, EMA 0.999), t uniform. ``tiny``: tests.
An LDM folder holds ``ldm.json`` (config, latent scale, training info), ``autoencoder.msgpack`` and
``latent_ddpm/`` (a btd_jax workdir).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import jax
import numpy as np
from flax import serialization
from scipy import ndimage as ndi

from btd_jax import checkpoints
from btd_jax.attacks import autoencoder, repaint, sdedit
from btd_jax.attacks.autoencoder import AutoencoderConfig
from btd_jax.configs import Config, DiffusionConfig, ModelConfig, TrainConfig
from btd_jax.data import preprocess
from btd_jax.data.errors import DataError

__all__ = ["LDM_FILE", "AE_FILE", "DDPM_DIR", "STRENGTH", "LDM_REMOVAL", "LDM_INJECTION", "PRESETS", "LdmConfig",
           "ldm_config", "latent_mask", "feather_weights", "inpaint", "remove", "inject", "training_latents",
           "train_autoencoder", "save_autoencoder", "save", "load"]

LDM_FILE, AE_FILE, DDPM_DIR = "ldm.json", "autoencoder.msgpack", "latent_ddpm"
# Measured with the demo-size LDM (latent DDPM of 3000 steps) on 64 CT patches of the detector's
# patients, painted +78 HU on average: without resampling the nodule keeps +44 / +39 / +35 / +36 / +1
# HU at t* = 0.1 / 0.15 / 0.2 / 0.3 / 0.5 T (64% of fakes above the tissue's noise at 0.15);
# RePaint's resampling in the nodule's cells erases it (-15 HU at 0.3 T, r = 10, 16 patches).
STRENGTH = 0.15
# RePaint as published (ancestral sampler, 250 respaced steps, j = 10, r = 10) and SDEdit as given
# (the ancestral sampler over every step from t*, no resampling), in latent space; x0 is not clipped.
LDM_REMOVAL = repaint.RePaintOptions(sampler="ddpm", steps=250, jump_length=10, resamplings=10, clip_denoised=False)
LDM_INJECTION = repaint.RePaintOptions(sampler="ddpm", steps=None, jump_length=10, resamplings=1, clip_denoised=False)


@dataclasses.dataclass(frozen=True)
class LdmConfig:
    """The autoencoder, the latent DDPM's config (``channels`` = latent channels, ``image_size`` = the
    latent side), the latent scale and the modality of the training patches."""

    autoencoder: AutoencoderConfig
    ddpm: Config
    scale: float = 1.0
    modality: str = "CT"

    def __post_init__(self):
        ae, d = self.autoencoder, self.ddpm
        if d.model.channels != ae.latent_channels or d.image_size != ae.latent_size:
            raise DataError(f"the latent DDPM takes ({d.image_size}, {d.image_size}, {d.model.channels}) inputs but "
                            f"the autoencoder makes ({ae.latent_size}, {ae.latent_size}, {ae.latent_channels}) "
                            "latents (a model of another size?)")
        if d.diffusion.auto_normalize:
            raise DataError("the latent DDPM must have diffusion.auto_normalize off (latents are not in [0, 1])")
        if not (np.isfinite(self.scale) and self.scale > 0):
            raise DataError(f"latent scale must be finite and > 0, got {self.scale}")

    @property
    def image_size(self) -> int:
        return self.autoencoder.image_size


# (autoencoder features, latent channels, DDPM dim, attention heads/dim, timesteps, DDPM lr, DDPM batch)
PRESETS: Dict[str, Tuple[int, int, int, Tuple[int, int], int, float, int]] = {
    "demo": (32, 4, 32, (4, 16), 1000, 1e-3, 32),
    "tiny": (8, 2, 8, (2, 8), 100, 1e-3, 8),
}


def ldm_config(preset: str = "demo", image_size: int = 32, modality: str = "CT", ae_steps: Optional[int] = None,
               ddpm_steps: int = 3000, seed: int = 0) -> LdmConfig:
    """An untrained :class:`LdmConfig` (scale 1) of ``preset`` (``demo``: the measured CPU size;
    ``tiny``: tests) for ``image_size`` patches, f = 4."""
    if preset not in PRESETS:
        raise DataError(f"unknown LDM preset {preset!r}; expected one of {', '.join(PRESETS)}")
    feats, c, dim, (heads, dim_head), steps, lr, batch = PRESETS[preset]
    ae = AutoencoderConfig(image_size=image_size, factor=4, latent_channels=c, features=feats,
                           **({} if ae_steps is None else {"num_steps": int(ae_steps)}))
    model = ModelConfig(dim=dim, dim_mults=(1, 2), channels=c, full_attn=(False, True), attn_heads=heads,
                        attn_dim_head=dim_head)
    diffusion = DiffusionConfig(image_size=ae.latent_size, timesteps=steps, sampling_timesteps=min(250, steps),
                                beta_schedule="linear", objective="pred_noise", auto_normalize=False)
    train = TrainConfig(learning_rate=lr, batch_size=batch, grad_accum=1, num_steps=int(ddpm_steps),
                        warmup_steps=min(100, int(ddpm_steps) // 10), lr_schedule="cosine", ema_decay=0.999,
                        ema_update_every=1, ema_update_after_step=0, t_sampling="uniform", seed=int(seed),
                        log_every=100, eval_every=10 ** 9, checkpoint_every=1000, keep_checkpoints=1)
    mod = "CT" if preprocess.canonical_modality(modality) == "CT" else "MRI"
    return LdmConfig(ae, Config(f"ldm-{preset}-{image_size}", mod, model, diffusion, train), modality=mod)


# ----------------------------------------------------------------------------- masks

def latent_mask(masks: np.ndarray, factor: int) -> np.ndarray:
    """(N, S, S) pixel masks -> (N, S/f, S/f) bool: a latent cell is generated if any of its f x f pixels is."""
    m = np.asarray(masks, bool)
    n, s, _ = m.shape
    return m.reshape(n, s // factor, factor, s // factor, factor).any(axis=(2, 4))


def feather_weights(masks: np.ndarray, feather: int) -> np.ndarray:
    """(N, S, S) bool -> paste weights (N, S, S) float32: 1 on the mask, falling linearly to 0 over
    ``feather`` pixels outside it (Euclidean distance); 0 beyond."""
    m = np.asarray(masks, bool)
    if feather <= 0:
        return m.astype(np.float32)
    dist = np.stack([ndi.distance_transform_edt(~a) for a in m])
    return np.clip(1.0 - dist / (feather + 1.0), 0.0, 1.0).astype(np.float32)


def _check(cfg: LdmConfig, images, masks, what: str = "masks") -> Tuple[np.ndarray, np.ndarray]:
    x = np.asarray(images, np.float32)
    s = cfg.image_size
    if x.ndim != 3 or x.shape[0] == 0 or x.shape[1:] != (s, s):
        raise DataError(f"images: expected (N, {s}, {s}) patches for this {s}-pixel LDM, got shape {x.shape} "
                        "(a model of another size?)")
    if not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0:
        raise DataError("images: values must be finite and in [0, 1] (window CT with window_ct first)")
    m = np.asarray(masks)
    if m.shape != x.shape:
        raise DataError(f"{what}: shape {m.shape} does not match the images {x.shape} (a mask outside the image?)")
    m = m > 0.5
    empty = ~m.reshape(len(m), -1).any(axis=1)
    if empty.any():
        raise DataError(f"{what}: item {int(np.argmax(empty))} selects no pixel")
    return x, m


# ----------------------------------------------------------------------------- attacks

def inpaint(params: Dict[str, Any], cfg: LdmConfig, images01, masks, key: jax.Array, *, init01=None,
            t_start: Optional[int] = None, options: repaint.RePaintOptions = LDM_REMOVAL, feather: int = 2,
            batch_size: int = 64, mesh=None, progress=None) -> Tuple[np.ndarray, np.ndarray]:
    """In-paint ``images01`` where ``masks`` is set, in latent space.

    Args:
      params: {'autoencoder', 'ddpm'}; cfg: their :class:`LdmConfig`.
      images01: (N, S, S) patches in [0, 1]; masks: (N, S, S), > 0.5 = regenerate.
      key: item i uses ``fold_in(key, i)``.
      init01: (N, S, S) in [0, 1] encoded to seed the masked latents at ``t_start`` (SDEdit); None:
        from noise at T - 1 (``t_start`` must then be None).
      options: latent RePaint settings (``t_start`` replaced by the argument).
      feather: paste-back ramp in pixels outside the mask.
    Returns:
      (tampered (N, S, S) float32 in [0, 1]; changed (N, S, S) bool, the mask plus its feather ring:
      outside it the output equals ``images01`` bit for bit).
    """
    x, m = _check(cfg, images01, masks)
    if (t_start is None) != (init01 is None):
        raise DataError("in-painting from an init image needs t_start (SDEdit), and from noise none")
    ae = cfg.autoencoder
    run = dict(batch_size=batch_size, mesh=mesh)
    z = autoencoder.encode(params["autoencoder"], ae, x, **run) * cfg.scale
    z_init = None if init01 is None else autoencoder.encode(params["autoencoder"], ae, np.clip(init01, 0.0, 1.0),
                                                            **run) * cfg.scale
    opts = dataclasses.replace(options, t_start=t_start)
    if t_start is not None and options.steps is not None:  # SDEdit: the grid below t* as dense as the whole grid
        below = int(t_start) + 1
        opts = dataclasses.replace(opts, steps=max(1, min(below, round(options.steps * below
                                                                       / cfg.ddpm.diffusion.timesteps))))
    z_out = repaint.inpaint_model_space(params["ddpm"], cfg.ddpm, z, latent_mask(m, ae.factor), key, init=z_init,
                                        options=opts, progress=progress, **run)
    decoded = autoencoder.decode(params["autoencoder"], ae, z_out / cfg.scale, **run)
    w = feather_weights(m, feather)
    changed = w > 0
    out = np.where(changed, w * decoded + (1.0 - w) * x, x)
    return out.astype(np.float32), changed


def remove(params: Dict[str, Any], cfg: LdmConfig, images01, masks, key: jax.Array, *,
           options: repaint.RePaintOptions = LDM_REMOVAL, **kwargs) -> Tuple[np.ndarray, np.ndarray]:
    """Removal: the masked latent cells regenerated from noise; see :func:`inpaint` (kwargs go there)."""
    return inpaint(params, cfg, images01, masks, key, options=options, **kwargs)


def inject(params: Dict[str, Any], cfg: LdmConfig, images01, priors01, nodule_masks, key: jax.Array, *,
           strength: float = STRENGTH, dilation: int = 2, options: repaint.RePaintOptions = LDM_INJECTION,
           **kwargs) -> Tuple[np.ndarray, np.ndarray]:
    """Injection: the painted ``priors01`` (N, S, S) encoded and finished by latent SDEdit from
    t* = round(``strength`` (T - 1)) inside the ``dilation``-dilated ``nodule_masks``; see :func:`inpaint`."""
    if not 0.0 < strength <= 1.0:
        raise DataError(f"strength must be in (0, 1], got {strength}")
    x, nodules = _check(cfg, images01, nodule_masks, "nodule masks")
    p = np.asarray(priors01, np.float32)
    if p.shape != x.shape or not np.isfinite(p).all():
        raise DataError(f"priors: expected finite values of the images' shape {x.shape}, got shape {p.shape}")
    t_star = int(round(strength * (cfg.ddpm.diffusion.timesteps - 1)))
    return inpaint(params, cfg, x, sdedit.dilate(nodules, dilation), key, init01=p, t_start=t_star,
                   options=options, **kwargs)


# ----------------------------------------------------------------------------- training and files

def training_latents(ae_params, cfg: LdmConfig, patches01, key: jax.Array, batch_size: int = 256) -> np.ndarray:
    """Scaled posterior samples (N, S/f, S/f, C) of ``patches01``: the latent DDPM's training data."""
    return autoencoder.encode(ae_params, cfg.autoencoder, patches01, key=key, batch_size=batch_size) * cfg.scale


def _read_json(d: Path) -> Dict[str, Any]:
    try:
        raw = json.loads((d / LDM_FILE).read_text())
        meta = raw["config"]
        return {"autoencoder": AutoencoderConfig(**meta["autoencoder"]), "scale": float(meta["scale"]),
                "modality": str(meta["modality"]), "info": raw.get("info", {})}
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{d / LDM_FILE}: not a valid LDM description ({type(e).__name__}: {e})") from None


def _read_autoencoder(d: Path, ae: AutoencoderConfig):
    template = jax.eval_shape(lambda k: autoencoder.init(ae, k), jax.random.PRNGKey(0))
    try:
        params = serialization.from_bytes(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), template),
                                          (d / AE_FILE).read_bytes())
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{d / AE_FILE}: does not fit the autoencoder of {d / LDM_FILE} "
                        f"(a model of another size?): {e}") from None
    autoencoder.check_params(params, ae, str(d / AE_FILE))
    return params


def save_autoencoder(directory, ae_params, cfg: LdmConfig, info: Optional[Dict] = None) -> Path:
    """Writes ``autoencoder.msgpack`` and ``ldm.json`` (autoencoder config, scale, modality, info)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    autoencoder.check_params(ae_params, cfg.autoencoder)
    (d / AE_FILE).write_bytes(serialization.to_bytes(jax.device_get(ae_params)))
    meta = {"autoencoder": dataclasses.asdict(cfg.autoencoder), "scale": cfg.scale, "modality": cfg.modality}
    tmp = d / (LDM_FILE + ".tmp")
    tmp.write_text(json.dumps({"config": meta, "info": info or {}}, indent=2))
    tmp.replace(d / LDM_FILE)  # written last: a folder with ldm.json has a whole autoencoder
    return d


def train_autoencoder(directory, patches01, cfg: LdmConfig, key: jax.Array, budget_s: Optional[float] = None,
                      progress=None) -> Tuple[Any, LdmConfig, Dict[str, Any]]:
    """The autoencoder of an LDM folder: trained on ``patches01`` and saved (with the scale 1 / std of
    its posterior samples), or reused when ``directory`` already holds one of the same config.

    Returns (autoencoder params, ``cfg`` with its scale, info). A folder holding an autoencoder of
    another config is refused (DataError).
    """
    d = Path(directory)
    if (d / LDM_FILE).is_file():
        old = _read_json(d)
        if old["autoencoder"] != cfg.autoencoder:
            raise DataError(f"{d}: holds an LDM autoencoder of another config ({old['autoencoder']}); "
                            "choose an empty folder")
        cfg = dataclasses.replace(cfg, scale=old["scale"])
        return _read_autoencoder(d, cfg.autoencoder), cfg, {**old["info"].get("autoencoder", {}), "reused": True}
    params, info = autoencoder.train(patches01, cfg.autoencoder, key, progress=progress, budget_s=budget_s)
    z = autoencoder.encode(params, cfg.autoencoder, patches01, key=jax.random.fold_in(key, 1))
    cfg = dataclasses.replace(cfg, scale=float(1.0 / max(float(np.std(z)), 1e-6)))
    info = {**info, "latent_std": float(np.std(z))}
    save_autoencoder(d, params, cfg, {"autoencoder": info})
    return params, cfg, info


def save(directory, params: Dict[str, Any], cfg: LdmConfig, info: Optional[Dict] = None) -> Path:
    """Writes a whole LDM: :func:`save_autoencoder` and the latent DDPM as a params checkpoint in
    ``directory/latent_ddpm`` (which must hold no checkpoint yet)."""
    d = Path(directory)
    checkpoints.save_params_checkpoint(str(d / DDPM_DIR), params["ddpm"], cfg.ddpm)
    return save_autoencoder(d, params["autoencoder"], cfg, info)


def load(directory) -> Tuple[Dict[str, Any], LdmConfig]:
    """({'autoencoder', 'ddpm'} params, LdmConfig) of an LDM folder; one DataError for a folder that
    is not an LDM or whose parts do not fit each other."""
    d = Path(directory)
    if not (d / LDM_FILE).is_file() or not (d / AE_FILE).is_file() or not (d / DDPM_DIR).is_dir():
        raise DataError(f"{d}: no LDM attacker here (expected {LDM_FILE}, {AE_FILE} and {DDPM_DIR}/; "
                        "train one with --train_attacker)")
    meta = _read_json(d)
    try:
        ddpm_params, ddpm_cfg = checkpoints.load_params(str(d / DDPM_DIR))
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"{d / DDPM_DIR}: no usable latent DDPM ({e})") from None
    cfg = LdmConfig(meta["autoencoder"], ddpm_cfg, meta["scale"], meta["modality"])
    return {"autoencoder": _read_autoencoder(d, cfg.autoencoder), "ddpm": ddpm_params}, cfg


"""SDEdit injection (Meng et al. 2022): paint a crude nodule, noise it to t*, let the DDPM finish it.

The *prior* is a flat, noise-free, lobulated blob of ``contrast`` HU over the local background
(:func:`paint_nodule`, in Hounsfield units before windowing, as CT-GAN tampers raw scans). The patch
is diffused to ``t* = strength * (T - 1)`` and denoised with RePaint (:mod:`btd_jax.attacks.repaint`)
where only the dilated nodule mask is generated: outside it the output is the original patch.
``strength`` trades realism (high: the DDPM re-draws the texture, and may erase a faint nodule)
against faithfulness to the prior (low: the painted blob survives, with little scanner-like noise).
By default the DDPM runs as published: the ancestral sampler over every timestep from t* to 0
(:data:`repaint.INJECTION_FULL`); ``options=repaint.INJECTION`` is the demo's cheaper DDIM grid.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import jax
import numpy as np
from scipy import ndimage as ndi

from btd_jax.attacks import repaint, tamper
from btd_jax.configs import Config
from btd_jax.data.errors import DataError

__all__ = ["RADIUS_PX", "CONTRAST_HU", "CONTRAST_MRI", "paint_nodule", "dilate", "sdedit"]

# Nodule radius (pixels) and contrast (HU over the local tissue): the ranges of the demo's hand-made
# injections (soft-tissue lesions in head/body slices).
RADIUS_PX: Tuple[float, float] = (3.0, 8.0)
CONTRAST_HU: Tuple[float, float] = (40.0, 150.0)
# MRI (tampered in [0, 1] after per-series standardisation): the demo's MR injections.
CONTRAST_MRI: Tuple[float, float] = (0.1, 0.3)


def paint_nodule(hu: np.ndarray, y: float, x: float, radius: float, contrast: float, rng: np.random.Generator,
                 lobulation: float = 0.15, smooth: float = 3.0) -> Tuple[np.ndarray, np.ndarray]:
    """The SDEdit prior on one (H, W) HU image: ``(prior float32 (H, W), nodule mask bool (H, W))``.

    Inside a lobulated blob (:func:`btd_jax.attacks.tamper.nodule_alpha`) the pixels are replaced by
    the Gaussian-smoothed (``smooth`` px) surroundings plus ``contrast`` HU: a paint stroke without
    texture. Raises :class:`DataError` when the blob leaves the image.
    """
    hu = np.asarray(hu, np.float32)
    h, w = hu.shape
    if radius <= 0 or y - radius < 0 or x - radius < 0 or y + radius > h - 1 or x + radius > w - 1:
        raise DataError(f"nodule at (y={y}, x={x}) with radius {radius} leaves the {h}x{w} image")
    alpha = tamper.nodule_alpha(hu.shape, y, x, radius, rng, lobulation=lobulation)
    alpha = np.where(alpha < 0.02, 0.0, alpha)  # a stroke has an edge: no logistic tail over the image
    background = ndi.gaussian_filter(hu.astype(np.float64), smooth, mode="reflect")
    prior = hu * (1.0 - alpha) + (background + contrast) * alpha
    return prior.astype(np.float32), alpha > 0.5


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Binary dilation of (..., H, W) masks by ``pixels`` (a disc), per image."""
    mask = np.asarray(mask, bool)
    if pixels <= 0:
        return mask
    yy, xx = np.mgrid[-pixels:pixels + 1, -pixels:pixels + 1]
    disc = (yy ** 2 + xx ** 2) <= pixels ** 2
    struct = disc.reshape((1,) * (mask.ndim - 2) + disc.shape)
    return ndi.binary_dilation(mask, structure=struct)


def sdedit(params, cfg: Config, images, priors, nodule_masks, key: jax.Array, *, strength: float = 0.15,
           dilation: int = 2, options: Optional[repaint.RePaintOptions] = None,
           **kwargs) -> Tuple[np.ndarray, np.ndarray]:
    """Turn painted priors into DDPM-rendered nodules.

    Args:
      params: the attacker DDPM's parameters.
      cfg: its config.
      images: (N, H, W) original patches in [0, 1]; priors: (N, H, W) the same with the nodule
        painted (e.g. ``window_ct(paint_nodule(...)[0])``); nodule_masks: (N, H, W) bool.
      strength: t* as a fraction of the schedule (t* = round(strength * (T - 1))).
      dilation: pixels added around the nodule mask; only that region is generated.
      options: RePaint settings (``t_start`` is replaced by t*, ``steps`` capped at t* + 1; default the
        published sampler, :data:`repaint.INJECTION_FULL`); kwargs go to :func:`repaint.inpaint`.
    Returns:
      (tampered (N, H, W) float32 in [0, 1], generated-region masks (N, H, W) bool).
    """
    if not 0.0 < strength <= 1.0:
        raise DataError(f"strength must be in (0, 1], got {strength}")
    images = np.asarray(images, np.float32)
    nodule_masks = np.asarray(nodule_masks, bool)
    if nodule_masks.shape != images.shape:
        raise DataError(f"nodule masks: shape {nodule_masks.shape} does not match the images {images.shape}")
    region = dilate(nodule_masks, dilation)
    t_star = int(round(strength * (cfg.diffusion.timesteps - 1)))
    base = options or repaint.preset_options(repaint.DEFAULT_PRESET, "sdedit")
    steps = None if base.steps is None or base.steps > t_star else base.steps
    opts = dataclasses.replace(base, t_start=t_star, steps=steps)
    out = repaint.inpaint(params, cfg, images, region, key, init=np.clip(priors, 0.0, 1.0), options=opts, **kwargs)
    return out, region


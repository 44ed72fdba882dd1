"""Simulated medical deepfake attacks on real slices: tumour injection and structure removal.

The paper evaluates BTD on CT-GAN and Stable-Diffusion (SD) tampering. Those generators are not
shipped here, so these functions imitate the *forensic traces* each leaves, on real pixels. Deep
generators do not output noise-free images: they synthesise noise-like detail through their own
upsampling layers, whose texture (energy near the Nyquist frequency, the "checkerboard") differs
from a CT scanner's correlated noise (:func:`upsampling_texture`). The styles:

=================  =============================================================================
``inject-smooth``  ablation: a lobulated nodule rendered noise-free, blended into a smoothed copy
                   of its surroundings (the scanner's noise is simply missing).
``inject-gan``     CT-GAN-like: the same, plus the generator's upsampling texture at the local
                   noise level (same noise energy, wrong texture).
``inject-latent``  SD-like: a square box encoded to a ``factor``-times coarser latent, the nodule
                   drawn there, decoded by bicubic upsampling plus decoder texture: the scanner's
                   noise is replaced over the *whole* box.
``remove-inpaint`` ablation: harmonic (Laplace) in-painting of the structure: smooth, noise-free.
``remove-ctgan``   CT-GAN-like: in-painting plus smoothed Gaussian noise matched to the local noise
                   level, to hide the removal (the paper's hardest case, all detectors near chance).
``remove-latent``  SD-like: the structure in-painted in the latent of a box, decoded as above.
=================  =============================================================================

Conventions: every function takes one 2-D slice ``img`` (H, W) in its physical units (HU for CT --
tamper *before* windowing -- or raw intensity for MRI), the centre as ``y`` (row) and ``x``
(column), a ``radius`` in pixels and a NumPy ``rng`` (``np.random.Generator``), and returns
``(tampered, mask)``: ``tampered`` (H, W) float32 in the same units, clipped to the input's
[min, max] (widened by the nodule's contrast for injection) so it stays in the image's domain,
and ``mask`` (H, W) bool, the pixels the attack rewrote (for localisation). The input is never modified. Pure NumPy/SciPy, deterministic for a given rng.
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np
from scipy import ndimage as ndi
from scipy import sparse, special
from scipy.sparse import linalg as sparse_linalg

from btd_jax.data.errors import DataError

__all__ = [
    "STYLES", "INJECT_STYLES", "REMOVE_STYLES", "apply", "nodule_alpha", "local_noise_std",
    "harmonic_inpaint", "upsampling_texture", "inject_smooth", "inject_gan", "inject_latent", "remove_inpaint",
    "remove_ctgan", "remove_latent",
]

Array = np.ndarray


# ----------------------------------------------------------------------------------- helpers

def _check(img: Array, y: int, x: int, radius: float, what: str) -> Array:
    img = np.asarray(img)
    if img.ndim != 2:
        raise DataError(f"{what}: expected a 2-D slice, got shape {img.shape}")
    if not np.isfinite(img).all():
        raise DataError(f"{what}: the slice contains NaN or inf")
    h, w = img.shape
    if not (0 <= y < h and 0 <= x < w):
        raise DataError(f"{what}: centre (y={y}, x={x}) lies outside the {h}x{w} slice")
    if not radius > 0:
        raise DataError(f"{what}: radius must be > 0, got {radius}")
    return img.astype(np.float64)


def _finish(img: Array, out: Array, changed: Array, contrast: float = 0.0) -> Tuple[Array, Array]:
    """Clip to the image's domain; return float32 and the rewritten-pixel mask.

    The domain is the input's [min, max], widened by an injected nodule's ``contrast`` (a nodule
    brighter than anything else in the slice is legitimate; values the slice cannot hold are not).
    """
    out = np.clip(out, img.min() + min(contrast, 0.0), img.max() + max(contrast, 0.0))
    return out.astype(np.float32), np.asarray(changed, bool)


def _polar(shape: Tuple[int, int], y: float, x: float) -> Tuple[Array, Array]:
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(np.float64)
    dy, dx = yy - y, xx - x
    return np.hypot(dy, dx), np.arctan2(dy, dx)


def nodule_alpha(shape: Tuple[int, int], y: float, x: float, radius: float, rng: np.random.Generator,
                 lobulation: float = 0.15, edge: float = 1.0) -> Array:
    """Soft (H, W) opacity in [0, 1] of a lobulated, tumour-like blob.

    The boundary is r(theta) = radius * (1 + sum_k a_k cos(k theta + phi_k)) for k = 2..5 with
    a_k ~ U(0, lobulation / k); the edge is a logistic ramp ``edge`` pixels wide.
    """
    dist, theta = _polar(shape, y, x)
    k = np.arange(2, 6)
    amp = rng.uniform(0.0, lobulation, size=k.size) / k
    phase = rng.uniform(0.0, 2 * np.pi, size=k.size)
    r_theta = radius * (1.0 + np.sum(amp[:, None, None] * np.cos(k[:, None, None] * theta + phase[:, None, None]),
                                     axis=0))
    return special.expit((r_theta - dist) / max(edge, 1e-3))


def _smooth_field(shape: Tuple[int, int], rng: np.random.Generator, scale: float) -> Array:
    """Zero-mean, unit-std random field correlated over ``scale`` pixels (generator-like texture)."""
    f = ndi.gaussian_filter(rng.standard_normal(shape), scale, mode="reflect")
    return (f - f.mean()) / (f.std() + 1e-12)


def local_noise_std(img: Array, region: Array, sigma: float = 1.0) -> float:
    """Robust noise level in ``region``: 1.4826 x MAD of the high-pass ``img - gaussian(img, sigma)``.

    The high-pass removes anatomy and keeps the scanner's noise; the MAD ignores edges. Returns 0
    for an empty region.
    """
    hp = np.asarray(img, np.float64) - ndi.gaussian_filter(np.asarray(img, np.float64), sigma)
    vals = hp[np.asarray(region, bool)]
    if vals.size == 0:
        return 0.0
    return float(1.4826 * np.median(np.abs(vals - np.median(vals))))


def _ring(shape: Tuple[int, int], y: float, x: float, r_in: float, r_out: float) -> Array:
    dist, _ = _polar(shape, y, x)
    return (dist >= r_in) & (dist < r_out)


def upsampling_texture(shape: Tuple[int, int], rng: np.random.Generator, stride: int = 2) -> Array:
    """Zero-mean texture left by a generator's learned (transposed-convolution) upsampling.

    White noise on a grid ``stride`` times coarser is zero-inserted and convolved with a random
    (signed, like a learned one) (2 stride - 1)^2 kernel: output pixels receive different numbers
    of kernel taps depending on their position modulo ``stride``, the "checkerboard" of GAN and VAE
    decoders (Odena et al., 2016), and much of the energy sits near the Nyquist frequency where a
    CT scanner's (correlated) noise has little. Scaled to unit :func:`local_noise_std`. Returns
    (H, W) float64.
    """
    h, w = shape
    z = rng.standard_normal((-(-h // stride) + 2, -(-w // stride) + 2))
    up = np.zeros((z.shape[0] * stride, z.shape[1] * stride))
    up[::stride, ::stride] = z
    kernel = rng.standard_normal((2 * stride - 1, 2 * stride - 1))
    tex = ndi.convolve(up, kernel, mode="wrap")[stride:stride + h, stride:stride + w]
    return tex / (local_noise_std(tex, np.ones(tex.shape, bool)) + 1e-12)


def harmonic_inpaint(img: Array, mask: Array) -> Array:
    """Fill ``mask`` with the solution of Laplace's equation whose boundary values are ``img``.

    The 5-point Laplacian is solved exactly (sparse direct solve) over the masked pixels, with the
    unmasked neighbours as Dirichlet data (reflecting at the slice border). Returns a float64 copy.
    """
    img = np.asarray(img, np.float64)
    mask = np.asarray(mask, bool)
    out = img.copy()
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return out
    h, w = img.shape
    number = -np.ones(h * w, np.int64)
    number[idx] = np.arange(idx.size)
    rows, cols = np.unravel_index(idx, (h, w))
    diag = np.zeros(idx.size)
    rhs = np.zeros(idx.size)
    ii, jj = [], []
    for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        r2, c2 = rows + dr, cols + dc
        inside = (r2 >= 0) & (r2 < h) & (c2 >= 0) & (c2 < w)
        diag += inside  # a neighbour outside the slice simply drops out (reflecting border)
        lin = np.where(inside, np.clip(r2, 0, h - 1) * w + np.clip(c2, 0, w - 1), 0)
        unknown = inside & (number[lin] >= 0)
        known = inside & ~unknown
        ii.append(np.nonzero(unknown)[0])
        jj.append(number[lin[unknown]])
        rhs[known] += img.ravel()[lin[known]]
    ii, jj = np.concatenate(ii), np.concatenate(jj)
    a = sparse.csr_matrix((np.concatenate([diag, -np.ones(ii.size)]),
                           (np.concatenate([np.arange(idx.size), ii]), np.concatenate([np.arange(idx.size), jj]))),
                          shape=(idx.size, idx.size))
    out.ravel()[idx] = sparse_linalg.spsolve(a.tocsc(), rhs)
    return out


# ----------------------------------------------------------------------------------- injection

def inject_smooth(img: Array, y: int, x: int, radius: float, rng: np.random.Generator, *, contrast: float,
                  margin: float = 1.5, texture: float = 0.1, lobulation: float = 0.15,
                  fingerprint: float = 0.0) -> Tuple[Array, Array]:
    """Inject a nodule rendered by a generator: the scanner's noise is missing where it lies.

    Within a disc of ``margin * radius`` the slice is replaced by its Gaussian-smoothed self (the
    generator reproduces the anatomy, not the noise) plus ``contrast`` (image units, e.g. HU) times
    the nodule opacity with a smooth internal texture of relative amplitude ``texture``; the disc is
    feathered into the real slice over ~2 pixels. ``fingerprint`` > 0 adds the generator's own
    :func:`upsampling_texture` at that multiple of the local noise level (see :func:`inject_gan`).

    Returns (tampered (H, W) float32, mask (H, W) bool).
    """
    img = _check(img, y, x, radius, "inject_smooth")
    alpha = nodule_alpha(img.shape, y, x, radius, rng, lobulation=lobulation)
    tex = 1.0 + texture * _smooth_field(img.shape, rng, max(radius / 3.0, 1.0))
    background = ndi.gaussian_filter(img, 1.5 + radius / 8.0, mode="reflect")
    content = background + contrast * alpha * tex
    dist, _ = _polar(img.shape, y, x)
    if fingerprint > 0:
        sigma_n = local_noise_std(img, _ring(img.shape, y, x, margin * radius + 2.0, margin * radius + 10.0))
        content = content + fingerprint * sigma_n * upsampling_texture(img.shape, rng, 2)
    region = np.clip((margin * radius + 1.0 - dist) / 2.0, 0.0, 1.0)
    out = img * (1.0 - region) + content * region
    return _finish(img, out, region > 0, contrast)


def inject_gan(img: Array, y: int, x: int, radius: float, rng: np.random.Generator, *, contrast: float,
               fingerprint: float = 1.0, **kwargs) -> Tuple[Array, Array]:
    """CT-GAN-style injection: :func:`inject_smooth` whose generator output carries the checkerboard
    texture of its upsampling layers at the local noise level (``fingerprint`` x), instead of the
    scanner's noise: same noise energy, wrong texture."""
    return inject_smooth(img, y, x, radius, rng, contrast=contrast, fingerprint=fingerprint, **kwargs)


def _latent_edit(img: Array, y: int, x: int, radius: float, rng: np.random.Generator, edit: Callable, factor: int,
                 box_scale: float, latent_noise: float, fingerprint: float, what: str) -> Tuple[Array, Array]:
    """Encode a box around (y, x) to a ``factor``-times coarser latent, ``edit(latent, box_shape,
    y_in_box, x_in_box)``, decode (bicubic upsampling plus decoder texture) and paste back with a
    ``factor``-pixel feather. Returns (out float64, box mask)."""
    if int(factor) < 2:
        raise DataError(f"{what}: factor must be >= 2, got {factor}")
    f = int(factor)
    h, w = img.shape
    side = max(f * 2, int(np.ceil(box_scale * 2 * radius / f)) * f)
    side = min(side, (min(h, w) // f) * f)
    y0 = int(np.clip(y - side // 2, 0, h - side))
    x0 = int(np.clip(x - side // 2, 0, w - side))
    box = img[y0:y0 + side, x0:x0 + side]
    sigma_n = local_noise_std(img, _ring(img.shape, y, x, side / 2.0, side / 2.0 + 8))
    latent = edit(box.reshape(side // f, f, side // f, f).mean(axis=(1, 3)), box.shape, y - y0, x - x0)
    latent = latent + latent_noise * sigma_n * rng.standard_normal(latent.shape)
    decoded = ndi.zoom(latent, f, order=3, mode="nearest", grid_mode=True)
    if fingerprint > 0:  # the decoder synthesises fine detail through its own upsampling layers
        decoded = decoded + fingerprint * sigma_n * upsampling_texture(decoded.shape, rng, 2)
    # Feather the paste: 0 at the box border, 1 from `f` pixels inside (SD blends its mask edge).
    ramp = np.minimum(np.arange(side) + 0.5, side - np.arange(side) - 0.5) / f
    feather = np.clip(np.minimum(ramp[:, None], ramp[None, :]), 0.0, 1.0)
    out = img.copy()
    out[y0:y0 + side, x0:x0 + side] = box * (1.0 - feather) + decoded * feather
    region = np.zeros(img.shape, bool)
    region[y0:y0 + side, x0:x0 + side] = True
    return out, region


def inject_latent(img: Array, y: int, x: int, radius: float, rng: np.random.Generator, *, contrast: float,
                  factor: int = 4, box_scale: float = 2.5, latent_noise: float = 0.5, fingerprint: float = 1.0,
                  lobulation: float = 0.15) -> Tuple[Array, Array]:
    """Inject a nodule through a low-resolution latent, as latent-diffusion (SD) in-painting does.

    A square box of side ~``box_scale * 2 * radius`` (a multiple of ``factor``) around (y, x) is
    encoded by ``factor`` x ``factor`` area averaging, the nodule (``contrast`` image units) is
    drawn into the latent with white latent noise (``latent_noise`` x the local noise level),
    decoded by bicubic upsampling plus the decoder's :func:`upsampling_texture`
    (``fingerprint`` x the local noise level) and pasted back with a ``factor``-pixel feather.
    The scanner's own noise is replaced over the *whole* box.

    Returns (tampered (H, W) float32, mask (H, W) bool): the mask is the pasted box.
    """
    img = _check(img, y, x, radius, "inject_latent")
    f = int(factor)

    def draw(latent, shape, yb, xb):
        alpha = nodule_alpha(shape, yb, xb, radius, rng, lobulation=lobulation)
        return latent + contrast * alpha.reshape(shape[0] // f, f, shape[1] // f, f).mean(axis=(1, 3))

    out, region = _latent_edit(img, y, x, radius, rng, draw, factor, box_scale, latent_noise, fingerprint,
                               "inject_latent")
    return _finish(img, out, region, contrast)


# ----------------------------------------------------------------------------------- removal

def _removal_mask(shape, y, x, radius, rng, lobulation) -> Array:
    return nodule_alpha(shape, y, x, radius, rng, lobulation=lobulation, edge=0.5) > 0.5


def remove_inpaint(img: Array, y: int, x: int, radius: float, rng: np.random.Generator, *,
                   lobulation: float = 0.1) -> Tuple[Array, Array]:
    """Remove whatever lies within ~``radius`` of (y, x) by harmonic in-painting (smooth, noise-free).

    Returns (tampered (H, W) float32, mask (H, W) bool).
    """
    img = _check(img, y, x, radius, "remove_inpaint")
    mask = _removal_mask(img.shape, y, x, radius, rng, lobulation)
    return _finish(img, harmonic_inpaint(img, mask), mask)


def remove_ctgan(img: Array, y: int, x: int, radius: float, rng: np.random.Generator, *,
                 noise_scale: float = 1.0, noise_corr: float = 0.7, lobulation: float = 0.1) -> Tuple[Array, Array]:
    """Remove a structure by in-painting, then mask the removal with noise (as CT-GAN does).

    The in-painted region gets Gaussian noise smoothed by ``noise_corr`` pixels and rescaled so that
    its :func:`local_noise_std` is ``noise_scale`` x the one measured in a ring around the mask;
    only the noise *texture* (its correlation) betrays the edit.

    Returns (tampered (H, W) float32, mask (H, W) bool).
    """
    img = _check(img, y, x, radius, "remove_ctgan")
    mask = _removal_mask(img.shape, y, x, radius, rng, lobulation)
    filled = harmonic_inpaint(img, mask)
    sigma_n = local_noise_std(img, _ring(img.shape, y, x, radius + 1.0, radius + 8.0))
    noise = rng.standard_normal(img.shape)
    if noise_corr > 0:
        noise = ndi.gaussian_filter(noise, noise_corr)
    # Match the estimator, not the raw std: the added noise has the ring's high-pass noise level.
    noise = noise / (local_noise_std(noise, np.ones(noise.shape, bool)) + 1e-12)
    filled = np.where(mask, filled + noise_scale * sigma_n * noise, img)
    return _finish(img, filled, mask)


def remove_latent(img: Array, y: int, x: int, radius: float, rng: np.random.Generator, *, factor: int = 4,
                  box_scale: float = 1.6, latent_noise: float = 0.5, fingerprint: float = 1.0,
                  lobulation: float = 0.1) -> Tuple[Array, Array]:
    """Remove a structure by latent in-painting (SD-style): the box around it is encoded as in
    :func:`inject_latent`, the latent pixels under the structure are in-painted harmonically from
    the rest of the latent, and the box is decoded with the decoder's texture and pasted back.

    Returns (tampered (H, W) float32, mask (H, W) bool): the mask is the pasted box.
    """
    img = _check(img, y, x, radius, "remove_latent")
    f = int(factor)

    def erase(latent, shape, yb, xb):
        hole = _removal_mask((shape[0] // f, shape[1] // f), (yb - f / 2 + 0.5) / f, (xb - f / 2 + 0.5) / f,
                             radius / f + 0.5, rng, lobulation)
        return harmonic_inpaint(latent, hole)

    out, region = _latent_edit(img, y, x, radius, rng, erase, factor, box_scale, latent_noise, fingerprint,
                               "remove_latent")
    return _finish(img, out, region)


# ----------------------------------------------------------------------------------- registry

INJECT_STYLES: Dict[str, Callable] = {"inject-smooth": inject_smooth, "inject-gan": inject_gan,
                                      "inject-latent": inject_latent}
REMOVE_STYLES: Dict[str, Callable] = {"remove-inpaint": remove_inpaint, "remove-ctgan": remove_ctgan,
                                      "remove-latent": remove_latent}
STYLES: Dict[str, Callable] = {**INJECT_STYLES, **REMOVE_STYLES}


def apply(style: str, img: Array, y: int, x: int, radius: float, rng: np.random.Generator,
          **kwargs) -> Tuple[Array, Array]:
    """Run the attack called ``style`` (one of :data:`STYLES`); injection styles need ``contrast=``."""
    try:
        fn = STYLES[style]
    except KeyError:
        raise DataError(f"unknown attack style {style!r}; expected one of {', '.join(STYLES)}") from None
    return fn(img, y, x, radius, rng, **kwargs)

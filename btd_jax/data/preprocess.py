"""The paper's preprocessing (section 4), in pure NumPy.

* CT: Hounsfield units clipped to [-700 (air), 2000 (bone)] and scaled to [0, 1]:
  ``(clip(hu, -700, 2000) + 700) / 2700``.
* MRI: standardised per patient, then scaled to [0, 1] (exact formula in :func:`normalize_mri`).
* Patches: a ``size x size`` window around ``(y, x)`` (x = column, y = row). Where the window leaves
  the image, the authors' test-time code crops the part inside and zero-pads at the bottom and right
  (``mode="authors"``, the default), so near the top or left border the point is NOT at the patch
  centre; ``mode="centered"`` pads on the side where the image ends and keeps the point centred;
  ``mode="shift"`` slides the window inside the image.

Every function takes explicit arguments and raises :class:`DataError` on bad input.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from btd_jax.data.errors import DataError
from btd_jax.data.validate import check_dtype

CT_LO = -700.0
CT_HI = 2000.0
MRI_CLIP_SIGMA = 3.0
PATCH_SIZE = {"CT": 96, "MR": 128}
PATCH_MODES = ("authors", "centered", "shift")

__all__ = [
    "CT_LO", "CT_HI", "MRI_CLIP_SIGMA", "PATCH_SIZE", "PATCH_MODES", "canonical_modality", "window_ct",
    "normalize_mri", "to_unit_range", "extract_patch", "extract_patches", "random_locations",
    "resample",
]


def canonical_modality(modality: str) -> str:
    """'CT' or 'MR' from the usual spellings ('ct', 'MRI', 'mr', ...)."""
    m = str(modality).strip().upper()
    if m == "CT":
        return "CT"
    if m in ("MR", "MRI"):
        return "MR"
    raise DataError(f"unknown modality {modality!r}: expected 'CT' or 'MRI'")


def _check_finite(a: np.ndarray, what: str) -> None:
    if a.size == 0:
        raise DataError(f"{what}: empty array (shape {a.shape})")
    check_dtype(a.dtype, what)
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        n = int((~np.isfinite(a)).sum())
        raise DataError(f"{what}: {n} non-finite value(s) (NaN or inf)")


def window_ct(hu: np.ndarray, lo: float = CT_LO, hi: float = CT_HI) -> np.ndarray:
    """CT window of the paper: ``(clip(hu, lo, hi) - lo) / (hi - lo)``.

    Args:
      hu: any shape, Hounsfield units.
      lo, hi: window bounds in HU (paper: -700 and 2000).
    Returns:
      float32 array of ``hu``'s shape in [0, 1].
    """
    hu = np.asarray(hu)
    _check_finite(hu, "window_ct input")
    if not hi > lo:
        raise DataError(f"window_ct: need hi > lo, got lo={lo}, hi={hi}")
    out = (np.clip(hu.astype(np.float64), lo, hi) - lo) / (hi - lo)
    return out.astype(np.float32)


def normalize_mri(volume: np.ndarray, clip_sigma: float = MRI_CLIP_SIGMA,
                  mask: np.ndarray | None = None) -> np.ndarray:
    """Per-patient MRI standardisation, then scaling to [0, 1].

    With ``mu, sigma`` the mean and standard deviation over the patient's voxels (all slices of
    ``volume``, or only where ``mask`` is true) and ``k = clip_sigma``::

        z   = (volume - mu) / sigma
        out = (clip(z, -k, k) + k) / (2 k)          # k = 3: mu -> 0.5, mu +- 3 sigma -> 0 / 1

    Why clip in sigma units instead of a min-max of z: z-scoring followed by a min-max over the same
    voxels is exactly a plain min-max of the raw volume (both are affine), so the standardisation
    would do nothing, and the result would hinge on the single brightest voxel (fat, vessels,
    artefacts). A fixed [-k, k] range maps the same intensity statistic to the same value for every
    patient and scanner. ``clip_sigma=None`` gives the plain min-max variant for comparison.

    Args:
      volume: (S, H, W) or (H, W) one patient's raw MRI intensities.
      clip_sigma: k above; None for min-max of the whole volume.
      mask: optional boolean array of ``volume``'s shape selecting the voxels for mu and sigma.
    Returns:
      float32 array of ``volume``'s shape in [0, 1].
    """
    v = np.asarray(volume)
    _check_finite(v, "normalize_mri input")
    v = v.astype(np.float64)
    sel = v
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != v.shape:
            raise DataError(f"normalize_mri: mask shape {mask.shape} != volume shape {v.shape}")
        sel = v[mask]
        if sel.size == 0:
            raise DataError("normalize_mri: mask selects no voxel")
    if clip_sigma is None:
        lo, hi = float(sel.min()), float(sel.max())
        if hi <= lo:
            raise DataError("normalize_mri: constant volume, cannot scale to [0, 1]")
        return np.clip((v - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    if not clip_sigma > 0:
        raise DataError(f"normalize_mri: clip_sigma must be > 0, got {clip_sigma}")
    mu, sigma = float(sel.mean()), float(sel.std())
    if not sigma > 0:
        raise DataError("normalize_mri: constant volume (standard deviation 0)")
    z = np.clip((v - mu) / sigma, -clip_sigma, clip_sigma)
    return ((z + clip_sigma) / (2.0 * clip_sigma)).astype(np.float32)


def to_unit_range(volume: np.ndarray, modality: str) -> np.ndarray:
    """The paper's value mapping for ``modality``: :func:`window_ct` (CT) or :func:`normalize_mri`."""
    return window_ct(volume) if canonical_modality(modality) == "CT" else normalize_mri(volume)


def _coord(v, name: str, truncate: bool = False) -> int:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise DataError(f"coordinate {name}={v!r} is not a number") from None
    if not np.isfinite(f):
        raise DataError(f"coordinate {name}={v!r} is not finite")
    return int(f) if truncate else int(round(f))


def _window(c: int, size: int, n: int, mode: str) -> tuple[int, int]:
    """Start/stop (stop exclusive) of the window along one axis; may leave [0, n)."""
    start = c - size // 2
    if mode == "shift":
        start = min(max(start, 0), n - size) if n >= size else 0
    return start, start + size


def extract_patch(img: np.ndarray, x, y, size: int, mode: str = "authors",
                  fill: float = 0.0) -> np.ndarray:
    """Cut a ``size x size`` patch around (row ``y``, column ``x``).

    The window covers rows ``y - size//2 .. y - size//2 + size - 1`` (columns likewise with x).
    Where it leaves the image, ``mode`` decides:

    * ``"authors"`` (default; the authors' test-time notebook): keep the part inside the image and
      pad with ``fill`` at the bottom and right. With ``h = size // 2`` this is exactly their
      ``img[max(0, y-h) : min(H, y+h), max(0, x-h) : min(W, x+h)]`` zero-padded to ``size`` for even
      sizes (the paper's 96 and 128); near the top or left border the content moves up/left, so
      (y, x) is then NOT at ``patch[h, h]``. Coordinates are truncated to int like their
      ``astype(int)``.
    * ``"centered"``: pad on the side where the image ends, keeping (y, x) at ``patch[h, h]``
      (``"pad"`` is accepted as the former name of this rule).
    * ``"shift"``: move the window to lie inside the image (pads only if the image is smaller than
      ``size``).

    Args:
      img: (H, W) image.
      x, y: column and row; must lie inside the image.
      size: patch side.
      mode: "authors", "centered" or "shift" (above).
      fill: value of padded pixels.
    Returns:
      (size, size) array of ``img``'s dtype.
    """
    img = np.asarray(img)
    if img.ndim != 2:
        raise DataError(f"extract_patch: expected an (H, W) image, got shape {img.shape}")
    mode = "centered" if mode == "pad" else mode
    if mode not in PATCH_MODES:
        raise DataError(f"extract_patch: mode must be one of {PATCH_MODES}, got {mode!r}")
    size = int(size)
    if size < 1:
        raise DataError(f"extract_patch: size must be >= 1, got {size}")
    h, w = img.shape
    xi, yi = _coord(x, "x", mode == "authors"), _coord(y, "y", mode == "authors")
    if not (0 <= xi < w and 0 <= yi < h):
        raise DataError(f"coordinates (x={xi}, y={yi}) outside the image of shape "
                        f"(H={h}, W={w}); x is the column, y the row")
    r0, r1 = _window(yi, size, h, mode)
    c0, c1 = _window(xi, size, w, mode)
    out = np.full((size, size), fill, dtype=img.dtype)
    rr0, rr1, cc0, cc1 = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
    # "authors": what lies inside goes to the top-left corner; otherwise it keeps its offset.
    dr, dc = (0, 0) if mode == "authors" else (rr0 - r0, cc0 - c0)
    out[dr:dr + rr1 - rr0, dc:dc + cc1 - cc0] = img[rr0:rr1, cc0:cc1]
    return out


def extract_patches(images: np.ndarray, xs: Sequence, ys: Sequence, size: int,
                    mode: str = "authors", fill: float = 0.0) -> np.ndarray:
    """Batch :func:`extract_patch`: images (N, H, W) (or one (H, W) image for all points),
    xs, ys (N,) -> (N, size, size)."""
    images = np.asarray(images)
    xs, ys = np.asarray(xs).reshape(-1), np.asarray(ys).reshape(-1)
    if xs.shape != ys.shape:
        raise DataError(f"extract_patches: {xs.size} x values but {ys.size} y values")
    if images.ndim == 3 and images.shape[0] != xs.size:
        raise DataError(f"extract_patches: {images.shape[0]} images but {xs.size} points")
    if images.ndim not in (2, 3):
        raise DataError(f"extract_patches: expected (N, H, W) or (H, W), got {images.shape}")
    out = np.empty((xs.size, int(size), int(size)), dtype=images.dtype)
    for i, (x, y) in enumerate(zip(xs, ys)):
        img = images if images.ndim == 2 else images[i]
        out[i] = extract_patch(img, x, y, size, mode=mode, fill=fill)
    return out


def random_locations(shape: Sequence[int], n: int, size: int,
                     rng: np.random.Generator | int | None = None,
                     margin: int | None = None) -> np.ndarray:
    """``n`` uniform random patch centres for training, as an (n, 2) int64 array of (x, y).

    By default whole patches fit inside the image (no padding): x in [size//2, W - size + size//2]
    and likewise y. With ``margin`` given, centres keep ``margin`` pixels from every border instead:
    x in [margin, W - 1 - margin].

    Args:
      shape: (H, W) of the image (extra leading dims are ignored).
      rng: a numpy Generator or a seed.
    """
    h, w = int(shape[-2]), int(shape[-1])
    size = int(size)
    if margin is None:
        lo, hi_r, hi_c = size // 2, h - (size - size // 2), w - (size - size // 2)
    else:
        lo, hi_r, hi_c = int(margin), h - 1 - int(margin), w - 1 - int(margin)
    if hi_r < lo or hi_c < lo:
        raise DataError(f"random_locations: image (H={h}, W={w}) too small for patch size {size} "
                        f"with margin {lo}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    xs = rng.integers(lo, hi_c + 1, size=int(n))
    ys = rng.integers(lo, hi_r + 1, size=int(n))
    return np.stack([xs, ys], axis=1).astype(np.int64)


def resample(img: np.ndarray, spacing: Sequence[float], target_spacing: Sequence[float] | float,
             order: int = 1) -> np.ndarray:
    """Resample to ``target_spacing`` with ``scipy.ndimage.zoom`` (spline ``order``, default linear).

    Args:
      img: (H, W) or (S, H, W); for 3-D input with a 2-element spacing only the in-plane axes move.
      spacing: current (row, col) [or (slice, row, col)] spacing in mm.
      target_spacing: wanted spacing, same length or a scalar for every axis.
    Returns:
      float32 array; along each axis ``round(n * spacing / target)`` samples.
    """
    from scipy import ndimage

    img = np.asarray(img)
    _check_finite(img, "resample input")
    spacing = np.atleast_1d(np.asarray(spacing, np.float64))
    target = np.broadcast_to(np.asarray(target_spacing, np.float64), spacing.shape)
    if img.ndim < spacing.size or img.ndim > 3:
        raise DataError(f"resample: image shape {img.shape} does not match spacing {tuple(spacing)}")
    if not (np.all(spacing > 0) and np.all(target > 0)):
        raise DataError(f"resample: spacings must be > 0, got {tuple(spacing)} -> {tuple(target)}")
    factors = np.ones(img.ndim)
    factors[img.ndim - spacing.size:] = spacing / target
    new_shape = np.maximum(np.round(np.array(img.shape) * factors), 1)
    # zoom's own rounding can be off by one; pass the exact factors for the wanted shape.
    zoom = new_shape / np.array(img.shape)
    return ndimage.zoom(img.astype(np.float32), zoom, order=order, mode="nearest",
                        grid_mode=True).astype(np.float32)

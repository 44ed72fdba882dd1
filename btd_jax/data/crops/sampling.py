"""Fresh training crops from slices: candidate centres, and a crop per batch position per step.

Every crop is a pure function of ``(seed, step, position)``: step ``s`` takes batch positions
``0 .. count-1``; position ``p`` trains on row ``rows[perm_e[(s * count + p) mod N]]`` (``perm_e``
the seeded permutation of epoch ``e``) and draws its candidate centre, offset and flip from one
table of uniforms made by ``default_rng((seed, step, 1))``. A resumed run therefore sees the same
crops as an uninterrupted one, and each host computes only the positions its devices train on.

The centre is then kept inside the slice the way the authors' CT trainer does it (for 96 px crops
of 512 px slices a centre is clamped to [50, 462], the crop is ``[c - 48, c + 48)``).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol, Sequence

import numpy as np

from btd_jax.data.splits import holdout_parts
from btd_jax.data.errors import DataError

__all__ = ["CropSpec", "SliceSource", "tissue_centres", "clamp_centre", "epoch_permutation",
           "batch_rows", "step_uniforms", "make_crops", "HostBatches", "SliceSet", "split_slices",
           "fixed_crops"]

# The authors clamp a 96 px crop's centre to [50, 512 - 50]: two pixels more than half the side.
AUTHORS_MARGIN = 2


@dataclasses.dataclass(frozen=True)
class CropSpec:
    """How a training crop is cut.

    size: crop side (the model's image size).
    hflip: flip left-right with probability 1/2.
    jitter: uniform offset in [-jitter, jitter] px added to the chosen centre on each axis
      (None: half the store's candidate grid stride for tissue centres, 0 for the authors'
      location list, as in their trainer).
    """
    size: int
    hflip: bool = False
    jitter: int | None = None


class SliceSource(Protocol):
    """What crops need from a set of slices (:class:`btd_jax.data.store.slice_store.SliceStore`,
    :class:`btd_jax.data.crops.authors_ct.CTFolder`). ``dtype``: the crops' value type."""

    dtype: np.dtype
    path: object  # where the slices are (named in errors)

    def __len__(self) -> int: ...
    def column(self, name: str, default=None) -> np.ndarray: ...
    def shapes(self, rows: np.ndarray) -> np.ndarray: ...
    def pick_centres(self, rows: np.ndarray, u: np.ndarray) -> np.ndarray: ...
    def read(self, rows: np.ndarray, y0: np.ndarray, x0: np.ndarray, size: int,
             flip: np.ndarray, out: np.ndarray) -> None: ...
    def default_jitter(self) -> int: ...


def _background(img: np.ndarray, step: int) -> np.ndarray:
    """Dark pixels connected to the image border (air around the body), on a ``step`` grid."""
    from scipy import ndimage

    small = img[::step, ::step]
    lo, hi = np.percentile(small, [1, 99])
    dark = small <= lo + 0.05 * (hi - lo)
    labels, _ = ndimage.label(dark)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, edge[edge > 0])


def tissue_centres(img: np.ndarray, size: int, stride: int | None = None,
                   min_fraction: float = 0.5) -> np.ndarray:
    """Candidate crop centres on a grid, where a ``size`` crop is mostly inside the body.

    The body is everything but the dark region connected to the image border (so CT lungs, dark
    after the window like the air outside, count as inside). Grid points run over the clamped
    centre range of :func:`clamp_centre` every ``stride`` px (default ``size // 4``); a point is kept
    when at least ``min_fraction`` of its crop is body. A slice without any such point gets its
    clamped middle as the only candidate, so no slice is dropped.

    Args:
      img: (H, W) slice in [0, 1].
      size: crop side.
    Returns:
      (K, 2) int32 centres (y, x), K >= 1.
    """
    img = np.asarray(img, np.float32)
    h, w = img.shape
    stride = max(1, int(stride or size // 4))
    (ylo, yhi), (xlo, xhi) = _centre_range(h, size), _centre_range(w, size)
    ys, xs = np.arange(ylo, yhi + 1, stride), np.arange(xlo, xhi + 1, stride)
    step = max(1, min(h, w) // 128)
    body = ~_background(img, step)
    # Body fraction of every crop from an integral image of the (subsampled) body mask.
    ii = np.pad(body.astype(np.float64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    half = size // 2
    r0 = np.clip((ys - half) // step, 0, body.shape[0])
    r1 = np.clip((ys - half + size + step - 1) // step, 0, body.shape[0])
    c0 = np.clip((xs - half) // step, 0, body.shape[1])
    c1 = np.clip((xs - half + size + step - 1) // step, 0, body.shape[1])
    area = (r1 - r0)[:, None] * (c1 - c0)[None, :]
    inside = ii[r1][:, c1] - ii[r0][:, c1] - ii[r1][:, c0] + ii[r0][:, c0]
    keep = inside >= min_fraction * np.maximum(area, 1)
    yy, xx = np.nonzero(keep)
    if yy.size == 0:
        return np.array([[clamp_centre(h // 2, h, size), clamp_centre(w // 2, w, size)]], np.int32)
    return np.stack([ys[yy], xs[xx]], axis=1).astype(np.int32)


def _centre_range(n, size: int):
    """[lo, hi] of allowed centres along an axis of length ``n`` (scalar or array)."""
    m = np.minimum(AUTHORS_MARGIN, np.maximum(0, (np.asarray(n) - size) // 2))
    return size // 2 + m, n - (size - size // 2) - m


def clamp_centre(c, n, size: int):
    """Keep a crop inside the slice: the authors' clamp of the centre, generalised.

    The authors' CT trainer moves a 96 px crop's centre into [50, 462] on 512 px slices, two pixels
    more than needed; the same two pixels are kept here when the slice has room for them. ``c`` and
    ``n`` may be arrays.
    """
    n = np.asarray(n)
    if np.any(n < size):
        raise DataError(f"slice side {int(np.min(n))} is smaller than the crop size {size}")
    lo, hi = _centre_range(n, size)
    out = np.minimum(np.maximum(np.asarray(c), lo), hi)
    return int(out) if out.ndim == 0 else out.astype(np.int64)


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The seeded order of ``n`` rows in epoch ``epoch``."""
    return np.random.default_rng((int(seed), int(epoch))).permutation(int(n))


def batch_rows(seed: int, step: int, n: int, count: int, positions: np.ndarray | None = None,
               cache: dict | None = None) -> np.ndarray:
    """Indices into the row list (length ``n``) of step ``step``'s batch positions.

    Args:
      count: batch positions per step (grad_accum * batch_size).
      positions: which positions to return (default all ``count``).
      cache: optional dict reused across calls to keep the last permutations.
    Returns:
      (len(positions),) int64.
    """
    positions = np.arange(count) if positions is None else np.asarray(positions, np.int64)
    flat = int(step) * int(count) + positions
    epoch, within = np.divmod(flat, int(n))
    out = np.empty(flat.shape, np.int64)
    cache = {} if cache is None else cache
    for e in np.unique(epoch):
        if int(e) not in cache:
            while len(cache) >= 2:
                cache.pop(min(cache))
            cache[int(e)] = epoch_permutation(seed, int(e), n)
        sel = epoch == e
        out[sel] = cache[int(e)][within[sel]]
    return out


def step_uniforms(seed: int, step: int, count: int) -> np.ndarray:
    """(count, 4) uniforms in [0, 1) for step ``step``: candidate, y offset, x offset, flip."""
    return np.random.default_rng((int(seed), int(step), 1)).random((int(count), 4))


def make_crops(src: SliceSource, rows: Sequence[int], uniforms: np.ndarray,
               spec: CropSpec) -> np.ndarray:
    """One crop per (row, uniforms) pair.

    Args:
      src: the slices (a :class:`SliceSource`).
      rows: (k,) rows of ``src``.
      uniforms: (k, 4) from :func:`step_uniforms` (the positions' lines): candidate, y and x
        offsets, flip.
      spec: crop size, flips, jitter.
    Returns:
      (k, size, size) crops in [0, 1] of ``src.dtype`` (float16 stores give float16 crops: half
      the bytes to move; the cast to float32 is exact and left to the device).
    """
    rows = np.asarray(rows, np.int64)
    u = np.asarray(uniforms, np.float64).reshape(len(rows), 4)
    size = int(spec.size)
    jitter = src.default_jitter() if spec.jitter is None else int(spec.jitter)
    centre = src.pick_centres(rows, u[:, 0]).astype(np.int64)
    if jitter:
        centre += (u[:, 1:3] * (2 * jitter + 1)).astype(np.int64) - jitter
    hw = src.shapes(rows)
    small = hw.min(axis=1) < size
    if small.any():
        j = int(np.argmax(small))
        raise DataError(f"{src.path}: row {int(rows[j])} is a {hw[j, 0]}x{hw[j, 1]} slice, smaller "
                        f"than the {size} px crop")
    y0 = clamp_centre(centre[:, 0], hw[:, 0], size) - size // 2
    x0 = clamp_centre(centre[:, 1], hw[:, 1], size) - size // 2
    flip = (u[:, 3] < 0.5) if spec.hflip else np.zeros(len(rows), bool)
    out = np.empty((len(rows), size, size), src.dtype)
    src.read(rows, y0, x0, size, flip, out)
    return out


@dataclasses.dataclass
class HostBatches:
    """This host's training crops of a step: a picklable callable for worker processes.

    ``rows`` are the store rows in the training split (repeated by their weight); a step's batch
    has ``accum * batch`` positions laid out as (accum, batch); this host owns the batch columns
    ``cols`` (a slice). ``step -> (accum, cols, size, size, 1)`` of the source's dtype.
    """
    src: SliceSource
    rows: np.ndarray
    seed: int
    accum: int
    batch: int
    cols: slice
    spec: CropSpec

    def __post_init__(self):
        self._cache: dict = {}

    def positions(self) -> np.ndarray:
        cols = np.arange(self.batch)[self.cols]
        return (np.arange(self.accum)[:, None] * self.batch + cols[None, :]).reshape(-1)

    def __call__(self, step: int) -> np.ndarray:
        pos = self.positions()
        count = self.accum * self.batch
        idx = batch_rows(self.seed, step, len(self.rows), count, pos, self._cache)
        u = step_uniforms(self.seed, step, count)[pos]
        crops = make_crops(self.src, self.rows[idx], u, self.spec)
        return crops.reshape(self.accum, -1, self.spec.size, self.spec.size, 1)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state


@dataclasses.dataclass
class SliceSet:
    """Rows of a slice source to train or validate on; a row repeats as often as it is weighted
    (the authors' CSV may list a slice more than once)."""
    src: SliceSource
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)


def split_slices(src, val_fraction: float, seed: int = 0) -> tuple[SliceSet, SliceSet | None]:
    """(train, validation) by patient, stratified by scanner (:func:`datasets.split_patients`),
    from the source's ``patient``/``scanner``/``weight`` manifest columns; by rows when the source
    has fewer than two patients."""
    n = len(src)
    weights = np.asarray(src.column("weight", 1), np.int64)
    if val_fraction <= 0:
        return SliceSet(src, np.repeat(np.arange(n), weights)), None
    if not 0 < val_fraction < 1:
        raise DataError(f"validation fraction must be in [0, 1), got {val_fraction}")
    part = holdout_parts(n, np.asarray(src.column("patient", ""), str), np.asarray(src.column("scanner", ""), str),
                         val_fraction, seed)
    rows = np.arange(n)
    train = SliceSet(src, np.repeat(rows[part == 0], weights[part == 0]))
    val = SliceSet(src, rows[part == 1])
    if len(train) == 0:
        raise DataError("no training slices left after the validation split")
    return train, val


def fixed_crops(sset: SliceSet, spec: CropSpec, seed: int, max_images: int) -> np.ndarray:
    """One crop per row (at most ``max_images`` rows, a seeded choice), the same in every run:
    the validation set of a slice source. Returns (n, size, size) float32."""
    rows = sset.rows
    if len(rows) > max_images:
        rows = np.sort(np.random.default_rng((seed, 2)).choice(rows, max_images, replace=False))
    u = np.random.default_rng((seed, 3)).random((len(rows), 4))
    return make_crops(sset.src, rows, u, dataclasses.replace(spec, hflip=False)).astype(np.float32)

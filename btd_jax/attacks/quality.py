"""Attack quality measured without BTD: what an edit did to its pixels, and whether it would stand out.

    per_fake = quality.measure(fakes_hu, originals_hu, masks)           # one set, tamper units
    sets = quality.read_sets(root, "CT", "injection", sources, size=32)   # {dataset: QualitySet}
    table = {name: quality.summarize(q, "injection") for name, q in sets.items()}
    quality.write_mosaic(sets["SDEdit-CT-Inject"], "sdedit_ct_inject.png", "SDEdit-CT-Inject")

Per fake, in tamper units (HU for CT; [0, 1] for MRI, reported x 1000):

* ``noise_in`` / ``noise_out``: the high-pass noise level, the standard deviation of
  ``x - gaussian(x, 1 px)``, inside the edit (its mask less its 1 px border, so that the seam's
  step is not counted as noise) and in a ring just outside it (pixels 2-6 px from the mask, in the
  patch; the pixels next to the seam are left out for the same reason); ``noise_orig_in`` /
  ``noise_orig_out``: the same on the original.
* ``mean_change``: the mean of fake - original inside the mask (an injection must raise it);
  ``structure_ratio``: the standard deviation of the ``gaussian(x, 2 px)``-smoothed pixels inside the
  mask, fake over original (a removal must flatten it: < 1).

A set is flagged a *weak attack* (:data:`WEAK_NOISE_RATIO`) when its mean inside noise differs from
its mean outside noise by more than 20%: a smoother (or noisier) patch is what a radiologist-style
look, and any noise-statistics detector, sees first. The same ring/mask statistics on the set's real
rows (each with the mask of a fake) give the natural inside/outside ratio of untouched tissue.
An edit is *effective* when an injection raises the mean by more than the original's noise level
there, or a removal leaves less than :data:`FLATTENED` of the original structure.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
from scipy import ndimage as ndi

from btd_jax import evaluate, plots
from btd_jax.attacks import demo_data
from btd_jax.data import datasets, preprocess
from btd_jax.data.errors import DataError

__all__ = ["NOISE_SIGMA", "STRUCTURE_SIGMA", "RING_PX", "WEAK_NOISE_RATIO", "FLATTENED", "QualitySet", "highpass",
           "interior", "ring", "measure", "summarize", "read_sets", "write_mosaic"]

NOISE_SIGMA = 1.0        # px: the high-pass that isolates pixel noise
STRUCTURE_SIGMA = 2.0    # px: the low-pass that keeps the structure an edit adds or removes
RING_PX = (2, 6)         # px from the mask: the "outside" ring
WEAK_NOISE_RATIO = 0.2   # |inside / outside - 1| above this: a weak attack
FLATTENED = 0.8          # removal: structure ratio below this counts as removed


@dataclasses.dataclass
class QualitySet:
    """One data set's patches in tamper units: fakes, their originals and masks (N, P, P); real rows
    (M, P, P); ``unit_scale``: tamper units per reported unit (1 for HU, 1e-3 for MRI [0, 1] x 1000)."""

    fakes: np.ndarray
    originals: np.ndarray
    masks: np.ndarray
    reals: np.ndarray
    unit: str
    unit_scale: float


def highpass(images: np.ndarray, sigma: float = NOISE_SIGMA) -> np.ndarray:
    """(..., H, W) -> x - gaussian(x, sigma) per image (float64; borders reflected)."""
    x = np.asarray(images, np.float64)
    sig = (0.0,) * (x.ndim - 2) + (sigma, sigma)
    return x - ndi.gaussian_filter(x, sig, mode="reflect")


def interior(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: the mask without its 1 px border (the whole mask when nothing would be left)."""
    mask = np.asarray(mask, bool)
    inner = ndi.distance_transform_edt(mask) > 1.0
    return inner if inner.any() else mask


def ring(mask: np.ndarray, inner: int = RING_PX[0], outer: int = RING_PX[1]) -> np.ndarray:
    """(H, W) bool: pixels farther than ``inner`` and at most ``outer`` px (Euclidean) from ``mask``."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        raise DataError("quality: an empty edit mask has no inside and no ring")
    d = ndi.distance_transform_edt(~mask)
    return (d > inner) & (d <= outer)


def _check(fakes, originals, masks):
    f, o, m = np.asarray(fakes, np.float64), np.asarray(originals, np.float64), np.asarray(masks, bool)
    if f.ndim != 3 or f.shape != o.shape or f.shape != m.shape or len(f) == 0:
        raise DataError(f"quality: fakes {f.shape}, originals {o.shape} and masks {m.shape} must be equal (N, P, P)")
    empty = np.flatnonzero(~m.reshape(len(m), -1).any(axis=1))
    if empty.size:
        raise DataError(f"quality: the mask of fake {int(empty[0])} is empty")
    return f, o, m


def measure(fakes: np.ndarray, originals: np.ndarray, masks: np.ndarray,
            unit_scale: float = 1.0) -> Dict[str, np.ndarray]:
    """Per-fake statistics (see the module doc) of (N, P, P) patches in tamper units, divided by
    ``unit_scale``: {name: (N,) float64}."""
    f, o, m = _check(fakes, originals, masks)
    hf, ho = highpass(f), highpass(o)
    sf = ndi.gaussian_filter(f, (0.0, STRUCTURE_SIGMA, STRUCTURE_SIGMA), mode="reflect")
    so = ndi.gaussian_filter(o, (0.0, STRUCTURE_SIGMA, STRUCTURE_SIGMA), mode="reflect")
    cols = {k: [] for k in ("noise_in", "noise_out", "noise_orig_in", "noise_orig_out", "mean_change",
                            "structure_ratio")}
    for i in range(len(f)):
        inside, core, out = m[i], interior(m[i]), ring(m[i])
        cols["noise_in"].append(hf[i][core].std())
        cols["noise_out"].append(hf[i][out].std() if out.any() else np.nan)
        cols["noise_orig_in"].append(ho[i][core].std())
        cols["noise_orig_out"].append(ho[i][out].std() if out.any() else np.nan)
        cols["mean_change"].append((f[i] - o[i])[inside].mean())
        cols["structure_ratio"].append(sf[i][inside].std() / max(so[i][inside].std(), 1e-12))
    out = {k: np.asarray(v, np.float64) for k, v in cols.items()}
    for k in ("noise_in", "noise_out", "noise_orig_in", "noise_orig_out", "mean_change"):
        out[k] = out[k] / unit_scale
    return out


def summarize(q: QualitySet, attack: str) -> Dict[str, float]:
    """One set's row: mean statistics, the inside/outside noise ratio of fakes and of real rows (each
    real row with the mask of a fake), the effective fraction and the weak-attack flag."""
    if str(attack).lower() not in ("inject", "injection", "remove", "removal"):
        raise DataError(f"quality: unknown attack {attack!r}; expected 'injection' or 'removal'")
    inject = str(attack).lower().startswith("inj")
    per = measure(q.fakes, q.originals, q.masks, q.unit_scale)
    k = min(len(q.reals), len(q.masks))
    real = measure(q.reals[:k], q.reals[:k], q.masks[:k], q.unit_scale) if k else None
    row = {name: float(np.nanmean(v)) for name, v in per.items()}
    ratio = row["noise_in"] / row["noise_out"] if row["noise_out"] > 0 else float("inf")
    row["noise_ratio"] = ratio
    row["noise_ratio_real"] = (float(np.nanmean(real["noise_in"]) / np.nanmean(real["noise_out"]))
                               if real is not None else float("nan"))
    if inject:
        effective = per["mean_change"] > per["noise_orig_in"]
    else:
        effective = per["structure_ratio"] < FLATTENED
    row["effective_fraction"] = float(np.mean(effective))
    row["weak_attack"] = bool(abs(ratio - 1.0) > WEAK_NOISE_RATIO)
    row.update(n_fakes=int(len(q.fakes)), n_reals=int(len(q.reals)), unit=q.unit)
    return row


def read_sets(root: str | Path, modality: str, attack: str, sources: Sequence[demo_data.SourceImage],
              size: int) -> Dict[str, QualitySet]:
    """Every data set of one attack in the authors' layout under ``root``, as written by
    :func:`btd_jax.attacks.pipeline.write_layout`: the ``size`` px patch of each row, each fake's
    original from ``sources`` (matched by the rows' ``source``, ``frame``, ``src_y``, ``src_x``) and
    its mask. {indicator name: QualitySet}."""
    root = Path(root)
    ct = preprocess.canonical_modality(modality) == "CT"
    ts = datasets.load_testset(root, modality, attack, size=size)
    meta = {k: np.asarray(v) for k, v in ts.columns.items()}
    labels = np.asarray(ts.labels)
    for col in ("source", "frame", "src_y", "src_x", "mask"):
        if col not in meta:
            raise DataError(f"{root}: the {ts.modality} {ts.attack} CSV has no {col!r} column (not written by "
                            "btd-jax attack?)")
    by_key = {(s.name, int(s.frame)): s for s in sources}
    csv_dir = datasets.testset_csv_path(root, modality, attack).parent

    def to_units(unit01):
        return unit01 * (preprocess.CT_HI - preprocess.CT_LO) + preprocess.CT_LO if ct else unit01

    out = {}
    for name, idx in evaluate.dataset_indices(labels, meta, ts.modality, ts.attack).items():
        fake_idx, real_idx = idx[labels[idx] == 1], idx[labels[idx] == 0]
        fakes, originals, masks = [], [], []
        for i in fake_idx:
            key = (str(meta["source"][i]), int(meta["frame"][i]))
            if key not in by_key:
                raise DataError(f"{root}: row {int(i)} was cut from {key[0]} frame {key[1]}, not among the sources")
            src = by_key[key]
            y, x = int(meta["src_y"][i]), int(meta["src_x"][i])
            originals.append(to_units(preprocess.extract_patch(src.unit, x, y, size)))
            crop_mask = np.load(csv_dir / str(meta["mask"][i])).astype(np.float32)
            masks.append(preprocess.extract_patch(crop_mask, int(meta["x"][i]), int(meta["y"][i]), size) > 0.5)
            fakes.append(to_units(ts.patches[i]))
        out[name] = QualitySet(np.stack(fakes), np.stack(originals), np.stack(masks),
                               np.stack([to_units(ts.patches[i]) for i in real_idx]) if real_idx.size
                               else np.zeros((0, size, size)), "HU" if ct else "MR x 1000", 1.0 if ct else 1e-3)
    return out


def _spread(k: int, n: int) -> np.ndarray:
    """At most ``n`` indices spread evenly over ``k`` rows (rows come grouped by source slice)."""
    return np.unique(np.round(np.linspace(0, k - 1, min(n, k))).astype(int)) if k else np.zeros(0, int)


def write_mosaic(q: QualitySet, path: str | Path, title: str = "", n: int = 16) -> str:
    """PNG of ``n`` fakes beside ``n`` real rows of a set (spread over the set, so every source slice
    shows), on one grey scale."""
    fakes, reals = q.fakes[_spread(len(q.fakes), n)], q.reals[_spread(len(q.reals), n)]
    return plots.mosaic(fakes, reals, str(path), (f"{len(fakes)} fakes", f"{len(reals)} reals"), title)

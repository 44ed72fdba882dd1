"""Demo datasets from the real CT/MR slices that ``pydicom`` and ``pydicom-data`` ship (offline).

Sources (uncompressed, so no extra decoder is needed; read through :mod:`btd_jax.data.dicom`):

* CT: ``693_UNCR.dcm`` (CQ500 head CT, 512x512, noise ~3 HU) and ``CT_small.dcm`` (body CT,
  128x128, noise ~25 HU): two "scanners". ``693_UNCI``/``J2KI`` are the same slice after lossy
  compression and are left out (they would leak the test region into training);
  ``eCT_Supplemental.dcm`` is a noise-free, thresholded map, not a scan.
* MRI: ``MR2_UNCR.dcm`` (shoulder, 1024x1024), ``emri_small.dcm`` (10 frames, 64x64) and
  ``MR_small.dcm`` (64x64).

Split: there are only a few slices, so every slice (all frames of a series alike) is cut into two
disjoint regions along its columns: the left ``1 - test_frac`` for training, the right
``test_frac`` for testing. A training patch lies wholly in the training region and a test patch
(with every tampered pixel) wholly in the test region, so no test pixel was ever seen in training.
Training patches are augmented with the 8 flips/rotations; only patches that are at least
``min_body`` inside the body are used (not air or the scanner's field-of-view border).

Values: CT is tampered in HU and windowed afterwards (:func:`preprocess.window_ct`); MRI is
normalised per series first (:func:`preprocess.normalize_mri`) and tampered in [0, 1].

Output (:func:`build`): ``train.npz`` (``patches`` (N, P, P) float32 in [0, 1] plus the source,
frame and centre of every patch before augmentation) and the authors' test-set layout under
``testset/`` (``CT/Inject/CT_Inject.csv``, ``CT/Remove/CT_Remove.csv``; MRI likewise), one
indicator column per attack style (e.g. ``Smooth-CT-Inject``), with a context crop per row
(HU for CT, [0, 1] for MRI), its tamper mask, and the centre in source-slice coordinates.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from scipy import ndimage as ndi

from btd_jax.attacks import tamper
from btd_jax.data import datasets, dicom, preprocess
from btd_jax.data.errors import DataError

__all__ = [
    "SOURCES", "METHODS", "NOTES", "SourceImage", "DemoData", "source_path", "load_sources", "split_columns",
    "valid_centres", "sample_centres", "train_patches", "make_testset", "build",
]

# (file, scanner label) per modality.
SOURCES: Dict[str, Tuple[Tuple[str, str], ...]] = {
    "CT": (("693_UNCR.dcm", "CQ500-head"), ("CT_small.dcm", "pydicom-body")),
    "MRI": (("MR2_UNCR.dcm", "MR2-shoulder"), ("emri_small.dcm", "emri"), ("MR_small.dcm", "MR-small")),
}
# Indicator-column method name -> tamper style, per attack.
METHODS: Dict[str, Dict[str, str]] = {
    "Inject": {"GAN": "inject-gan", "Latent": "inject-latent", "Smooth": "inject-smooth"},
    "Remove": {"CTGAN": "remove-ctgan", "Latent": "remove-latent", "Inpaint": "remove-inpaint"},
}
# One line per indicator-column method, for reports.
NOTES: Dict[str, str] = {
    "GAN": "CT-GAN-like injection: noise-free nodule plus the generator's upsampling (checkerboard) texture "
           "at the local noise level",
    "Latent": "SD-like: the box around the centre goes through a 4x coarser latent (nodule drawn / structure "
              "in-painted there) and a decoder with its own upsampling texture",
    "Smooth": "ablation: noise-free nodule, the scanner's noise simply missing",
    "CTGAN": "CT-GAN-like removal: in-painting plus smoothed noise matched to the local noise level",
    "Inpaint": "ablation: harmonic in-painting, smooth and noise-free",
}
_CT_BODY_HU = -500.0


@dataclasses.dataclass
class SourceImage:
    """One real slice: ``image`` (H, W) in tamper units (HU for CT, [0, 1] for MRI), its [0, 1]
    view ``unit``, the ``body`` mask and the disjoint ``train``/``test`` regions (H, W) bool."""
    name: str
    scanner: str
    patient: str
    frame: int
    image: np.ndarray
    unit: np.ndarray
    body: np.ndarray
    train: np.ndarray
    test: np.ndarray


@dataclasses.dataclass
class DemoData:
    """What :func:`build` wrote: paths and a summary (counts per split, attack and style)."""
    root: Path
    train_path: Path
    testset_root: Path
    csv_paths: Dict[str, Path]
    summary: dict


def source_path(filename: str) -> Path:
    """Path of a file shipped with pydicom / pydicom-data, without any network access."""
    from pydicom.data import get_testdata_file

    try:
        p = get_testdata_file(filename, download=False)
    except TypeError:  # older pydicom without the download flag
        p = get_testdata_file(filename)
    if p is None or not Path(p).is_file():
        raise DataError(f"{filename}: not found among pydicom's test files; the demo needs the "
                        f"'pydicom-data' package (pip install pydicom-data)")
    return Path(p)


def split_columns(shape: Tuple[int, int], test_frac: float, min_width: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """Disjoint (train, test) masks (H, W): columns [0, c) train, [c, W) test, c = round((1-f) W),
    moved so that each side is at least ``min_width`` columns wide where the slice allows it."""
    if not 0.0 < test_frac < 1.0:
        raise DataError(f"test_frac must be in (0, 1), got {test_frac}")
    h, w = shape
    cut = int(round((1.0 - test_frac) * w))
    cut = max(min(cut, w - min_width), min(min_width, w // 2))
    train = np.zeros((h, w), bool)
    train[:, :cut] = True
    return train, ~train


def load_sources(modality: str = "CT", test_frac: float = 0.35, min_width: int = 32) -> List[SourceImage]:
    """Every slice/frame of the shipped ``modality`` files with body mask and split regions (each
    region at least ``min_width`` columns wide: the patch size)."""
    mod = "CT" if preprocess.canonical_modality(modality) == "CT" else "MRI"
    out = []
    for filename, scanner in SOURCES[mod]:
        sl = dicom.read_slice(source_path(filename))
        frames = sl.pixels.astype(np.float32)
        if mod == "CT":
            images, units = frames, preprocess.window_ct(frames)
            bodies = frames > _CT_BODY_HU
        else:
            images = units = preprocess.normalize_mri(frames)  # per series, all frames together
            raw_hi = np.percentile(frames, 99)
            bodies = frames > 0.1 * raw_hi
        for f in range(frames.shape[0]):
            body = ndi.binary_opening(bodies[f], iterations=2)
            train, test = split_columns(body.shape, test_frac, min_width)
            out.append(SourceImage(Path(filename).stem, scanner, sl.patient_id or scanner, f,
                                   images[f], units[f], body, train, test))
    return out


def _box_sums(mask: np.ndarray, size: int) -> np.ndarray:
    """(H, W) number of true pixels in the size x size window of every centre (window as in
    :func:`preprocess.extract_patch`: rows y - size//2 ... y - size//2 + size - 1); 0 where the
    window leaves the slice."""
    h, w = mask.shape
    c = np.zeros((h + 1, w + 1), np.int64)
    c[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.int64), 0), 1)
    out = np.zeros((h, w), np.int64)
    lo, hi = size // 2, size - size // 2  # centre y covers [y - lo, y + hi)
    if h < size or w < size:
        return out
    ys, xs = np.arange(lo, h - hi + 1), np.arange(lo, w - hi + 1)
    y0, x0 = ys - lo, xs - lo
    out[lo:h - hi + 1, lo:w - hi + 1] = (c[y0 + size][:, x0 + size] - c[y0][:, x0 + size]
                                         - c[y0 + size][:, x0] + c[y0][:, x0])
    return out


def valid_centres(src: SourceImage, region: str, size: int, min_body: float = 0.9) -> np.ndarray:
    """(H, W) bool: centres whose size x size patch lies wholly in ``region`` ('train'/'test') and
    is at least ``min_body`` inside the body."""
    reg = getattr(src, region)
    full = _box_sums(reg, size) == size * size
    return full & (_box_sums(src.body & reg, size) >= min_body * size * size)


def _structure(src: SourceImage, radius: float) -> np.ndarray:
    """Local standard deviation of the [0, 1] image over ~radius: where there is a structure."""
    m = ndi.uniform_filter(src.unit.astype(np.float64), 2 * radius + 1)
    m2 = ndi.uniform_filter(src.unit.astype(np.float64) ** 2, 2 * radius + 1)
    return np.sqrt(np.maximum(m2 - m * m, 0.0))


def sample_centres(valid: np.ndarray, n: int, rng: np.random.Generator,
                   weights: np.ndarray | None = None) -> np.ndarray:
    """``n`` centres (y, x) drawn with replacement among ``valid`` pixels (optionally weighted)."""
    ys, xs = np.nonzero(valid)
    if ys.size == 0:
        raise DataError("no valid patch centre (patch too large for the region?)")
    p = None
    if weights is not None:
        p = np.asarray(weights, np.float64)[ys, xs] + 1e-12
        p = p / p.sum()
    i = rng.choice(ys.size, size=int(n), replace=True, p=p)
    return np.stack([ys[i], xs[i]], 1).astype(np.int64)


def _allocate(n: int, k: int) -> List[int]:
    return [n // k + (i < n % k) for i in range(k)]


def _plan(sources: Sequence[SourceImage], region: str, size: int, min_body: float,
          n: int) -> List[Tuple[SourceImage, np.ndarray, int]]:
    """Spread ``n`` patches evenly over scanners, then over each scanner's slices, skipping slices
    without a valid centre: [(source, valid centres, count)]."""
    groups: Dict[str, List[Tuple[SourceImage, np.ndarray]]] = {}
    for s in sources:
        valid = valid_centres(s, region, size, min_body)
        if valid.any():
            groups.setdefault(s.scanner, []).append((s, valid))
    if not groups:
        raise DataError(f"no {region} patch of size {size} fits in any source slice "
                        f"(with at least {min_body:.0%} of it inside the body)")
    plan = []
    for group, n_sc in zip(groups.values(), _allocate(n, len(groups))):
        plan += [(s, v, k) for (s, v), k in zip(group, _allocate(n_sc, len(group))) if k]
    return plan


def train_patches(sources: Sequence[SourceImage], size: int, n: int, rng: np.random.Generator,
                  augment: bool = True, min_body: float = 0.9) -> Dict[str, np.ndarray]:
    """``n`` training patches (N, size, size) in [0, 1] from the training regions, spread evenly
    over the sources' scanners; with ``augment`` each gets a random flip/rotation (8 choices).

    Returns a dict with ``patches`` and, per patch, ``source``, ``frame``, ``y``, ``x`` (centre in
    the source slice) and ``aug`` (0-7)."""
    patches, cols = [], {"source": [], "frame": [], "y": [], "x": [], "aug": []}
    for src, valid, n_src in _plan(sources, "train", size, min_body, n):
        for y, x in sample_centres(valid, n_src, rng):
            p = preprocess.extract_patch(src.unit, x, y, size)
            a = int(rng.integers(8)) if augment else 0
            patches.append(np.rot90(p[:, ::-1] if a >= 4 else p, a % 4))
            for k, v in (("source", src.name), ("frame", src.frame), ("y", y), ("x", x), ("aug", a)):
                cols[k].append(v)
    out = {"patches": np.clip(np.stack(patches), 0.0, 1.0).astype(np.float32)}
    out.update({k: np.asarray(v) for k, v in cols.items()})
    return out


def _crop(img: np.ndarray, y: int, x: int, side: int) -> Tuple[np.ndarray, int, int]:
    """side x side crop around (y, x) (shifted to lie inside) and the centre's crop coordinates."""
    h, w = img.shape
    y0 = int(np.clip(y - side // 2, 0, max(h - side, 0)))
    x0 = int(np.clip(x - side // 2, 0, max(w - side, 0)))
    return img[y0:y0 + side, x0:x0 + side], y - y0, x - x0


def _attacked_crop(src: SourceImage, y: int, x: int, size: int, style: str | None, radius: float,
                   contrast: float, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, int, int]:
    """Run ``style`` (None: real) at (y, x) and return the (2 size)^2 context crop, its tamper
    mask and the centre in crop coordinates. The attack is local, so it runs on a (4 size)^2
    window of the slice (fast; its context is real); every edited pixel must lie in the patch."""
    img, ty, tx = _crop(src.image, y, x, 4 * size)
    mask = np.zeros(img.shape, bool)
    if style is not None:
        kw = {"contrast": contrast} if style in tamper.INJECT_STYLES else {}
        if style == "inject-latent":  # the latent box must fit in the patch
            kw["box_scale"] = min(2.5, size / (2.0 * radius) - 0.01)
        elif style == "remove-latent":
            kw["box_scale"] = min(1.6, size / (2.0 * radius) - 0.01)
        img, mask = tamper.apply(style, img, ty, tx, radius, rng, **kw)
        if src.unit is src.image:  # MRI: tampered in [0, 1]
            img = np.clip(img, 0.0, 1.0)
        rows, cols = np.nonzero(mask)
        lo_r, lo_c = ty - size // 2, tx - size // 2
        if rows.size and (rows.min() < lo_r or rows.max() >= lo_r + size or cols.min() < lo_c
                          or cols.max() >= lo_c + size):
            raise DataError(f"{style}: edit of radius {radius:.1f} leaves the {size}-pixel patch")
    crop, cy, cx = _crop(img, ty, tx, 2 * size)
    return crop.astype(np.float32), _crop(mask, ty, tx, 2 * size)[0], cy, cx


def make_testset(root: Path, sources: Sequence[SourceImage], modality: str, attack: str, size: int,
                 n_per_class: int, rng: np.random.Generator, radius: Tuple[float, float],
                 contrast: Tuple[float, float] = (0.0, 0.0), min_body: float = 0.9) -> Path:
    """Write one attack's test set (``n_per_class`` real rows and as many per tamper style).

    Centres come from the test regions, spread evenly over scanners; for removal they are drawn in
    proportion to the local structure (something to remove), for the real rows of that set too, so
    that real and fake rows differ only by the attack. Radii are uniform in ``radius`` (capped so
    the edit stays inside the patch), injected contrasts uniform in ``contrast``. Each row stores a
    (2 size)^2 context crop and its mask. Returns the CSV path.
    """
    mod = "CT" if preprocess.canonical_modality(modality) == "CT" else "MRI"
    att = datasets.ATTACKS.get(str(attack).lower())
    if att is None:
        raise DataError(f"unknown attack {attack!r}: expected 'Inject' or 'Remove'")
    styles = METHODS[att]
    real_type, fake_type = ("TM", "FM") if att == "Inject" else ("TB", "FB")
    hi_r = min(radius[1], (size // 2) / (2.0 if att == "Inject" else 1.2))  # keep the edit in the patch
    plan = _plan(sources, "test", size, min_body, n_per_class)
    weights = {id(s): _structure(s, 4) for s, _, _ in plan} if att == "Remove" else {}
    items, masks = [], []
    for kind in ("real", *styles):
        for src, valid, n_src in plan:
            for y, x in sample_centres(valid, n_src, rng, weights.get(id(src))):
                r, c = float(rng.uniform(radius[0], hi_r)), float(rng.uniform(*contrast))
                crop, mask, cy, cx = _attacked_crop(src, int(y), int(x), size, styles.get(kind), r, c, rng)
                name = f"{att.lower()}_{src.name}_f{src.frame}_{kind}_{len(items):05d}"
                fake = kind != "real"
                items.append({"image": crop, "x": cx, "y": cy, "type": fake_type if fake else real_type,
                              "methods": [kind] if fake else [], "name": name, "scanner": src.scanner,
                              "patient": src.patient, "source": src.name, "frame": src.frame,
                              "src_y": int(y), "src_x": int(x), "radius": round(r, 2) if fake else 0.0,
                              "contrast": round(c, 3) if fake and att == "Inject" else 0.0,
                              "mask": f"images/{name}_mask.npy"})
                masks.append(mask)
    csv_path = datasets.write_testset(root, mod, att, items, methods=list(styles))
    for it, m in zip(items, masks):
        np.save(csv_path.parent / it["mask"], m)
    return csv_path


def build(out_dir: str | Path, modality: str = "CT", size: int = 32, n_train: int = 4096,
          n_test: int = 150, seed: int = 0, test_frac: float = 0.35,
          inject_radius: Tuple[float, float] = (3.0, 8.0), remove_radius: Tuple[float, float] = (4.0, 10.0),
          contrast: Tuple[float, float] | None = None) -> DemoData:
    """Build the demo data under ``out_dir``: ``train.npz`` and ``testset/`` (see module doc).

    ``n_test`` rows per class and attack (real, and each tamper style); ``contrast``: nodule
    contrast range (default 40-150 HU for CT, 0.1-0.3 for MRI in [0, 1] units).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mod = "CT" if preprocess.canonical_modality(modality) == "CT" else "MRI"
    contrast = contrast or ((40.0, 150.0) if mod == "CT" else (0.1, 0.3))
    rng = np.random.default_rng(seed)
    min_body = 0.9 if mod == "CT" else 0.5
    sources = load_sources(mod, test_frac, size)
    train = train_patches(sources, size, n_train, rng, min_body=min_body)
    train_path = out / "train.npz"
    np.savez(train_path, **train)
    root = out / "testset"
    csvs = {"Inject": make_testset(root, sources, mod, "Inject", size, n_test, rng, inject_radius, contrast,
                                   min_body),
            "Remove": make_testset(root, sources, mod, "Remove", size, n_test, rng, remove_radius,
                                   min_body=min_body)}
    summary = {"modality": mod, "patch_size": size, "seed": seed, "test_frac": test_frac,
               "sources": sorted({f"{s.name} ({s.scanner}, {s.image.shape[0]}x{s.image.shape[1]})"
                                  for s in sources}),
               "n_slices": len(sources), "n_train": int(train["patches"].shape[0]),
               "n_test_per_class": n_test, "attacks": {a: list(METHODS[a]) for a in METHODS},
               "inject_radius": list(inject_radius), "remove_radius": list(remove_radius),
               "contrast": list(contrast)}
    (out / "data.json").write_text(json.dumps(summary, indent=2))
    return DemoData(out, train_path, root, csvs, summary)

"""The authors' published test-set layout: read it as labelled patches, or write it.

Layout under a root folder::

    CT/<attack>/CT_<attack>.csv      CT slices as .npy in Hounsfield units (or .dcm)
    MRI/MRI_<attack>.csv             MRI slices as images (.png) or .npy

with ``<attack>`` 'Inject' or 'Remove' (matched case-insensitively, also 'injection'/'removal').
CSV columns: ``path`` (relative to the CSV's folder), ``x`` (column), ``y`` (row), ``type``
(TM/FM/TB/FB or 0/1: TM/TB true malign/benign = real 0, FM/FB fake = 1), one 0/1 indicator column
``<method>-<CT|MRI>-<attack>`` per tamper method (e.g. ``CTGAN-CT-Inject``, ``SD-CT-Inject``: the
row belongs to that method's data set) and optional extras such as ``scanner`` or ``patient``.
"""

from __future__ import annotations

import csv
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from btd_jax.data import dicom, preprocess
from btd_jax.data.errors import DataError
from btd_jax.data.records import Skipped, TestSet
from btd_jax.data.validate import check_dtype, load_npy, read_csv
from btd_jax.runtime.atomic import atomic_open, atomic_path, save_npy

__all__ = ["ATTACKS", "LABELS", "testset_csv_path", "load_testset", "write_testset"]

ATTACKS = {"inject": "Inject", "injection": "Inject", "remove": "Remove", "removal": "Remove"}
# TM/TB: true malign/benign (real, 0); FM/FB: fake malign/benign (1).
LABELS = {"TM": 0, "TB": 0, "FM": 1, "FB": 1, "0": 0, "1": 1, "REAL": 0, "FAKE": 1}


def _attack(attack: str) -> str:
    a = ATTACKS.get(str(attack).strip().lower())
    if a is None:
        raise DataError(f"unknown attack {attack!r}: expected one of {sorted(set(ATTACKS))}")
    return a


def _mod_dir(modality: str) -> str:
    return "CT" if preprocess.canonical_modality(modality) == "CT" else "MRI"


def _child(parent: Path | None, names: Iterable[str]) -> Path | None:
    """The entry of ``parent`` whose name matches one of ``names`` case-insensitively."""
    if parent is None or not parent.is_dir():
        return None
    low = {n.lower() for n in names}
    return next((c for c in sorted(parent.iterdir()) if c.name.lower() in low), None)


def testset_csv_path(root: str | os.PathLike, modality: str, attack: str) -> Path:
    """Where the CSV of (modality, attack) lives under ``root``.

    Existing files are matched case-insensitively and with the 'injection'/'removal' spellings;
    otherwise the canonical path ``CT/Inject/CT_Inject.csv`` / ``MRI/MRI_Inject.csv`` is returned.
    """
    root, mod, att = Path(root), _mod_dir(modality), _attack(attack)
    aliases = sorted({a for a, c in ATTACKS.items() if c == att} | {att.lower()})
    canonical = root.joinpath(*([mod, att] if mod == "CT" else [mod]), f"{mod}_{att}.csv")
    d = _child(root, [mod] if mod == "CT" else [mod, "MR"])
    if mod == "CT":
        d = _child(d, aliases)
    return _child(d, [f"{mod}_{a}.csv" for a in aliases]) or canonical


def _methods_in(header: Sequence[str], mod: str, att: str) -> dict[str, str]:
    """Indicator columns '<method>-<mod>-<attack>' -> method name (attack matched loosely)."""
    aliases = {a for a, c in ATTACKS.items() if c == att} | {att.lower()}
    out = {}
    for col in header:
        parts = col.rsplit("-", 2)
        if len(parts) == 3 and parts[1].upper() in (mod, "MR" if mod == "MRI" else mod) \
                and parts[2].lower() in aliases:
            out[col] = parts[0]
    return out


def _truthy(v: str) -> bool:
    return str(v).strip().lower() in ("1", "1.0", "true", "yes", "y", "t")


def _read_image(path: Path, mod: str) -> np.ndarray:
    """One test-set image in [0, 1]: CT .npy in HU (windowed here) or .dcm; MRI .npy/.png."""
    suffix = path.suffix.lower()
    if suffix == ".dcm" or (mod == "CT" and suffix == ""):
        img = dicom.read_slice(path).pixels[0]
    elif suffix == ".npy":
        img = load_npy(path)
    elif suffix in (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp") and mod == "MRI":
        import matplotlib.image as mpimg
        img = mpimg.imread(path)
        if np.issubdtype(img.dtype, np.integer):
            img = img / float(np.iinfo(img.dtype).max)
        if img.ndim == 3:  # grey saved as RGB(A): drop alpha, average the colour channels
            img = img[..., :3].mean(axis=-1)
    else:
        raise DataError(f"{path}: unsupported {mod} image type {suffix!r} "
                        f"({'.npy in HU or .dcm' if mod == 'CT' else '.npy or .png'})")
    img = np.asarray(img)
    check_dtype(img.dtype, str(path))  # before any cast: complex is refused, never silently made real
    if img.ndim == 3 and img.shape[0] == 1:
        img = img[0]
    if img.ndim != 2:
        raise DataError(f"{path}: expected a 2-D slice, got shape {img.shape}")
    if mod == "CT":
        return preprocess.window_ct(img)
    img = img.astype(np.float32)
    preprocess._check_finite(img, str(path))
    if img.min() < 0.0 or img.max() > 1.0:  # raw intensities: standardise this slice on its own
        img = preprocess.normalize_mri(img)
    return img


def _resolve(p: str, csv_path: Path, root: Path) -> Path:
    cand = Path(p)
    if cand.is_absolute():
        return cand
    for base in (csv_path.parent, root / csv_path.relative_to(root).parts[0], root):
        if (base / cand).exists():
            return base / cand
    return csv_path.parent / cand


def load_testset(root: str | os.PathLike, modality: str, attack: str, tamper: str | None = None,
                 size: int | None = None, mode: str = "authors", strict: bool = True,
                 cache_images: int = 64) -> TestSet:
    """Load one of the authors' evaluation sets as patches.

    Args:
      root: folder holding ``CT/`` and/or ``MRI/``.
      modality: 'CT' or 'MRI'; attack: 'Inject'/'injection' or 'Remove'/'removal'.
      tamper: keep only rows whose ``<tamper>-<mod>-<attack>`` indicator is 1 (e.g. 'CTGAN', 'SD').
      size: patch side (default 96 for CT, 128 for MRI, as in the paper).
      mode: border rule of :func:`preprocess.extract_patch`: "authors" (default: crop, then zero-pad
        at the bottom/right, exactly as the authors' notebook), "centered" or "shift".
      strict: raise on the first bad row; else skip it and record why in ``.skipped``.
    Returns:
      :class:`TestSet` with patches (N, size, size) float32 in [0, 1] and labels (N,).
    """
    root = Path(root)
    mod, att = _mod_dir(modality), _attack(attack)
    size = int(size or preprocess.PATCH_SIZE["CT" if mod == "CT" else "MR"])
    csv_path = testset_csv_path(root, mod, att)
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: test-set CSV not found (expected the layout "
                        f"CT/<attack>/CT_<attack>.csv or MRI/MRI_<attack>.csv under {root})")
    header, rows = read_csv(csv_path)
    missing = [c for c in ("path", "x", "y", "type") if c not in header]
    if missing:
        raise DataError(f"{csv_path}: missing column(s) {missing}; found {header}")
    methods = _methods_in(header, mod, att)
    if tamper is not None:
        cols = [c for c, m in methods.items() if m.lower() == tamper.lower()]
        if not cols:
            raise DataError(f"{csv_path}: no indicator column for tamper method {tamper!r}; "
                            f"found {sorted(set(methods.values())) or 'none'}")
        rows = [r for r in rows if _truthy(r[cols[0]])]
    if not rows:
        raise DataError(f"{csv_path}: no rows" + (f" for tamper method {tamper!r}" if tamper else ""))

    cache: OrderedDict[Path, np.ndarray] = OrderedDict()
    patches, kept, labels, skipped = [], [], [], []
    for i, r in enumerate(rows):
        item = f"{csv_path} row {i + 2} ({r['path']})"  # +2: header line, 1-based
        try:
            label = LABELS.get(r["type"].upper())
            if label is None:
                raise DataError(f"unknown type {r['type']!r}; expected TM/FM/TB/FB or 0/1")
            path = _resolve(r["path"], csv_path, root)
            if not path.is_file():
                raise DataError(f"image file {path} does not exist")
            if path not in cache:
                cache[path] = _read_image(path, mod)
                if len(cache) > cache_images:
                    cache.popitem(last=False)
            patch = preprocess.extract_patch(cache[path], r["x"], r["y"], size, mode=mode)
        except DataError as e:
            if strict:
                raise DataError(f"{item}: {e}") from None
            skipped.append(Skipped(item, str(e)))
            continue
        patches.append(patch)
        labels.append(label)
        row = dict(r, path=str(path))
        names = [m for c, m in methods.items() if _truthy(r.get(c, ""))]
        row["method"] = "real" if label == 0 else ("+".join(names) if names else "unknown")
        kept.append(row)
    if not patches:
        raise DataError(f"{csv_path}: every row was skipped; first: {skipped[0].reason}")
    columns: dict[str, np.ndarray] = {k: np.array([r.get(k, "") for r in kept])
                                      for k in list(header) + ["method"]}
    columns["x"] = np.array([int(round(float(r["x"]))) for r in kept], np.int64)
    columns["y"] = np.array([int(round(float(r["y"]))) for r in kept], np.int64)
    return TestSet(np.stack(patches).astype(np.float32), columns, skipped,
                   labels=np.array(labels, np.int64), modality=mod, attack=att)


def write_testset(root: str | os.PathLike, modality: str, attack: str,
                  items: Iterable[Mapping[str, Any]], methods: Sequence[str] | None = None,
                  image_format: str = "npy") -> Path:
    """Write items in the authors' layout and return the CSV path (see :func:`load_testset`).

    Each item is a mapping with ``image`` ((H, W): HU for CT, [0, 1] for MRI), ``x``, ``y``,
    ``type`` (TM/FM/TB/FB or 0/1) and optionally ``methods`` (tamper methods whose indicator is 1),
    ``name`` (file stem, default ``img_<i>``) and any extra scalar columns (``scanner``,
    ``patient``, ...). Images go to ``images/`` next to the CSV, paths in the CSV are relative.
    ``methods`` lists every indicator column (default: all methods named by the items).
    ``image_format``: 'npy' or (MRI only) 'png' (16-bit grey).
    """
    mod, att = _mod_dir(modality), _attack(attack)
    if image_format not in ("npy", "png") or (image_format == "png" and mod == "CT"):
        raise DataError(f"write_testset: image_format {image_format!r} not allowed for {mod}")
    csv_path = Path(root).joinpath(*([mod, att] if mod == "CT" else [mod]), f"{mod}_{att}.csv")
    img_dir = csv_path.parent / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    items = list(items)
    if methods is None:
        methods = sorted({m for it in items for m in it.get("methods", ())})
    extra: list[str] = []
    for it in items:
        extra += [k for k in it if k not in ("image", "x", "y", "type", "methods", "name", "path")
                  and k not in extra]
    ind_cols = [f"{m}-{mod}-{att}" for m in methods]
    rows = []
    for i, it in enumerate(items):
        name = str(it.get("name", f"img_{i:05d}"))
        rel = Path("images") / f"{name}.{image_format}"
        img = np.asarray(it["image"])
        if image_format == "npy":
            save_npy(csv_path.parent / rel, img)
        else:  # 16-bit grey PNG (Pillow comes with matplotlib): 1/65535 steps
            from PIL import Image
            q = np.round(np.clip(img, 0.0, 1.0) * 65535.0).astype(np.uint16)
            with atomic_path(csv_path.parent / rel) as tmp:
                Image.fromarray(q).save(tmp)
        row = {"path": rel.as_posix(), "x": int(it["x"]), "y": int(it["y"]), "type": it["type"]}
        row.update({c: int(m in it.get("methods", ())) for c, m in zip(ind_cols, methods)})
        row.update({k: it.get(k, "") for k in extra})
        rows.append(row)
    with atomic_open(csv_path, newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "x", "y", "type", *ind_cols, *extra])
        w.writeheader()
        w.writerows(rows)
    return csv_path

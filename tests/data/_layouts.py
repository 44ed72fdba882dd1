"""Small inputs in the authors' training layouts, written in a test's tmp_path."""

import csv
from pathlib import Path

import numpy as np


def write_authors_ct(root: Path, patients=3, slices=4, h=80, w=72, seed=0, extra_rows=(),
                     prefix="new_dataset/"):
    """``root/train_csv.csv`` (unix_path, x, y, istumor; a last row the authors drop) and HU
    slices ``root/P<p>/s<k>.npy``. Returns {relative path: HU array}."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    hu, rows = {}, []
    for p in range(patients):
        (root / f"P{p}").mkdir(exist_ok=True)
        for k in range(slices):
            rel = f"P{p}/s{k}.npy"
            img = rng.normal(0.0, 700.0, (h, w)).round().astype(np.int16)
            np.save(root / rel, img)
            hu[rel] = img
            rows.append([prefix + rel, 10 + 7 * k, 5 + 11 * p, 0])
    rows += [list(r) for r in extra_rows]
    rows.append(["dropped/last_row.npy", 1, 1, 0])  # the authors' loader drops the last row
    with open(root / "train_csv.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(["unix_path", "x", "y", "istumor"])
        wr.writerows(rows)
    return hu


def write_pngs(root: Path, patients=2, per=3, h=40, w=52, seed=0):
    """8-bit grey PNGs ``root/P<p>/img<k>.png``; returns {relative path: uint8 array}."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = {}
    for p in range(patients):
        (root / f"P{p}").mkdir(parents=True, exist_ok=True)
        for k in range(per):
            arr = rng.integers(0, 256, (h, w), dtype=np.uint8)
            Image.fromarray(arr).save(root / f"P{p}/img{k}.png")
            out[f"P{p}/img{k}.png"] = arr
    return out

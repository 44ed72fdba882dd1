"""Every figure btd_jax draws: ROC curves, score histograms, residual overlays, method bars.

Each function takes arrays (no models, no files to read) and writes one PNG (or a folder of them),
returning its path. matplotlib is an optional heavy dependency: it is imported on the first
figure, with the headless Agg backend, so importing this module costs nothing::

    plots.plot_roc({"center32": (labels, scores)}, "roc.png")
    plots.plot_histogram(scores, labels, "hist.png", threshold=thr)
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Sequence, Tuple

import numpy as np

from btd_jax import metrics
from btd_jax.runtime.atomic import atomic_path

__all__ = ["pyplot", "plot_roc", "plot_histogram", "save_overlay", "plot_bars", "write_overlays",
           "residual_grid", "mosaic"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (headless; never opens a window)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str, dpi: int) -> None:
    """Saves ``fig`` atomically (the format from the suffix of ``path``) and closes it."""
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        pyplot().close(fig)


def plot_roc(curves: Mapping[str, Tuple[Any, Any]], path: str, title: str = "") -> str:
    """ROC curves: ``curves`` = {legend label: (labels (N,), scores (N,))}; writes a PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for name, (y, s) in curves.items():
        fpr, tpr, _ = metrics.roc_curve(y, s)
        ax.plot(fpr, tpr, label=f"{name} (AUC {metrics.auc(y, s):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", ls=":", lw=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    _save(fig, path, 120)
    return path


def plot_histogram(scores: Any, labels: Any, path: str, title: str = "", threshold: Optional[float] = None) -> str:
    """Real vs fake score histograms (log-spaced bins when all scores are positive); writes a PNG."""
    plt = pyplot()
    y, s = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    positive = bool(np.all(s > 0)) and s.max() > s.min()
    bins = np.geomspace(s.min(), s.max(), 40) if positive else 40
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(s[y == 0], bins=bins, alpha=0.6, label=f"real ({int((y == 0).sum())})", density=True)
    ax.hist(s[y == 1], bins=bins, alpha=0.6, label=f"fake ({int((y == 1).sum())})", density=True)
    if threshold is not None:
        ax.axvline(threshold, color="red", ls="--", lw=1, label="threshold")
    if positive:
        ax.set_xscale("log")
    ax.set(xlabel="BTD score", ylabel="density", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path, 120)
    return path


def save_overlay(img01: np.ndarray, res: Any, path: str, title: str = "") -> str:
    """Slice in grey, suspicion map in 'hot' on top, top-k windows as numbered boxes; writes a PNG.

    ``res`` is a :class:`btd_jax.localize.LocalizeResult` (suspicion (H, W), top, patch, center, stride).
    """
    plt = pyplot()
    from matplotlib.patches import Rectangle

    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(img01, cmap="gray", vmin=0, vmax=1)
    s = res.suspicion
    hi = np.percentile(s, 99.5) if s.size else 1.0
    ax.imshow(s, cmap="hot", alpha=0.45, vmin=0, vmax=max(float(hi), 1e-12))
    half = (res.center or res.patch) / 2
    for i, t in enumerate(res.top):
        ax.add_patch(Rectangle((t["col"] - half, t["row"] - half), 2 * half, 2 * half, fill=False,
                               edgecolor="cyan" if i else "lime", lw=1.5))
        ax.text(t["col"] - half, t["row"] - half - 2, f"{i + 1}: {t['score']:.3g}", color="cyan", fontsize=7)
    ax.set_title(title or f"BTD suspicion (stride {res.stride}, window {res.patch})", fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    _save(fig, path, 110)
    return path


def plot_bars(rows: Sequence[Mapping[str, Any]], path: str, title: str = "") -> str:
    """Grouped bars per dataset: bootstrap-mean AUC (95% CI whiskers) and EER for every method -> PNG."""
    plt = pyplot()
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cell = {(r["method"], r["dataset"]): r for r in rows}
    fig, axes = plt.subplots(2, 1, figsize=(min(20, max(7, 0.3 * len(methods) * len(datasets) + 3)), 7.5))
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(datasets))
    for ax, metric in zip(axes, ("auc", "eer")):
        for j, m in enumerate(methods):
            r = [cell.get((m, d)) for d in datasets]
            mean = np.array([np.nan if c is None else c[f"{metric}_mean"] for c in r])
            lo = np.array([np.nan if c is None else c[f"{metric}_ci_low"] for c in r])
            hi = np.array([np.nan if c is None else c[f"{metric}_ci_high"] for c in r])
            ax.bar(x + (j - (len(methods) - 1) / 2) * width, mean, width, label=m,
                   yerr=np.stack([mean - lo, hi - mean]), capsize=2)
        ax.axhline(0.5, color="gray", lw=0.8, ls="--")
        ax.set_xticks(x, datasets)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"{metric.upper()} (bootstrap mean, 95% CI)")
        ax.set_title(f"{metric.upper()} ({'higher' if metric == 'auc' else 'lower'} is better)")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(5, len(methods)), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))  # room for the legend below the bars
    _save(fig, path, 110)
    return path


def write_overlays(folder: str, patches: np.ndarray, maps: np.ndarray, scores: Any, ids: Sequence[Any],
                   limit: int) -> int:
    """One PNG per patch (highest scores first, at most ``limit``): patch, residual map, map over patch.

    ``patches``/``maps``: (N, H, W); returns how many PNGs were written to ``folder`` (created).
    """
    plt = pyplot()
    os.makedirs(folder, exist_ok=True)
    order = np.argsort(-np.asarray(scores))[:max(limit, 0)]
    vmax = float(np.percentile(maps[order], 99.5)) if len(order) else 1.0
    for i in order:
        fig, ax = plt.subplots(1, 3, figsize=(9, 3.2))
        ax[0].imshow(patches[i], cmap="gray", vmin=0, vmax=1)
        ax[0].set_title(f"patch {ids[i]}")
        im = ax[1].imshow(maps[i], cmap="magma", vmin=0, vmax=vmax)
        ax[1].set_title("(x - x_d)^2")
        fig.colorbar(im, ax=ax[1], fraction=0.046)
        ax[2].imshow(patches[i], cmap="gray", vmin=0, vmax=1)
        ax[2].imshow(maps[i], cmap="magma", vmin=0, vmax=vmax, alpha=0.5)
        ax[2].set_title(f"score {float(scores[i]):.4g}")
        for a in ax:
            a.axis("off")
        fig.tight_layout()
        _save(fig, os.path.join(folder, f"{ids[i]}.png"), 80)
    return len(order)


def residual_grid(rows: Sequence[Tuple[str, Sequence[Mapping[str, Any]]]], path: str, per_row: int,
                  title: str = "") -> str:
    """A grid of (patch | residual map over the patch) pairs, ``per_row`` pairs per row; writes a PNG.

    ``rows``: [(row label, cells)], each cell {"image": (H, W), "map": (H, W), "vmax": colour-scale top
    of the map, "title": str, "mask": optional (H, W) outlined in cyan at 0.5}. Short rows leave blanks.
    """
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), 2 * per_row, figsize=(2 * per_row * 1.3, len(rows) * 1.45), squeeze=False)
    for r, (label, cells) in enumerate(rows):
        for j in range(per_row):
            a_img, a_map = axes[r, 2 * j], axes[r, 2 * j + 1]
            for a in (a_img, a_map):
                a.set_xticks([]), a.set_yticks([])
            if j >= len(cells):
                continue
            c = cells[j]
            lo, hi = np.percentile(c["image"], [1, 99])  # per-patch stretch: CT windows are wide
            a_img.imshow(c["image"], cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6))
            a_map.imshow(c["image"], cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6))
            a_map.imshow(c["map"], cmap="inferno", alpha=0.6, vmin=0, vmax=c["vmax"])
            if c.get("mask") is not None:
                a_map.contour(c["mask"], levels=[0.5], colors="cyan", linewidths=0.6)
            a_img.set_title(c["title"], fontsize=6)
        axes[r, 0].set_ylabel(label, fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    _save(fig, path, 110)
    return str(path)


def mosaic(left: np.ndarray, right: np.ndarray, path: str, titles: Tuple[str, str] = ("fake", "real"),
           title: str = "", per_row: int = 4) -> str:
    """Two grids side by side (e.g. 16 fakes beside 16 reals), (N, H, W) each, on one grey scale.

    Both grids share the display range (1st-99th percentile of all patches together), so a smoother
    or brighter patch is visible as it would be to a reader; no outline marks the edit. Writes a PNG.
    """
    left, right = np.asarray(left, np.float64), np.asarray(right, np.float64)
    rows = max(1, -(-max(len(left), len(right)) // per_row))
    lo, hi = np.percentile(np.concatenate([left.ravel(), right.ravel()]), [1, 99])
    plt = pyplot()
    fig, axes = plt.subplots(rows, 2 * per_row + 1, figsize=((2 * per_row + 1) * 1.0, rows * 1.05 + 0.4),
                             squeeze=False)
    for r in range(rows):
        for j in range(2 * per_row + 1):
            a = axes[r, j]
            a.axis("off")
            side, k = (left, j) if j < per_row else (right, j - per_row - 1)
            i = r * per_row + k
            if j != per_row and i < len(side):
                a.imshow(side[i], cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6))
    axes[0, per_row // 2].set_title(titles[0], fontsize=8)
    axes[0, per_row + 1 + per_row // 2].set_title(titles[1], fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    _save(fig, path, 100)
    return str(path)

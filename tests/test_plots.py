"""btd_jax.plots: every figure writes a PNG of the expected size; overlays pick the highest scores."""

import os
import subprocess
import sys

import numpy as np

from btd_jax import plots


def _png_size(path):
    img = plots.pyplot().imread(path)
    return img.shape[1], img.shape[0]  # (width, height) in pixels


def test_plots_module_imports_no_matplotlib():
    code = "import sys, btd_jax.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_write_overlays_keeps_the_highest_scores(tmp_path):
    rng = np.random.default_rng(0)
    patches, maps = rng.uniform(size=(6, 16, 16)), rng.uniform(size=(6, 16, 16))
    scores = np.array([0.1, 0.9, 0.5, 0.7, 0.2, 0.3])
    n = plots.write_overlays(str(tmp_path / "png"), patches, maps, scores, np.arange(10, 16), limit=3)
    assert n == 3
    assert sorted(os.listdir(tmp_path / "png")) == ["11.png", "12.png", "13.png"]
    assert _png_size(str(tmp_path / "png" / "11.png")) == (720, 256)  # 9 x 3.2 in at 80 dpi
    assert plots.write_overlays(str(tmp_path / "none"), patches, maps, scores, np.arange(6), limit=0) == 0


def test_bars_and_grid_sizes(tmp_path):
    rows = [dict(dataset=d, method=m, auc_mean=0.7, auc_ci_low=0.6, auc_ci_high=0.8, eer_mean=0.3,
                 eer_ci_low=0.2, eer_ci_high=0.4) for d in ("A", "B") for m in ("BTD", "AE")]
    assert _png_size(plots.plot_bars(rows, str(tmp_path / "bars.png"), "t")) == (770, 825)  # 7 x 7.5 in, 110 dpi
    rng = np.random.default_rng(1)
    cell = {"image": rng.uniform(size=(16, 16)), "map": rng.uniform(size=(16, 16)), "vmax": 1.0, "title": "s",
            "mask": np.pad(np.ones((4, 4)), 6)}
    grid = plots.residual_grid([("Inject\nA", [cell, dict(cell, mask=None)]), ("real", [cell])],
                               str(tmp_path / "grid.png"), per_row=2, title="maps")
    assert _png_size(grid) == (572, 319)  # (2 * 2 * 1.3) x (2 * 1.45) in at 110 dpi

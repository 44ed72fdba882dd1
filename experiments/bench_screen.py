"""Benchmark: whole-scan screening (btd_jax.screen cascade) against exhaustive localisation at stride 16.

Two parts, one run, JSON to ``--out``:

* **recall** (a trained ``demo`` model, 32 px patches): volumes of ``--slices`` real 512x512 head-CT
  slices (the 8 flips/rotations of pydicom's CQ500 slice) with one slice tampered in its held-out
  region (the demo tamper styles, plus RePaint removal by the demo DDPM itself when
  ``--repaint``). Per trial and cascade setting: is the tamper in the cascade's top-1 / top-k, does
  the cascade's top-1 equal exhaustive localisation's top-1 (same window; within one stride), and
  the seconds of both.
* **timing** (the paper's ``ct`` preset, 96 px, random weights: speed does not depend on their
  values): seconds per 512x512 slice for exhaustive stride-16 localisation and for the cascade,
  float32 and bfloat16, and the bfloat16 scores' agreement with float32 (Spearman, max relative
  difference) on the ct weights and on the trained demo weights. A 300-slice volume is extrapolated
  from measured slices: 300 x proposal seconds per slice + the exact stage at its volume budget.

    python -m experiments.bench_screen --workdir runs/demo --trials 12 --out experiments/results/bench_screen.json

Load averages are recorded around each timed part: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any, Dict, List

import jax
import numpy as np
from scipy import stats

from btd_jax import configs, localize, screen
from btd_jax.attacks import repaint
from btd_jax.data import demo_data, preprocess, tamper
from btd_jax.models.unet import abstract_params
from btd_jax.score import Scorer

STYLES = ("inject-gan", "inject-latent", "inject-smooth", "remove-ctgan", "remove-latent")


def _load() -> List[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _dihedral(img: np.ndarray, k: int) -> np.ndarray:
    return np.rot90(img[:, ::-1] if k >= 4 else img, k % 4).copy()


def _tampered_slice(src, style: str, rng, scorer, p: int):
    """(slice01 in the source orientation, mask) with one attack at a random held-out body site."""
    valid = demo_data.valid_centres(src, "test", p, 0.9)
    y, x = (int(v) for v in demo_data.sample_centres(valid, 1, rng)[0])
    if style == "repaint":
        r = float(rng.uniform(4.0, p / 2.5))
        yy, xx = np.mgrid[:p, :p]
        m = ((yy - p // 2) ** 2 + (xx - p // 2) ** 2) <= r * r
        patch = src.unit[y - p // 2:y - p // 2 + p, x - p // 2:x - p // 2 + p]
        out = repaint.inpaint(scorer.params, scorer.cfg, patch[None], m[None].astype(np.float32),
                              jax.random.key(int(rng.integers(1 << 30))), batch_size=8)[0]
        img, mask = src.unit.copy(), np.zeros(src.unit.shape, bool)
        img[y - p // 2:y - p // 2 + p, x - p // 2:x - p // 2 + p] = out
        mask[y - p // 2:y - p // 2 + p, x - p // 2:x - p // 2 + p] = m
        return img, mask
    if style.startswith("inject"):
        r, kw = float(rng.uniform(3.0, p / 4)), {"contrast": float(rng.uniform(40.0, 150.0))}
        if style == "inject-latent":
            kw["box_scale"] = min(2.5, p / (2.0 * r) - 0.01)
    else:
        r, kw = float(rng.uniform(4.0, p / 2.4)), {}
        if style == "remove-latent":
            kw["box_scale"] = min(1.6, p / (2.0 * r) - 0.01)
    hu, mask = tamper.apply(style, src.image, y, x, r, rng, **kw)
    return preprocess.window_ct(hu), mask


def _crops(real: np.ndarray, img: np.ndarray, mask: np.ndarray, s_t: int, n: int, size: int, p: int, rng):
    """``n`` random size x size crops of the real slice, crop ``s_t`` of the tampered one around its
    site (at least half a patch from the crop's border) -> (volume, mask of the tampered crop)."""
    ys, xs = np.nonzero(mask)
    cy, cx = int(ys.mean()), int(xs.mean())
    h, w = real.shape
    vol = np.empty((n, size, size), np.float32)
    for s in range(n):
        if s == s_t:
            r0 = int(rng.integers(max(cy + p // 2 - size, 0), min(cy - p // 2, h - size) + 1))
            c0 = int(rng.integers(max(cx + p // 2 - size, 0), min(cx - p // 2, w - size) + 1))
            vol[s], crop_mask = img[r0:r0 + size, c0:c0 + size], mask[r0:r0 + size, c0:c0 + size]
        else:
            r0, c0 = (int(v) for v in rng.integers(0, (h - size + 1, w - size + 1)))
            vol[s] = real[r0:r0 + size, c0:c0 + size]
    return vol, crop_mask


def _hit(f: Dict[str, Any], mask: np.ndarray, s: int, k: int) -> bool:
    """The finding's central k x k window (or, for the exhaustive list, the window) touches the mask."""
    if f["slice"] != s:
        return False
    r0, c0 = max(f["row"] - k // 2, 0), max(f["col"] - k // 2, 0)
    return bool(mask[r0:r0 + k, c0:c0 + k].any())


def _exhaustive(scorer, vol, center, top_k, cache, tampered: int):
    """Exhaustive stride-16 localisation of every slice (the real slices' results cached by index)
    -> the volume's top list and the seconds spent on the tampered slice."""
    t, tops = 0.0, []
    for s, img in enumerate(vol):
        h = None if s == tampered else s
        if h is None or h not in cache:
            t0 = time.perf_counter()
            res = localize.localize_slice(scorer, img, stride=16, center=center, top_k=top_k)
            dt = time.perf_counter() - t0
            if h is None:
                t = dt
            else:
                cache[h] = (res.top, dt)
            top = res.top
        else:
            top = cache[h][0]
        tops += [dict(f, slice=s) for f in top]
    tops.sort(key=lambda f: -f["score"])
    return tops[:top_k], t


def recall_part(args, scorer) -> Dict[str, Any]:
    p = scorer.cfg.image_size
    center = scorer.cfg.score.center
    src = next(s for s in demo_data.load_sources("CT", 0.35, p) if s.image.shape == (512, 512))
    real = np.stack([_dihedral(src.unit, k) for k in range(args.slices)])
    settings = {"grid": dict(proposal="grid"), "grid_half": dict(proposal="grid", proposal_stride=p // 2),
                "grid_tissue": dict(proposal="grid", tissue_min=0.5), "fullconv": dict(proposal="fullconv"),
                "grid_wide": dict(proposal="grid", per_slice=6, refine=2)}
    settings = {k: v for k, v in settings.items() if k in args.settings}
    styles = STYLES + (("repaint",) if args.repaint else ())
    rng = np.random.default_rng(args.seed)
    cache: Dict[Any, Any] = {}
    if args.crop:
        real = real[:, :args.crop, :args.crop]
    for kw in settings.values():  # fixed chunk shapes (batch_size), compiled once outside the timings
        kw["batch_size"] = 64
        screen.screen_volume(scorer, real, top_k=args.top_k, **kw)
    localize.localize_slice(scorer, real[0], stride=16, center=center, top_k=1)
    trials = []
    load0 = _load()
    for i in range(args.trials):
        style = styles[i % len(styles)]
        img, mask = _tampered_slice(src, style, rng, scorer, p)
        s_t = int(rng.integers(args.slices))
        if args.crop:  # fresh content every trial: random crops, the tampered one around the site
            cache = {}
            vol, mask = _crops(src.unit, img, mask, s_t, args.slices, args.crop, p, rng)
        else:
            vol = real.copy()
            vol[s_t], mask = _dihedral(img, s_t), _dihedral(mask, s_t)
        # real slices' exhaustive results are cached (their seconds are kept); only the tampered one is new
        ex_top, ex_tampered_s = _exhaustive(scorer, vol, center, args.top_k, cache, tampered=s_t)
        row = {"style": style, "slice": s_t, "tamper_pixels": int(mask.sum()),
               "exhaustive": {"top1_hit": _hit(ex_top[0], mask, s_t, center or p),
                              "topk_hit": any(_hit(f, mask, s_t, center or p) for f in ex_top),
                              "tampered_slice_s": ex_tampered_s, "top1": ex_top[0]}}
        for name, kw in settings.items():
            t0 = time.perf_counter()
            res = screen.screen_volume(scorer, vol, top_k=args.top_k, **kw)
            dt = time.perf_counter() - t0
            top1, e1 = res.findings[0], ex_top[0]
            row[name] = {"top1_hit": _hit(top1, mask, s_t, center or p),
                         "topk_hit": any(_hit(f, mask, s_t, center or p) for f in res.findings),
                         "agree_top1": (top1["slice"], top1["row"], top1["col"]) == (e1["slice"], e1["row"], e1["col"]),
                         "agree_within_stride": top1["slice"] == e1["slice"] and max(
                             abs(top1["row"] - e1["row"]), abs(top1["col"] - e1["col"])) <= 16,
                         "seconds": dt, "work": res.work}
        trials.append(row)
        print(json.dumps({"trial": i, "style": style, **{k: {m: v for m, v in row[k].items()
                                                             if m in ("top1_hit", "topk_hit", "agree_top1", "seconds")}
                                                         for k in ("exhaustive", *settings)}}), flush=True)
    real_s = [dt for _, dt in cache.values()]
    ex_per_slice = float(np.median(real_s + [t["exhaustive"]["tampered_slice_s"] for t in trials]))
    summary = {"exhaustive": {"top1_recall": float(np.mean([t["exhaustive"]["top1_hit"] for t in trials])),
                              "topk_recall": float(np.mean([t["exhaustive"]["topk_hit"] for t in trials])),
                              "seconds_per_slice": ex_per_slice}}
    for name in settings:
        per_slice = float(np.median([t[name]["seconds"] for t in trials])) / args.slices
        summary[name] = {
            **{k: float(np.mean([t[name][k] for t in trials])) for k in ("agree_top1", "agree_within_stride")},
            "top1_recall": float(np.mean([t[name]["top1_hit"] for t in trials])),
            "topk_recall": float(np.mean([t[name]["topk_hit"] for t in trials])),
            "seconds_per_slice": per_slice, "speedup_vs_exhaustive": ex_per_slice / per_slice,
            "exact_windows_per_volume": float(np.mean([t[name]["work"]["exact_windows"] for t in trials])),
            "proposal_windows_per_slice": float(np.mean([t[name]["work"]["proposal_windows"] for t in trials])) / args.slices}
    return {"config": scorer.cfg.name, "patch": p, "center": center, "slices_per_volume": args.slices,
            "slice_size": int(vol.shape[1]),
            "trials": len(trials), "top_k": args.top_k, "styles": list(styles), "settings": settings,
            "load_before": load0, "load_after": _load(), "summary": summary, "per_trial": trials}


def _random_scorer(name: str, dtype: str = "float32") -> Scorer:
    cfg = configs.override(configs.get(name), {"model.dtype": dtype})
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: (0.05 * rng.standard_normal(a.shape)).astype(np.float32), abstract_params(cfg.model))
    return Scorer.from_params(params, cfg)


def bf16_agreement(scorer: Scorer, windows: np.ndarray, center) -> Dict[str, Any]:
    """Scores of the same windows in float32 and bfloat16 compute (parameters stay float32)."""
    bf = Scorer.from_params(scorer.params, configs.override(scorer.cfg, {"model.dtype": "bfloat16"}))
    a = scorer.score(windows, center=center)
    t0 = time.perf_counter()
    a = scorer.score(windows, center=center)
    ta = time.perf_counter() - t0
    b = bf.score(windows, center=center)
    t0 = time.perf_counter()
    b = bf.score(windows, center=center)
    tb = time.perf_counter() - t0
    return {"n": int(len(windows)), "spearman": float(stats.spearmanr(a, b)[0]),
            "max_rel_diff": float(np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-12))),
            "median_rel_diff": float(np.median(np.abs(a - b) / np.maximum(np.abs(a), 1e-12))),
            "top1_same": bool(np.argmax(a) == np.argmax(b)), "float32_s": ta, "bfloat16_s": tb}


def timing_part(args) -> Dict[str, Any]:
    src = next(s for s in demo_data.load_sources("CT", 0.35, 96) if s.image.shape == (512, 512))
    vol = np.stack([_dihedral(src.unit, k) for k in range(args.timing_slices)])
    out: Dict[str, Any] = {"config": "ct", "weights": "random (timing only)", "slice": [512, 512], "center": 32,
                           "slices_measured": args.timing_slices}
    for dtype in args.dtypes:
        sc = _random_scorer("ct", dtype)
        row: Dict[str, Any] = {"load_before": _load()}
        for name, kw in (("fullconv", dict(proposal="fullconv")), ("grid", dict(proposal="grid"))):
            kw["batch_size"] = 16  # one chunk shape for every call: compiled once, outside the timings
            screen.screen_volume(sc, vol[:1], center=32, **kw)
            t0 = time.perf_counter()
            res = screen.screen_volume(sc, vol, center=32, **kw)
            dt = time.perf_counter() - t0
            w = res.work
            exact_per_window = w["exact_s"] / max(w["exact_windows"], 1)
            budget = min(w["exact_windows"] / max(w["candidates"], 1), 9) * 64  # max_candidates x neighbourhood
            row[name] = {"seconds": dt, "seconds_per_slice": dt / len(vol), "work": w,
                         "proposal_s_per_slice": w["proposal_s"] / len(vol), "exact_s_per_window": exact_per_window,
                         "volume_300_s_extrapolated": 300 * w["proposal_s"] / len(vol) + budget * exact_per_window}
        if dtype in args.exhaustive_dtypes:
            localize.localize_slice(sc, vol[0][:96 + 16 * 15, :96 + 16 * 15], stride=16, center=32)  # compile (256 windows)
            t0 = time.perf_counter()
            ex = localize.localize_slice(sc, vol[0], stride=16, center=32, top_k=5)
            dt = time.perf_counter() - t0
            row["exhaustive_stride16"] = {"seconds_per_slice": dt, "windows": int(ex.scores.size),
                                          "volume_300_s_extrapolated": 300 * dt}
            for name in ("fullconv", "grid"):
                row[name]["speedup_vs_exhaustive_per_slice"] = dt / row[name]["seconds_per_slice"]
                row[name]["speedup_vs_exhaustive_300"] = 300 * dt / row[name]["volume_300_s_extrapolated"]
        row["load_after"] = _load()
        out[dtype] = row
        print(json.dumps({dtype: {k: v for k, v in row.items() if k != "work"}}, default=str), flush=True)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="a trained demo-preset model (btd-jax demo / train)")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--slices", type=int, default=4, help="slices per tampered volume (recall part)")
    p.add_argument("--top_k", type=int, default=5)
    p.add_argument("--repaint", action="store_true", help="add RePaint removal by the demo DDPM")
    p.add_argument("--settings", nargs="+", default=["grid", "grid_half", "grid_tissue"],
                   choices=["grid", "grid_half", "grid_tissue", "fullconv", "grid_wide"],
                   help="cascade settings compared (fullconv: the demo model's full attention at 1/4 size is slow)")
    p.add_argument("--crop", type=int, default=0,
                   help="recall volumes of random crops of this size (fresh content every trial) instead of flips")
    p.add_argument("--timing_slices", type=int, default=2)
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--exhaustive_dtypes", nargs="*", default=["float32"])
    p.add_argument("--skip", nargs="*", default=[], choices=["recall", "timing", "bf16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="experiments/results/bench_screen.json")
    args = p.parse_args(argv)

    out: Dict[str, Any] = {"benchmark": "screen", "backend": jax.default_backend(), "devices": jax.device_count(),
                           "cpu_count": os.cpu_count(), "host": platform.node(), "jax": jax.__version__,
                           "command": "python -m experiments.bench_screen " + " ".join(argv or [])}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    def save():
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1, default=str)

    demo = Scorer.load(args.workdir)
    if "bf16" not in args.skip:
        src = next(s for s in demo_data.load_sources("CT", 0.35, 96) if s.image.shape == (512, 512))
        w32, _, _ = localize.extract_windows(src.unit, 32, 32)
        w96, _, _ = localize.extract_windows(src.unit, 96, 48)
        out["bf16_demo"] = bf16_agreement(demo, w32[:128], demo.cfg.score.center)
        out["bf16_ct_random"] = bf16_agreement(_random_scorer("ct"), w96[:32], 32)
        print(json.dumps({"bf16_demo": out["bf16_demo"], "bf16_ct_random": out["bf16_ct_random"]}), flush=True)
        save()
    if "timing" not in args.skip:
        out["timing"] = timing_part(args)
        save()
    if "recall" not in args.skip:
        out["recall"] = recall_part(args, demo)
        print(json.dumps(out["recall"]["summary"], indent=1), flush=True)
        save()
    return out


if __name__ == "__main__":
    main()

"""Benchmark: whole-scan screening (btd_jax.screen cascade) against exhaustive localisation at stride 16.

Three parts, one run, JSON to ``--out``:

* **recall** (the trained model in ``--workdir``: the ``demo`` preset at 32 px, or ``ct8`` at the
  paper's 96 px and centre 32, trained here with ``--train N``): volumes of ``--slices`` real
  512x512 head-CT slices (flips/rotations of pydicom's CQ500 slice; with ``--shift`` each also moved
  at random, so every trial puts fresh windows against the tile grid; with ``--crop`` random crops)
  with one slice tampered in its held-out region (the demo tamper styles, plus RePaint removal by
  the model itself with ``--repaint``). Per trial and cascade setting: is the tamper in the
  cascade's top-1 / top-k, does the cascade's top-1 equal exhaustive localisation's top-1 (same
  window; within one stride; an exact score within 0.1% of it), the windows scored per slice and
  the seconds of both.
* **timing**: seconds per 512x512 slice of each cascade setting on one ``--timing_slices`` volume
  (flips/rotations of the CQ500 slice) and of exhaustive stride-16 localisation of
  ``--exhaustive_slices`` of its slices, in the same run (``--timing_model``: the paper's ``ct``
  preset with random weights, speed does not depend on their values, or the ``--workdir`` model).
  Every batch shape is compiled before the timed calls (``compilations_inside`` counts any that
  were not). A 300-slice volume is 300 times the seconds per slice (the cost is linear in slices).
* **bf16**: the bfloat16 scores' agreement with float32 (Spearman, relative differences, top-1) on
  the trained weights and on the ct preset's random weights.

    python -m experiments.bench_screen --workdir runs/ct8 --train 300 --trials 24 --slices 2 --shift 64 \
        --site_body 0.7 --repaint --settings grid grid_tissue grid_half --skip timing bf16 \
        --out experiments/results/bench_screen_ct8.json

    python -m experiments.bench_screen --skip recall bf16 --timing_slices 16 \
        --timing_proposals grid default fullconv --dtypes float32 --out experiments/results/bench_screen_timing.json

Settings are named presets (``grid``: tiles, 2 candidates per slice, every window scored;
``default``: :class:`btd_jax.screen.Cascade` as it is; ``grid_tissue``, ...) or ``NAME:FIELD=VALUE,...``
with Cascade fields, e.g. the in-tissue cascade ``half_tissue:proposal_stride=48,proposal_center=48,tissue_min=0.25``.
A setting gated at ``--tissue_min`` is compared with exhaustive search's best window in tissue, any
other with its best window over the slice.

Load averages are recorded around each timed part: the machine may be shared.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from typing import Any, Dict, List, Optional

import jax
import numpy as np
from scipy import stats

from btd_jax import configs, demo, localize, screen
from btd_jax import train as btd_train
from btd_jax.attacks import demo_data, repaint, tamper
from btd_jax.benchmarks.screening import ct_volume, dihedral, random_scorer, time_exhaustive, time_screening
from btd_jax.data import preprocess
from btd_jax.models.unet import abstract_params
from btd_jax.score import Scorer
from experiments.paths import recorded

STYLES = ("inject-gan", "inject-latent", "inject-smooth", "remove-ctgan", "remove-latent")


def _load() -> List[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _tampered_slice(src, style: str, rng, scorer, p: int, site_body: float = 0.9):
    """(slice01 in the source orientation, mask) with one attack at a random held-out site whose
    P x P window is at least ``site_body`` body."""
    valid = demo_data.valid_centres(src, "test", p, site_body)
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


def _shifted(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """``img`` moved by (dy, dx) pixels, air (0) where nothing moved in."""
    out = np.zeros_like(img)
    h, w = img.shape
    out[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = img[max(-dy, 0):h - max(dy, 0),
                                                                     max(-dx, 0):w - max(dx, 0)]
    return out


def _moved(real: np.ndarray, img: np.ndarray, mask: np.ndarray, s_t: int, n: int, shift: int, rng):
    """``n`` whole slices, each a random flip/rotation moved by up to ``shift`` px (fresh windows
    against the tile grid every trial); slice ``s_t`` is the tampered one -> (volume, its mask)."""
    vol, out_mask = np.empty((n,) + real.shape, np.float32), None
    for s in range(n):
        k, (dy, dx) = int(rng.integers(8)), (int(v) for v in rng.integers(-shift, shift + 1, 2))
        vol[s] = _shifted(dihedral(img if s == s_t else real, k), dy, dx)
        if s == s_t:
            out_mask = _shifted(dihedral(mask, k), dy, dx)
    return vol, out_mask


def _hit(f: Dict[str, Any], mask: np.ndarray, s: int, k: int) -> bool:
    """The finding's central k x k window (or, for the exhaustive list, the window) touches the mask."""
    if f["slice"] != s:
        return False
    r0, c0 = max(f["row"] - k // 2, 0), max(f["col"] - k // 2, 0)
    return bool(mask[r0:r0 + k, c0:c0 + k].any())


def _exhaustive(scorer, vol, center, top_k, cache, tampered: int):
    """Exhaustive stride-16 localisation of every slice (the real slices' results cached by index)
    -> the volume's top list, each slice's :class:`LocalizeResult` and the seconds of each slice
    searched in this call (the tampered one first)."""
    seconds, tops, results = [], [], []
    for s in [tampered] + [s for s in range(len(vol)) if s != tampered]:
        h = None if s == tampered else s
        if h is None or h not in cache:
            t0 = time.perf_counter()
            res = localize.localize_slice(scorer, vol[s], stride=16, center=center, top_k=top_k)
            seconds.append(time.perf_counter() - t0)
            if h is not None:
                cache[h] = res
        else:
            res = cache[h]
        results.append((s, res))
        tops += [dict(f, slice=s) for f in res.top]
    tops.sort(key=lambda f: -f["score"])
    return tops[:top_k], [r for _, r in sorted(results, key=lambda t: t[0])], seconds


def _tissue_top1(vol, results, p: int, tissue_min: float) -> Dict[str, Any]:
    """Exhaustive search's best window among those at least ``tissue_min`` body (what a tissue-gated
    cascade can reach)."""
    best = {"score": -np.inf}
    for s, res in enumerate(results):
        frac = screen.tissue_fraction(vol[s], res.rows - p // 2, res.cols - p // 2, p, screen.Cascade().tissue_level)
        sc = np.where(frac >= tissue_min, res.scores, -np.inf)
        i = int(np.argmax(sc))
        if sc[i] > best["score"]:
            best = {"slice": s, "row": int(res.rows[i]), "col": int(res.cols[i]), "score": float(sc[i])}
    return best


def _custom_setting(spec: str) -> Dict[str, Any]:
    """'proposal_stride=64,shortlist=8,climb=1' -> Cascade fields (ints, floats, 0/1 for climb)."""
    fields = {f.name for f in dataclasses.fields(screen.Cascade)}
    out: Dict[str, Any] = {}
    for item in filter(None, spec.split(",")):
        k, _, v = item.partition("=")
        if k not in fields:
            raise SystemExit(f"--settings: unknown cascade field {k!r} (one of {sorted(fields)})")
        out[k] = v if k in ("proposal", "proposal_span") else bool(int(v)) if k == "climb" else float(v) if "." in v else int(v)
    screen.Cascade(**out)
    return out


def _named_settings(args, names: List[str], p: int) -> Dict[str, Dict[str, Any]]:
    """Setting names (or NAME:FIELD=VALUE,...) -> screen_volume keywords."""
    # "grid" is the cascade of the first screening runs (tiles, 2 candidates per slice, every window),
    # spelled out; "default" is screen.Cascade() as it is now
    named = {"grid": dict(proposal="grid", proposal_scale=1, per_slice=2, tissue_min=0.0), "default": {},
             "grid_half": dict(proposal="grid", proposal_stride=p // 2),
             "grid_tissue": dict(proposal="grid", tissue_min=args.tissue_min), "fullconv": dict(proposal="fullconv"),
             "grid_wide": dict(proposal="grid", per_slice=6, refine=2),
             "grid4": dict(proposal="grid", per_slice=4),
             "grid_tissue4": dict(proposal="grid", tissue_min=args.tissue_min, per_slice=4),
             "grid_half_tissue": dict(proposal="grid", proposal_stride=p // 2, tissue_min=args.tissue_min)}
    cap = args.max_candidates or None
    out = {name: dict(named[name] if name in named else _custom_setting(spec), max_candidates=cap)
           for name, spec in (n.partition(":")[::2] for n in names)}
    return out


def _in_tissue(kw: Dict[str, Any], args) -> bool:
    """A setting gated at ``--tissue_min`` is compared with exhaustive search's best window in tissue;
    any other (no gate, or one that only skips near-empty windows) with its best over the slice."""
    return bool(kw.get("tissue_min")) and kw["tissue_min"] == args.tissue_min


def recall_part(args, scorer) -> Dict[str, Any]:
    p = scorer.cfg.image_size
    center = scorer.cfg.score.center
    src = next(s for s in demo_data.load_sources("CT", 0.35, p) if s.image.shape == (512, 512))
    real = np.stack([dihedral(src.unit, k) for k in range(args.slices)])
    settings = _named_settings(args, args.settings, p)
    styles = STYLES + (("repaint",) if args.repaint else ())
    rng = np.random.default_rng(args.seed)
    cache: Dict[Any, Any] = {}
    if args.crop:
        real = real[:, :args.crop, :args.crop]
    for kw in settings.values():  # every shape compiled once, outside the timings
        screen.screen_volume(scorer, real, top_k=args.top_k, **kw)
    # --reuse: the same volumes (same seed and options) against another run's exhaustive results
    before = json.load(open(args.reuse))["recall"]["per_trial"] if args.reuse else None
    if before is None:
        localize.localize_slice(scorer, real[0], stride=16, center=center, top_k=1)
    trials = []
    load0 = _load()
    for i in range(args.trials):
        style = styles[i % len(styles)]
        img, mask = _tampered_slice(src, style, rng, scorer, p, args.site_body)
        s_t = int(rng.integers(args.slices))
        if args.crop:  # fresh content every trial: random crops, the tampered one around the site
            cache = {}
            vol, mask = _crops(src.unit, img, mask, s_t, args.slices, args.crop, p, rng)
        elif args.shift:  # fresh content every trial: whole slices moved against the window grid
            cache = {}
            vol, mask = _moved(src.unit, img, mask, s_t, args.slices, args.shift, rng)
        else:
            vol = real.copy()
            vol[s_t], mask = dihedral(img, s_t), dihedral(mask, s_t)
        row = {"style": style, "slice": s_t, "tamper_pixels": int(mask.sum())}
        if before is not None:
            old = before[i]
            if (old["style"], old["slice"], old["tamper_pixels"]) != (style, s_t, row["tamper_pixels"]):
                raise SystemExit(f"--reuse: trial {i} is not the same volume as in {args.reuse}")
            row["exhaustive"] = old["exhaustive"]
            ex_top, ex_tissue = [old["exhaustive"]["top1"]], old["exhaustive"]["top1_tissue"]
        else:
            # real slices' exhaustive results are cached (their seconds are kept); the tampered one is new
            ex_top, ex_results, ex_seconds = _exhaustive(scorer, vol, center, args.top_k, cache, tampered=s_t)
            ex_tissue = _tissue_top1(vol, ex_results, p, args.tissue_min)
            row["exhaustive"] = {"top1_hit": _hit(ex_top[0], mask, s_t, center or p),
                                 "topk_hit": any(_hit(f, mask, s_t, center or p) for f in ex_top),
                                 "tampered_slice_s": ex_seconds[0], "slice_seconds": ex_seconds, "top1": ex_top[0],
                                 "top1_tissue": ex_tissue, "top1_tissue_hit": _hit(ex_tissue, mask, s_t, center or p)}
        e = ex_top[0]  # how much body exhaustive search's best window holds (a tissue gate's margin)
        row["exhaustive_top1_body"] = float(screen.tissue_fraction(
            vol[e["slice"]], np.array([max(e["row"] - p // 2, 0)]), np.array([max(e["col"] - p // 2, 0)]), p,
            screen.Cascade().tissue_level)[0])
        for name, kw in settings.items():
            t0 = time.perf_counter()
            res = screen.screen_volume(scorer, vol, top_k=args.top_k, **kw)
            dt = time.perf_counter() - t0
            # a tissue-gated cascade is compared with exhaustive search's best window in tissue
            top1, e1 = res.findings[0], (ex_tissue if _in_tissue(kw, args) else ex_top[0])
            w = res.work
            row[name] = {"top1_hit": _hit(top1, mask, s_t, center or p),
                         "topk_hit": any(_hit(f, mask, s_t, center or p) for f in res.findings),
                         "agree_top1": (top1["slice"], top1["row"], top1["col"]) == (e1["slice"], e1["row"], e1["col"]),
                         "agree_within_stride": top1["slice"] == e1["slice"] and max(
                             abs(top1["row"] - e1["row"]), abs(top1["col"] - e1["col"])) <= 16,
                         # a window as suspicious as exhaustive search's best (near-ties: flipped copies)
                         "score_ratio": top1["score"] / e1["score"],
                         "windows_per_slice": (w["proposal_windows"] + w["exact_windows"]) / len(vol),
                         "score_equal": abs(top1["score"] / e1["score"] - 1) <= 1e-3,
                         "seconds": dt, "work": w}
        # --reuse is valid only if this model gives exhaustive search's stored scores: some setting must
        # find its top-1 window with the same score (to 0.1%: a retrained model differs by ~1e-4)
        row["reproduces_exhaustive"] = any(row[n]["agree_top1"] and row[n]["score_equal"]
                                           for n, kw in settings.items() if not _in_tissue(kw, args))
        trials.append(row)
        print(json.dumps({"trial": i, "style": style, **{k: {m: v for m, v in row[k].items()
                                                             if m in ("top1_hit", "topk_hit", "agree_top1",
                                                                      "score_ratio", "seconds")}
                                                         for k in ("exhaustive", *settings)}}), flush=True)
    ex_per_slice = float(np.median([dt for t in trials for dt in t["exhaustive"]["slice_seconds"]]))
    ex_windows = len(localize.window_positions(vol.shape[1], p, 16)) * len(localize.window_positions(vol.shape[2], p, 16))
    summary = {"exhaustive": {"top1_recall": float(np.mean([t["exhaustive"]["top1_hit"] for t in trials])),
                              "top1_tissue_recall": float(np.mean([t["exhaustive"]["top1_tissue_hit"] for t in trials])),
                              "topk_recall": float(np.mean([t["exhaustive"]["topk_hit"] for t in trials])),
                              "seconds_per_slice": ex_per_slice, "windows_per_slice": ex_windows,
                              "trials_reproduced": int(sum(t["reproduces_exhaustive"] for t in trials))}}
    for name in settings:
        per_slice = float(np.median([t[name]["seconds"] for t in trials])) / args.slices
        windows = float(np.mean([t[name]["windows_per_slice"] for t in trials]))
        summary[name] = {
            **{k: float(np.mean([t[name][k] for t in trials])) for k in ("agree_top1", "agree_within_stride")},
            "agree_top1_count": int(sum(t[name]["agree_top1"] for t in trials)),
            "agree_score_999": float(np.mean([t[name]["score_ratio"] >= 0.999 for t in trials])),
            "windows_per_slice": windows, "speedup_by_windows": ex_windows / windows,
            "top1_recall": float(np.mean([t[name]["top1_hit"] for t in trials])),
            "topk_recall": float(np.mean([t[name]["topk_hit"] for t in trials])),
            "seconds_per_slice": per_slice, "speedup_vs_exhaustive": ex_per_slice / per_slice,
            "exact_windows_per_volume": float(np.mean([t[name]["work"]["exact_windows"] for t in trials])),
            "proposal_windows_per_slice": float(np.mean([t[name]["work"]["proposal_windows"] for t in trials])) / args.slices}
    return {"config": scorer.cfg.name, "patch": p, "center": center, "slices_per_volume": args.slices,
            "slice_size": int(vol.shape[1]),
            "trials": len(trials), "top_k": args.top_k, "styles": list(styles), "settings": settings,
            "load_before": load0, "load_after": _load(), "summary": summary, "per_trial": trials}


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


def timing_part(args, model: Optional[Scorer]) -> Dict[str, Any]:
    """Seconds per 512x512 slice of each cascade setting on one ``--timing_slices`` volume, and of
    exhaustive stride-16 search on ``--exhaustive_slices`` of its slices (all 729 windows of each),
    in the same run (``--timing_model``: the ``ct`` preset with random weights, or the ``--workdir``
    model). The cascade's cost is linear in the slices (no per-volume cap), so a 300-slice volume is
    300 times the measured seconds per slice; so is exhaustive search's."""
    trained = args.timing_model == "workdir"
    base = model.cfg if trained else configs.get("ct")
    p, center = base.image_size, (base.score.center if trained else 32)
    vol, source = ct_volume(args.timing_slices)
    out: Dict[str, Any] = {"config": base.name, "weights": "trained (--workdir)" if trained else "random (timing only)",
                           "volume": source, "slice": [512, 512], "center": center,
                           "slices_measured": args.timing_slices, "batch_size": args.timing_batch,
                           "exhaustive_slices_measured": args.exhaustive_slices}
    timed = _named_settings(args, args.timing_proposals, p)
    for kw in timed.values():
        kw.pop("batch_size", None)
    for dtype in args.dtypes:
        sc = (Scorer.from_params(model.params, configs.override(model.cfg, {"model.dtype": dtype})) if trained
              else random_scorer("ct", dtype))
        row: Dict[str, Any] = {"load_before": _load()}
        row.update(time_screening(sc, vol, timed, center, args.timing_batch))
        for name in timed:
            row[name]["volume_300_s_extrapolated"] = 300 * row[name]["seconds_per_slice"]
        if dtype in args.exhaustive_dtypes:
            ex = [time_exhaustive(sc, vol[k], center) for k in range(args.exhaustive_slices)]
            per_slice = float(np.median([e["seconds_per_slice"] for e in ex]))
            row["exhaustive_stride16"] = {"seconds_per_slice": per_slice, "windows": ex[0]["windows"],
                                          "seconds_per_window": per_slice / ex[0]["windows"], "runs": ex,
                                          "volume_300_s_extrapolated": 300 * per_slice}
            for name in timed:
                row[name]["speedup_vs_exhaustive"] = per_slice / row[name]["seconds_per_slice"]
                row[name]["speedup_by_windows"] = ex[0]["windows"] / row[name]["windows_per_slice"]
        row["load_after"] = _load()
        out[dtype] = row
        brief = {k: ({m: v for m, v in r.items() if m not in ("work", "runs", "cascade")} if isinstance(r, dict) else r)
                 for k, r in row.items()}
        print(json.dumps({dtype: brief}, default=str), flush=True)
    return out


def train_model(workdir: str, preset: str, steps: int, n_patches: int = 2048, seed: int = 0) -> None:
    """``preset``'s U-Net trained with the demo recipe (low-t, cosine) on ``n_patches`` crops of the
    CQ500 slice's training region; scoring with the paper's centre window (a third of the patch)."""
    cfg = demo.demo_config(preset, steps=steps)
    cfg = dataclasses.replace(cfg, score=dataclasses.replace(cfg.score, center=cfg.image_size // 3, batch_size=64),
                              train=dataclasses.replace(cfg.train, log_every=10))
    src = [s for s in demo_data.load_sources("CT", 0.35, cfg.image_size) if s.image.shape == (512, 512)]
    patches = demo_data.train_patches(src, cfg.image_size, n_patches, np.random.default_rng(seed))["patches"]
    btd_train.train_and_evaluate(cfg, workdir, patches, progress=False, async_checkpoints=False)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=None,
                   help="a trained model (btd-jax demo / train); not needed for the timing part alone with "
                        "--timing_model ct")
    p.add_argument("--train", type=int, default=0,
                   help="first train --train_preset for this many steps in --workdir (resumes a run there)")
    p.add_argument("--train_preset", default="ct8", help="with --train: the U-Net preset (ct8: 96 px)")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--slices", type=int, default=4, help="slices per tampered volume (recall part)")
    p.add_argument("--top_k", type=int, default=5)
    p.add_argument("--repaint", action="store_true", help="add RePaint removal by the demo DDPM")
    p.add_argument("--settings", nargs="+", default=["grid", "grid_half", "grid_tissue"],
                   help="cascade settings compared: grid, grid_half, grid_tissue, fullconv (the demo model's full "
                        "attention at 1/4 size is slow), grid_wide, grid4, grid_tissue4, grid_half_tissue, or "
                        "NAME:FIELD=VALUE,... (screen.Cascade fields, e.g. t64:proposal_stride=64,climb=1)")
    p.add_argument("--max_candidates", type=int, default=0, help="cascade cap per volume (0: none, per_slice per slice)")
    p.add_argument("--tissue_min", type=float, default=0.25, help="grid_tissue: least body fraction of a window")
    p.add_argument("--site_body", type=float, default=0.9,
                   help="least body fraction of the tampered window (the CQ500 slice's held-out region has "
                        "no 96 px window that is 90%% body)")
    p.add_argument("--reuse", default=None,
                   help="recall: take exhaustive search's results from this earlier JSON (same seed, trials and "
                        "volume options; checked per trial) and run only the cascade settings")
    p.add_argument("--shift", type=int, default=0,
                   help="recall volumes of whole slices, each randomly flipped and moved by up to this many px")
    p.add_argument("--crop", type=int, default=0,
                   help="recall volumes of random crops of this size (fresh content every trial) instead of flips")
    p.add_argument("--timing_slices", type=int, default=16, help="slices of the timed volume")
    p.add_argument("--exhaustive_slices", type=int, default=1,
                   help="timing part: slices searched exhaustively (each all 729 windows; the per-slice median)")
    p.add_argument("--timing_model", choices=["ct", "workdir"], default="ct",
                   help="timing part: the ct preset with random weights, or the --workdir model")
    p.add_argument("--timing_proposals", nargs="+", default=["fullconv", "grid"],
                   help="timing part: cascade settings, named as in --settings")
    p.add_argument("--timing_batch", type=int, default=None,
                   help="timing part: windows per batch (default: screen_volume's, 32 on CPU)")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--exhaustive_dtypes", nargs="*", default=["float32"])
    p.add_argument("--bf16", nargs="*", default=["model", "ct_random"], choices=["model", "ct_random"],
                   help="bf16 agreement: the --workdir model; the ct preset with random weights")
    p.add_argument("--skip", nargs="*", default=[], choices=["recall", "timing", "bf16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="experiments/results/bench_screen.json")
    args = p.parse_args(argv)

    out: Dict[str, Any] = {"benchmark": "screen", "backend": jax.default_backend(), "devices": jax.device_count(),
                           "cpu_count": os.cpu_count(), "host": platform.node(), "jax": jax.__version__,
                           "command": recorded("python -m experiments.bench_screen " + " ".join(sys.argv[1:] if argv is None else argv))}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)

    def save():
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1, default=str)

    needs_model = {"recall", "bf16"} - set(args.skip) or args.timing_model == "workdir" or args.train
    if needs_model and not args.workdir:
        p.error("--workdir is needed (the recall and bf16 parts, --timing_model workdir, --train)")
    if args.train:
        train_model(args.workdir, args.train_preset, args.train)
    model = Scorer.load(args.workdir) if needs_model else None
    if "bf16" not in args.skip:
        src = next(s for s in demo_data.load_sources("CT", 0.35, 96) if s.image.shape == (512, 512))
        pm = model.cfg.image_size
        wm, _, _ = localize.extract_windows(src.unit, pm, pm // 2)
        w96, _, _ = localize.extract_windows(src.unit, 96, 48)
        if "model" in args.bf16:
            out["bf16_model"] = {"config": model.cfg.name, "patch": pm,
                                 **bf16_agreement(model, wm[:128 if pm <= 32 else 64], model.cfg.score.center)}
        if "ct_random" in args.bf16:
            out["bf16_ct_random"] = bf16_agreement(random_scorer("ct"), w96[:32], 32)
        print(json.dumps({k: out[k] for k in ("bf16_model", "bf16_ct_random") if k in out}), flush=True)
        save()
    if "timing" not in args.skip:
        out["timing"] = timing_part(args, model)
        save()
    if "recall" not in args.skip:
        out["recall"] = recall_part(args, model)
        print(json.dumps(out["recall"]["summary"], indent=1), flush=True)
        save()
    return out


if __name__ == "__main__":
    main()

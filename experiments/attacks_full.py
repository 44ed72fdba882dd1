"""Full-strength generative deepfakes, CT and MRI, two kinds of attacker data: BTD and the baselines on them.

    python -m experiments.attacks_full --work WORK --out experiments/results/attacks_full.json
    python -m experiments.attacks_full --work WORK --modalities CT --data unseen --stages attackers sets

Every stage is cached in ``WORK`` (a rerun reuses what is there; a set is rebuilt only when its
settings changed):

1. ``data``, ``detectors``: the demo's CT and MRI data (``btd-jax demo``'s, seed 0) and, per
   modality, the ``demo`` preset trained 800 steps (low-t law) on its real training patches
   (:mod:`experiments.attacks_common`).
2. ``attackers``: per modality and attacker data a DDPM (the demo U-Net at every t) and a cGAN
   (``WORK/attackers/<MOD>_<data>``): ``unseen`` = patients the detector never saw
   (``btd_jax.attacks.attacker.ATTACKER_SOURCES``), ``same`` = the detector's own training region
   (same patients and scanners, disjoint pixels); and the latent-diffusion in-painter
   (:mod:`btd_jax.attacks.ldm`: KL autoencoder + latent DDPM, its ``demo`` size) on the same data
   (``WORK/attackers/<MOD>_<data>/attacker_ldm``; stage ``ldm``, after the pixel-space sets).
3. ``sets``: on the demo's held-out test regions, ``--n`` fakes and ``--n`` reals per set
   (``WORK/sets/<data>``, the authors' layout): RePaint removal and SDEdit injection with the
   published sampler (``full`` preset: 250 respaced ancestral steps, j = 10, r = 10; SDEdit every
   step from t*), cGAN injection and removal, LDM injection and removal.
4. ``quality``: :mod:`btd_jax.attacks.quality` per set (noise inside/outside, mean change, weak
   flag) and mosaics of 16 fakes beside 16 reals (PNG next to ``--out``).
5. ``scores``: BTD on the ``demo`` detector of the set's modality (the paper's score: d = 1, mean of
   the central 16 window; the whole patch; max, p99, multi_t (t = 0..3) and two_sided in the centre)
   and the eight baselines (``tiny``, fitted once per modality and attack), scanner-balanced
   bootstrap AUC [95% CI] and EER (``--n_boot`` draws).

Writes JSON (rows with their commands, quality, timings, settings) and Markdown (a summary per set,
then every row) beside it; paths are shown relative to the work folder (``WORK/...``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from btd_jax.attacks import attacker, demo_data, inputs, ldm, pipeline, quality, repaint, suite
from btd_jax.score import Scorer
from btd_jax.scoring import variants
from experiments import attacks_common as common

MODALITIES, DATA, SIZE = ("CT", "MRI"), ("unseen", "same"), 32
STAGES = ("attackers", "sets", "ldm", "quality", "scores")
SETTINGS = {"mean": {}, "max": {"reduction": "max"}, "p99": {"reduction": "percentile:99"},
            "multi_t": {"variant": "multi_t", "start_ts": (0, 1, 2, 3)}, "two_sided": {"variant": "two_sided"}}
PAPER = "BTD demo mean"  # the paper's score, central 16 window


def _suite_cfg(args, mod: str, data: str) -> suite.SuiteConfig:
    return dataclasses.replace(suite.FULL, modality=mod, attacker_data=data, ddpm_steps=args.ddpm_steps,
                               gan_steps=args.gan_steps, n=args.n, strength=args.strength)


def _json(path: Path) -> Dict[str, Any]:
    return json.loads(path.read_text())


def attackers(work: Path, args, mod: str, data: str) -> Tuple[Path, Dict[str, Any]]:
    """The attacker DDPM and cGAN of (modality, data), trained once: (folder, training info)."""
    out = work / "attackers" / f"{mod}_{data}"
    info_path = out / "info.json"
    if not info_path.is_file():
        common.log(f"{mod}/{data}: training the attacker DDPM ({args.ddpm_steps} steps) and cGAN "
                   f"({args.gan_steps} steps)")
        info = suite.train_attackers(out, _suite_cfg(args, mod, data), SIZE, seed=0)
        info_path.write_text(json.dumps(info, indent=2, default=str))
    return out, _json(info_path)


def ldm_attacker(work: Path, args, mod: str, data: str) -> Tuple[pipeline.Attacker, Dict[str, Any]]:
    """The latent-diffusion attacker of (modality, data), trained once on the attacker's patches."""
    out = work / "attackers" / f"{mod}_{data}" / "attacker_ldm"
    info_path = out / "train_info.json"
    if not info_path.is_file():
        common.log(f"{mod}/{data}: training the LDM attacker (autoencoder, then latent DDPM {args.ldm_steps} steps)")
        sources = attacker.training_sources(data, mod)
        patches = attacker.attacker_patches(sources, SIZE, suite.FULL.n_patches, seed=1,
                                            min_body=attacker.min_body(mod))  # the DDPM's patches
        cfg = ldm.ldm_config("demo", SIZE, mod, ddpm_steps=args.ldm_steps)
        info = attacker.train_ldm(out, patches, cfg, seed=0)
        info_path.write_text(json.dumps(info, indent=2, default=str))
    params, cfg = ldm.load(out)
    return pipeline.Attacker("ldm", params, cfg, strength=ldm.STRENGTH), _json(info_path)


def _set_settings(args, atk: pipeline.Attacker, method: str, info: Dict[str, Any]) -> Dict[str, Any]:
    """What a cached set must match to be reused."""
    part = {"cgan": "gan", "ldm": "ddpm"}.get(method, "ddpm")
    s = {"method": method, "n": args.n, "seed": args.seed, "size": SIZE, "attacker_steps": info.get(part, {}).get(
        "steps")}
    if atk.options is not None:
        s["options"] = dataclasses.asdict(atk.options)
    if method in ("sdedit", "ldm"):
        s["strength"] = atk.strength
    return s


def build_sets(work: Path, args, mod: str, data: str, with_ldm: bool) -> Tuple[Path, Dict[str, Dict[str, Any]]]:
    """Writes (once) every set of (modality, data) under ``WORK/sets/<data>``: (root, {set: record})."""
    folder, info = attackers(work, args, mod, data)
    atks = suite.load_attackers(folder, _suite_cfg(args, mod, data))
    rows = list(suite.ROWS)
    if with_ldm:
        atks["ldm"], info["ldm"] = ldm_attacker(work, args, mod, data)
        rows += [("ldm", "injection"), ("ldm", "removal")]
    root = work / "sets" / data
    sources = inputs.demo_sources(mod)
    records = {}
    for method, attack in rows:
        name = pipeline.dataset_name(method, mod, attack)
        marker = root / "done" / f"{name}.json"
        want = _set_settings(args, atks[method], method, info["ldm"] if method == "ldm" else info)
        if marker.is_file() and _json(marker)["settings"] == want:
            records[name] = _json(marker)
            continue
        common.log(f"{data}: building {name} ({args.n} fakes + {args.n} reals)")
        t0 = time.perf_counter()
        suite.write_sets(root, atks, sources, args.n, args.seed, rows=[(method, attack)], modality=mod,
                         batch_size=args.batch_size)
        sec = time.perf_counter() - t0
        records[name] = {"settings": want, "seconds": sec, "seconds_per_fake": sec / args.n}
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(records[name], indent=2, default=str))
        common.log(f"{data}: {name} in {sec:.0f} s ({sec / args.n:.2f} s per fake)")
    return root, records


def quality_rows(root: Path, mod: str, data: str, figures: Path) -> Dict[str, Dict[str, Any]]:
    """Quality of every set of (modality, data) and its mosaic (``figures/<data>_<set>.png``)."""
    sources = inputs.demo_sources(mod)
    out = {}
    for attack in ("injection", "removal"):
        for name, q in quality.read_sets(root, mod, attack, sources, SIZE).items():
            row = quality.summarize(q, attack)
            png = figures / f"{data}_{name}.png"
            quality.write_mosaic(q, png, f"{name}, attacker data: {data} (left: fakes, right: reals)")
            row["mosaic"] = f"{figures.name}/{png.name}"  # relative to the results folder
            out[f"{name} ({data})"] = row
    return out


def _reference(wd: Path, mod: str):
    """The two-sided score's reference, fitted on 512 real (unaugmented) training patches of ``mod``."""
    sources = inputs.demo_sources(mod)
    real = demo_data.train_patches(sources, SIZE, 512, np.random.default_rng(123), augment=False,
                                   min_body=attacker.min_body(mod))["patches"]
    ref = variants.fit_scorer_reference(Scorer.load(str(wd)), real, center=16, pool="mean")
    ref.save(str(wd))
    return ref


def score_rows(work: Path, args, mod: str, roots: Dict[str, Path]) -> Tuple[List[Dict[str, Any]], Dict]:
    """BTD (every setting) and the baselines on every set of ``mod`` (all attacker data)."""
    wd = common.detector(work, "lowt", args.detector_steps, modality=mod)
    ref = _reference(wd, mod)
    rows, seconds = [], {}
    train_path = common.demo_data(work, modality=mod) / "train.npz"
    for data, root in roots.items():
        for attack in ("injection", "removal"):
            got = common.btd_rows("demo", wd, root, attack, SETTINGS, args.n_boot, ref, modality=mod, size=SIZE,
                                  centers=(16,), work=work)
            got += common.btd_rows("demo", wd, root, attack, {"mean": {}}, args.n_boot, modality=mod, size=SIZE,
                                   centers=(None,), work=work)
            if args.baseline_steps:
                b_rows, seconds[f"{mod}/{data}/{attack}"] = common.baseline_rows(
                    train_path, root, attack, wd, args.baseline_steps, args.n_boot,
                    work / "baselines" / f"{mod}_{attack}", modality=mod, size=SIZE, work=work)
                got += b_rows
            rows += [dict(r, modality=mod, attacker_data=data) for r in got]
            common.log(f"{mod}/{data}/{attack}: {len(got)} rows")
    return rows, seconds


def _summary(rows: List[Dict[str, Any]], qual: Dict[str, Dict[str, Any]]) -> str:
    """One line per set: BTD's paper score and best pooling, the best baseline, and the set's quality."""
    sets = sorted({(r["dataset"], r["attacker_data"]) for r in rows}, key=lambda k: (k[0].split("-")[1], k[1], k[0]))
    lines = ["| set | attacker data | BTD (paper: mean, centre 16) | BTD best pooling/variant | best baseline | "
             "noise in / out (ratio; real ratio) | mean change | effective | weak attack |",
             "|---|---|---|---|---|---|---|---|---|"]

    def cell(r):
        return f"{r['auc_mean']:.3f} [{r['auc_ci_low']:.2f}, {r['auc_ci_high']:.2f}] / {r['eer_mean']:.2f}"

    for name, data in sets:
        mine = [r for r in rows if r["dataset"] == name and r["attacker_data"] == data]
        paper = next((r for r in mine if r["method"] == PAPER and r["reduction"] == "center16"), None)
        btd = [r for r in mine if r["method"].startswith("BTD") and r is not paper]
        base = [r for r in mine if not r["method"].startswith("BTD")]
        best_btd = max(btd, key=lambda r: r["auc_mean"], default=None)
        best_base = max(base, key=lambda r: r["auc_mean"], default=None)
        q = qual.get(f"{name} ({data})", {})
        qtxt = (f"{q['noise_in']:.1f} / {q['noise_out']:.1f} {q['unit']} ({q['noise_ratio']:.2f}; "
                f"{q['noise_ratio_real']:.2f}) | {q['mean_change']:+.1f} | {q['effective_fraction']:.0%} | "
                f"{'**weak**' if q['weak_attack'] else 'no'}") if q else "- | - | - | -"
        btd_txt = f"{best_btd['method'][9:]} {best_btd['reduction']}: {cell(best_btd)}" if best_btd else "-"
        base_txt = f"{best_base['method']}: {cell(best_base)}" if best_base else "-"
        lines.append(f"| {name} | {data} | {cell(paper) if paper else '-'} | {btd_txt} | {base_txt} | {qtxt} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="cache folder (data, models, test sets)")
    ap.add_argument("--out", default="experiments/results/attacks_full.json")
    ap.add_argument("--modalities", nargs="*", default=list(MODALITIES), choices=MODALITIES)
    ap.add_argument("--data", nargs="*", default=list(DATA), choices=DATA, help="attacker data choices")
    ap.add_argument("--stages", nargs="*", default=list(STAGES), choices=STAGES)
    ap.add_argument("--detector_steps", type=int, default=800)
    ap.add_argument("--ddpm_steps", type=int, default=1500, help="attacker DDPM training steps")
    ap.add_argument("--gan_steps", type=int, default=600, help="attacker cGAN training steps")
    ap.add_argument("--ldm_steps", type=int, default=3000, help="latent DDPM training steps of the LDM attacker")
    ap.add_argument("--n", type=int, default=100, help="fake (and real) rows per set")
    ap.add_argument("--strength", type=float, default=suite.FULL.strength, help="SDEdit t* / (T - 1)")
    ap.add_argument("--seed", type=int, default=0, help="sites, radii and attack noise")
    ap.add_argument("--batch_size", type=int, default=64, help="patches per compiled sampler call")
    ap.add_argument("--baseline_steps", type=int, default=300, help="0: no baselines")
    ap.add_argument("--n_boot", type=int, default=100)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    work = common.ensure_dir(args.work)
    out = Path(args.out)
    figures = out.with_suffix("")
    roots: Dict[str, Dict[str, Path]] = {}
    records, infos, qual, rows, seconds, detectors = {}, {}, {}, [], {}, {}
    for mod in args.modalities:
        common.demo_data(work, modality=mod)
        wd = common.detector(work, "lowt", args.detector_steps, modality=mod)
        detectors[mod] = _json(wd / "done.json")
        for data in args.data:
            infos[f"{mod}/{data}"] = attackers(work, args, mod, data)[1]
            if {"sets", "ldm", "quality", "scores"} & set(args.stages):
                root, rec = build_sets(work, args, mod, data, with_ldm="ldm" in args.stages)
                roots.setdefault(mod, {})[data] = root
                records.update({f"{k} ({data})": v for k, v in rec.items()})
        if "quality" in args.stages:
            figures.mkdir(parents=True, exist_ok=True)
            for data, root in roots.get(mod, {}).items():
                qual.update(quality_rows(root, mod, data, figures))
        if "scores" in args.stages:
            got, seconds[mod] = score_rows(work, args, mod, roots.get(mod, {}))
            rows += got
    if "scores" not in args.stages:
        common.log("no scores stage: nothing written")
        return 0

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "rows": rows, "quality": qual, "sets": records, "attackers": infos, "detectors": detectors,
        "baseline_seconds": seconds, "presets": {k: {m: dataclasses.asdict(o) for m, o in v.items()}
                                                 for k, v in repaint.PRESETS.items()},
        "args": dict(vars(args), work="WORK"), "command": f"python -m experiments.attacks_full --work WORK "
                                                          f"--out {args.out}",
        "total_seconds": time.perf_counter() - t0}, indent=2, default=str))
    md = ["# Full-strength generative deepfakes: BTD and the baselines", "",
          f"`python -m experiments.attacks_full --work WORK --out {args.out}`; bootstrap-mean AUC [95% CI] / EER "
          f"({args.n_boot} scanner-balanced draws), {args.n} fakes + {args.n} reals per set.", "",
          _summary(rows, qual), "", "Mosaics: " + ", ".join(f"[{k}]({v['mosaic']})" for k, v in qual.items()), "",
          common.markdown(rows, extra=("attacker_data",))]
    out.with_suffix(".md").write_text("\n".join(md))
    print(_summary(rows, qual))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

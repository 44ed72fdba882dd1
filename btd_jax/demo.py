"""The offline end-to-end demo: real DICOM slices -> simulated deepfakes -> train BTD -> report.

    import btd_jax.demo
    report = btd_jax.demo.run_demo("btd_demo", config="demo", minutes=10)
    print(report["report"])          # btd_demo/report/report.md

Steps (all on CPU, no network): build the data from the CT (or MR) slices shipped with pydicom /
pydicom-data (:mod:`btd_jax.attacks.demo_data`: real-only training patches, a test set of real and
tampered patches in the authors' layout with no spatial overlap), train a small DDPM
(:func:`btd_jax.train.train_and_evaluate`) within the time budget, score every test patch with
BTD (d = 1 reverse step at t = 0, :class:`btd_jax.score.Scorer`), evaluate AUC/EER with the paper's
scanner-balanced bootstrap per attack style (:mod:`btd_jax.evaluate`, :mod:`btd_jax.metrics`), and
write ``report/``: ``report.md`` (the table), ``results.json``, ``results.csv``, ``scores.csv``,
``roc.png`` and ``heatmaps.png`` (residual maps over tampered patches, true masks outlined).

The ``demo`` preset (defined in :mod:`btd_jax.configs`) is a 32-pixel, 3-stage U-Net (dim 8, like the paper's
``BTD - 8 dim``) on a 1000-step sigmoid schedule like the paper's, trained with a demo recipe (Adam
2e-3 with cosine decay, batch 16, EMA 0.995 every step) and low-t training (``t_sampling='lowt'``: BTD with d = 1 only ever queries
the network at t = 0, so training there is where the 10-minute budget pays off). Other presets
(``tiny``, ``ct8``, ...) keep their model and diffusion and get the same demo recipe.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from btd_jax import configs, eval_io, evaluate, metrics, plots
from btd_jax import train as btd_train
from btd_jax.attacks import demo_data, suite
from btd_jax.data import datasets, preprocess
from btd_jax.data.errors import DataError
from btd_jax.score import Scorer

__all__ = ["DEMO_CONFIG", "QUICK_CONFIG", "DEMO_DIRS", "check_demo_folder", "demo_config", "run_demo"]


# The presets live in btd_jax.configs (so `btd-jax train --config demo` works without this module).
DEMO_CONFIG, QUICK_CONFIG = configs.get("demo"), configs.get("demo-quick")


def demo_config(name: str = "demo", steps: Optional[int] = None, modality: str = "CT", seed: int = 0) -> configs.Config:
    """The preset (or JSON config file) ``name`` with the demo's training recipe (and ``steps`` if given).

    ``demo``/``demo-quick`` and JSON files are used as they are; any other preset keeps its model and
    diffusion and takes the demo preset's train and score sections (the paper's 700k-step recipe does
    not fit a 10-minute CPU budget), with the score centre window at half its patch size.
    """
    cfg = configs.load(name)
    if name in configs.NAMES and name not in (DEMO_CONFIG.name, QUICK_CONFIG.name):
        cfg = dataclasses.replace(cfg, train=DEMO_CONFIG.train,
                                  score=dataclasses.replace(DEMO_CONFIG.score, center=cfg.image_size // 2))
    train = dataclasses.replace(cfg.train, seed=int(seed), **({"num_steps": int(steps)} if steps else {}))
    return dataclasses.replace(cfg, modality="CT" if modality.upper() == "CT" else "MRI", train=train)


# ----------------------------------------------------------------------------------- training

def _read_metrics(workdir: Path) -> List[Dict[str, Any]]:
    path = workdir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]


def _train(cfg: configs.Config, workdir: Path, patches: np.ndarray, budget_s: float, progress: bool,
           probe: int = 20) -> Dict[str, Any]:
    """Train ``cfg.train.num_steps`` steps, or fewer if they would not fit in ``budget_s``.

    A first call trains ``probe`` steps (compiling the step function) and measures the speed from
    the loop's own ``steps_per_s``; a second call resumes up to as many steps as the remaining
    budget allows. Returns steps done, seconds, first/final loss and whether it stopped early.
    """
    t0 = time.perf_counter()
    total = cfg.train.num_steps
    first = min(probe, total)
    btd_train.train_and_evaluate(cfg, str(workdir), patches, stop_at=first, progress=progress,
                                 async_checkpoints=False)
    target = first
    if first < total:
        rates = [r["steps_per_s"] for r in _read_metrics(workdir) if r.get("steps_per_s") == r.get("steps_per_s")]
        rate = rates[-1] if rates and rates[-1] and rates[-1] > 0 else first / max(time.perf_counter() - t0, 1e-3)
        left = budget_s - (time.perf_counter() - t0) - 5.0  # resuming costs a few seconds
        target = int(min(total, first + max(0.0, left) * rate * 0.95))
        if target > first:
            btd_train.train_and_evaluate(cfg, str(workdir), patches, stop_at=target, progress=progress,
                                         async_checkpoints=False)
    losses = [r["loss"] for r in _read_metrics(workdir)]
    return {"steps": target, "planned_steps": total, "seconds": time.perf_counter() - t0,
            "stopped_early": target < total, "first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None}


# ----------------------------------------------------------------------------------- evaluation

def _evaluate_attack(scorer, ts, cfg: configs.Config, attack: str, n_boot: int, seed: int):
    """Score one test set once; evaluate each tamper style against the real rows, over the central
    window (the demo's choice for both attacks: the edits are centred, as in the authors' sets) and,
    for comparison, over the whole patch. Returns (rows, central scores, maps, reduction name)."""
    maps = np.asarray(scorer.residual_map(ts.patches, steps=cfg.score.steps, batch_size=cfg.score.batch_size),
                      np.float64)
    center = cfg.score.center
    scores = evaluate.reduce_maps(maps, [center, None] if center else [None])
    meta = {k: v for k, v in ts.columns.items()}
    rows = evaluate.evaluate_scored(scores, ts.labels, meta, ts.modality, attack, n_boot=n_boot, seed=seed)
    red = evaluate.reduction_name(center)
    return rows, scores[red], maps, red


def _heatmaps(path: Path, sets: Dict[str, Any], per_style: int = 4) -> str:
    """Grid: for each tamper style, ``per_style`` tampered patches with their residual map overlaid
    (true tamper mask outlined) next to real patches of the same set."""
    rows = []
    for att, s in sets.items():
        ts, maps, scores = s["ts"], s["maps"], s["scores"]
        vmax = float(np.percentile(maps, 99.5))
        for method in [*sorted(set(ts.columns["method"]) - {"real"}), "real"]:
            idx = np.flatnonzero(ts.columns["method"] == method)
            idx = idx[np.argsort(-scores[idx])][np.linspace(0, idx.size - 1, per_style).round().astype(int)] \
                if idx.size >= per_style else idx  # spread over the score range: best to worst
            cells = [{"image": ts.patches[i], "map": maps[i], "vmax": vmax, "title": f"score {scores[i]:.2e}",
                      "mask": _true_mask(ts, i) if method != "real" else None} for i in idx[:per_style]]
            rows.append((f"{att}\n{method}", cells))
    return plots.residual_grid(rows, str(path), per_style,
                               title="BTD residual maps (right of each pair; cyan: true tamper mask)")


def _true_mask(ts: Any, i: int) -> Optional[np.ndarray]:
    """The tamper mask of test row ``i`` cut like its patch, or None when the set has none."""
    mpath = ts.columns.get("mask")
    if mpath is None:
        return None
    mask_file = Path(ts.columns["path"][i]).parent / Path(str(mpath[i])).name
    if not mask_file.is_file():
        return None
    return preprocess.extract_patch(np.load(mask_file).astype(np.float32), ts.columns["x"][i],
                                    ts.columns["y"][i], ts.patches.shape[-1])


def _roc(path: Path, sets: Dict[str, Any], title: str = "BTD on simulated attacks (demo)") -> str:
    curves = {}
    for s in sets.values():
        ts, scores = s["ts"], s["scores"]
        real = ts.columns["method"] == "real"
        for m in sorted(set(ts.columns["method"]) - {"real"}):
            sel = real | (ts.columns["method"] == m)
            curves[f"{m}-{ts.modality}-{ts.attack}"] = (ts.labels[sel], scores[sel])
    return plots.plot_roc(curves, str(path), title=title)


def _per_scanner(sets: Dict[str, Any]) -> Dict[str, Dict[str, float]]:
    """{dataset: {scanner: AUC}} of the main scores: pooled AUCs also reflect score offsets between
    scanners (a noisier scanner has larger residuals everywhere); these do not."""
    out = {}
    for s in sets.values():
        ts, scores = s["ts"], s["scores"]
        real, scanner = ts.columns["method"] == "real", np.asarray(ts.columns["scanner"]).astype(str)
        for m in sorted(set(ts.columns["method"]) - {"real"}):
            sel = real | (ts.columns["method"] == m)
            out[f"{m}-{ts.modality}-{ts.attack}"] = {
                sc: round(metrics.auc(ts.labels[sel & (scanner == sc)], scores[sel & (scanner == sc)]), 3)
                for sc in sorted(set(scanner[sel])) if len(set(ts.labels[sel & (scanner == sc)])) == 2}
    return out


def _fmt_ci(mean: float, lo: float, hi: float) -> str:
    return f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def _generative_notes(gen: Optional[Dict[str, Any]]) -> List[str]:
    """Report lines on the generative attacks: who made them, from what, and their figures."""
    if not gen:
        return []
    a = gen["attacker"]
    d, g = a["ddpm"], a["gan"]

    def early(x):
        return " (stopped by the time budget)" if x.get("stopped_early") else ""

    return ["", "Generative attacks (`btd_jax/attacks`), made by models trained on other patients "
            f"({', '.join(a['patients'])}; {a['n_patches']} patches), never on the detector's data:", "",
            f"- RePaint: diffusion in-painting of a lobulated region from noise (removal) with the attacker's own "
            f"DDPM (the demo U-Net trained at every t, {d['steps']} steps{early(d)}); DDIM grid, jumps.",
            "- SDEdit: a painted nodule (40-150 HU) noised to t* and finished by the same DDPM, which regenerates "
            "the dilated nodule mask (injection).",
            f"- cGAN: a CT-GAN-style pix2pix in-painting GAN (U-Net generator, PatchGAN, L1 + adversarial), "
            f"{g['steps']} steps{early(g)}, conditioned on inject/remove; it rewrites the central square.",
            "", "![ROC, generative](roc_generative.png)", "", "![Residual maps, generative](heatmaps_generative.png)"]


def _markdown(info: Dict[str, Any], rows: List[Dict[str, Any]]) -> str:
    t = info["train"]
    lines = [
        "# btd-jax demo: BTD on simulated deepfakes in real DICOM slices", "",
        f"Command: `{info['command']}`", "",
        f"Data: {', '.join(info['data']['sources'])}; {info['data']['n_train']} real training patches "
        f"({info['data']['patch_size']} px, augmented), {info['data']['n_test_per_class']} test patches per class "
        f"and attack, from a column split of every slice that shares no pixel with training.",
        f"Model: preset `{info['config']}` ({info['model']}), trained {t['steps']} steps "
        f"({'stopped by the time budget, ' if t['stopped_early'] else ''}{t['seconds']:.0f} s, "
        f"loss {t['first_loss'] or float('nan'):.3f} -> {t['final_loss'] or float('nan'):.3f}).",
        f"Scoring: BTD, d = {info['score']['steps']} reverse step from t = 0, mean squared residual over the central "
        f"{info['score']['center']}x{info['score']['center']} window (`center{info['score']['center']}`, used for "
        f"the figures) and over the whole patch (`full`). "
        f"AUC/EER: point estimate on all samples; bootstrap ({rows[0]['n_boot'] if rows else 0} draws, balanced "
        f"per scanner) mean and 95% interval.", "",
        "| dataset | attack | window | real | fake | AUC | AUC bootstrap mean [95% CI] | EER | "
        "EER bootstrap mean [95% CI] |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r["reduction"] == "full", r.get("kind") != "generative")):
        lines.append(f"| {r['dataset']} | {r.get('kind', '')} | {r['reduction']} | {r['n_real']} | {r['n_fake']} | "
                     f"{r['auc']:.3f} | {_fmt_ci(r['auc_mean'], r['auc_ci_low'], r['auc_ci_high'])} | "
                     f"{r['eer']:.3f} | {_fmt_ci(r['eer_mean'], r['eer_ci_low'], r['eer_ci_high'])} |")
    per = info.get("per_scanner") or {}
    scanners = sorted({sc for v in per.values() for sc in v})
    if per:
        lines += ["", f"AUC within each scanner (`center{info['score']['center']}`):", "",
                  "| dataset | " + " | ".join(scanners) + " |", "|---|" + "---|" * len(scanners)]
        lines += [f"| {d} | " + " | ".join(f"{v[sc]:.3f}" if sc in v else "-" for sc in scanners) + " |"
                  for d, v in per.items()]

    lines += _generative_notes(info.get("generative"))
    lines += ["", "Hand-made attack styles (ablations: imitations of generator traces on the real slices, "
                  "`btd_jax/attacks/tamper.py`):", ""]
    lines += [f"- {m}: {note}" for m, note in demo_data.NOTES.items()]
    lines += ["",
              "![ROC](roc.png)", "", "![Residual maps](heatmaps.png)", "",
              f"Timings (s): {json.dumps({k: round(v, 1) for k, v in info['timings'].items()})}", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- output folder

# What a demo writes under its folder (each replaced by the next run there), and the file that marks
# a folder as a demo's own.
DEMO_DIRS = ("data", "workdir", "report", "generative")
DEMO_MARKER = ".btd_demo"


def _shown(out: Path) -> str:
    """The output folder as the report records it: relative to the working directory, or its name when
    outside it (a report is often shared or committed; a machine path means nothing elsewhere)."""
    rel = os.path.relpath(os.path.abspath(out))
    return os.path.basename(os.path.abspath(out)) if rel == ".." or rel.startswith(".." + os.sep) else rel


def _is_demo_folder(out: Path) -> bool:
    if (out / DEMO_MARKER).is_file():
        return True
    try:  # a folder written before the marker existed: its report names the demo
        return "demo" in json.loads((out / "report" / "results.json").read_text())
    except (OSError, ValueError, TypeError):
        return False


def check_demo_folder(out_dir: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuses (:class:`DataError`) to run the demo in ``out_dir`` when it holds ``data/``, ``workdir/``,
    ``report/`` or ``generative/`` that an earlier demo did not write (the demo replaces them), unless
    ``overwrite``; a folder of an earlier demo, an empty or a new one is fine. Returns the path."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a directory")
    present = [d for d in DEMO_DIRS if (out / d).exists()]
    if present and not overwrite and not _is_demo_folder(out):
        raise DataError(f"{out}: holds {', '.join(d + '/' for d in present)} not written by btd-jax demo; the demo "
                        "replaces these, so give a new --out (or pass --overwrite to replace them)")
    return out


# ----------------------------------------------------------------------------------- entry point

def run_demo(out_dir: str | os.PathLike = "btd_demo", config: str = "demo", minutes: float = 10.0, seed: int = 0,
             quick: bool = False, modality: str = "CT", steps: Optional[int] = None, n_train: Optional[int] = None,
             n_test: Optional[int] = None, n_boot: Optional[int] = None, progress: bool = True,
             generative: bool = True, overwrite: bool = False) -> Dict[str, Any]:
    """Run the whole demo in ``out_dir`` (``data/``, ``workdir/``, ``report/``) and return a report dict.

    A rerun in the same folder replaces the earlier demo's outputs; a folder holding such
    subfolders that no demo wrote is refused unless ``overwrite`` (:func:`check_demo_folder`).

    Args:
      config: preset name (``demo``, ``tiny``, ``ct8``, ...); ``quick=True`` switches to the
        ``demo-quick`` preset with a few steps and a small data set (seconds, for tests).
      minutes: wall-clock budget of the whole demo; training stops early (and says so) when needed.
      steps / n_train / n_test / n_boot: override training steps, training patches, test patches
        per class and bootstrap draws.
      generative: CT only: also train the attackers (:mod:`btd_jax.attacks.suite`, on patients the
        detector never sees) and evaluate BTD on their RePaint / SDEdit / cGAN fakes
        (``generative/``); the detector then gets 60% of the training budget.
    Returns:
      dict with ``report`` (report.md path), ``results`` (one row per tamper dataset and window: auc,
      eer, bootstrap means and intervals), ``reduction`` (the main window, e.g. 'center16'),
      ``train`` (steps, seconds, losses), ``timings`` and ``files``.
    """
    t_start = time.perf_counter()
    out = check_demo_folder(out_dir, overwrite)
    configs.load(config)  # an unknown preset or bad file fails before any work, also in quick mode
    name = QUICK_CONFIG.name if quick else config
    cfg = demo_config(name, steps, modality, seed)
    size = cfg.image_size
    n_train = n_train or (256 if quick else 4096)
    n_test = n_test or (12 if quick else 150)
    n_boot = n_boot or (20 if quick else 100)
    timings: Dict[str, float] = {}

    data_dir, workdir, report_dir, gen_dir = out / "data", out / "workdir", out / "report", out / "generative"
    generative = generative and cfg.modality == "CT"  # the attackers' own patients are CT
    for d in (data_dir, workdir, report_dir, gen_dir):  # a fresh run: no resuming from an older demo
        if d.exists():
            shutil.rmtree(d)
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("written by btd-jax demo; a rerun here replaces "
                                   + ", ".join(d + "/" for d in DEMO_DIRS) + "\n")
    t = time.perf_counter()
    data = demo_data.build(data_dir, cfg.modality, size=size, n_train=n_train, n_test=n_test, seed=seed)
    patches = datasets.load_patches(data.train_path)
    timings["data"] = time.perf_counter() - t

    # Reserve time for scoring and the report (~15% of the budget, at least 20 s), and 40% of the rest
    # for the generative attacks (the detector's 800 steps need far less on an idle 2-core machine).
    budget = max(minutes * 60.0 - (time.perf_counter() - t_start), 1.0)
    train_budget = (budget - max(20.0, 0.15 * budget)) * (0.6 if generative else 1.0)
    train_info = _train(cfg, workdir, patches, train_budget, progress=progress)
    timings["train"] = train_info["seconds"]

    t = time.perf_counter()
    scorer = Scorer.load(str(workdir))
    sets, all_rows = {}, []
    for attack in ("Inject", "Remove"):
        ts = datasets.load_testset(data.testset_root, cfg.modality, attack, size=size)
        rows, scores, maps, red = _evaluate_attack(scorer, ts, cfg, attack, n_boot, seed)
        sets[attack] = {"ts": ts, "scores": scores, "maps": maps, "reduction": red}
        all_rows += [dict(r, kind="hand-made (ablation)") for r in rows]
    timings["score+evaluate"] = time.perf_counter() - t
    gen_sets, gen_info = {}, None
    if generative:
        t = time.perf_counter()
        left = minutes * 60.0 - (t - t_start) - 20.0
        gen_cfg = dataclasses.replace(suite.QUICK if quick else suite.SuiteConfig(), n=n_test)
        gen_info = suite.build(gen_dir, demo_data.load_sources(cfg.modality, data.summary["test_frac"], size),
                               gen_cfg, size=size, seed=seed, budget_s=max(0.6 * left, 1.0))
        for attack in ("Inject", "Remove"):
            ts = datasets.load_testset(gen_info["root"], cfg.modality, attack, size=size)
            rows, scores, maps, red = _evaluate_attack(scorer, ts, cfg, attack, n_boot, seed)
            gen_sets[attack] = {"ts": ts, "scores": scores, "maps": maps, "reduction": red}
            all_rows += [dict(r, kind="generative") for r in rows]
        timings["generative"] = time.perf_counter() - t

    t = time.perf_counter()
    report_dir.mkdir(parents=True, exist_ok=True)
    files = {"roc": _roc(report_dir / "roc.png", sets), "heatmaps": _heatmaps(report_dir / "heatmaps.png", sets),
             "csv": eval_io.write_csv(all_rows, str(report_dir / "results.csv"))}
    for attack, s in sets.items():
        files[f"scores_{attack}"] = eval_io.write_scores_csv(str(report_dir / f"scores_{attack}.csv"), s["ts"].labels,
                                                     {s["reduction"]: s["scores"]}, s["ts"].columns)
    if gen_sets:
        files["roc_generative"] = _roc(report_dir / "roc_generative.png", gen_sets, "BTD on generative attacks (demo)")
        files["heatmaps_generative"] = _heatmaps(report_dir / "heatmaps_generative.png", gen_sets)
        for attack, s in gen_sets.items():
            files[f"scores_generative_{attack}"] = eval_io.write_scores_csv(
                str(report_dir / f"scores_generative_{attack}.csv"), s["ts"].labels, {s["reduction"]: s["scores"]},
                s["ts"].columns)
    timings["figures"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t_start
    m = cfg.model
    info = {
        "command": f"btd-jax demo --out {_shown(out)} --config {config} --minutes {minutes:g} --seed {seed}"
                   + (f" --modality {cfg.modality}" if cfg.modality != "CT" else "")
                   + (f" --num_steps {steps}" if steps else "") + (" --quick" if quick else ""),
        "config": cfg.name, "model": f"dim {m.dim}, dim_mults {m.dim_mults}, T={cfg.diffusion.timesteps} "
                                     f"{cfg.diffusion.beta_schedule}, t_sampling {cfg.train.t_sampling}",
        "data": data.summary, "train": train_info, "timings": timings,
        "score": {"steps": cfg.score.steps, "center": cfg.score.center},
        "per_scanner": _per_scanner({**sets, **{f"{a} generative": v for a, v in gen_sets.items()}}),
        "generative": None if gen_info is None else {k: v for k, v in gen_info.items() if k != "root"},
    }
    files["markdown"] = str(report_dir / "report.md")
    Path(files["markdown"]).write_text(_markdown(info, all_rows))
    files["json"] = eval_io.write_json(all_rows, str(report_dir / "results.json"), demo=info)
    return {"out_dir": str(out), "report": files["markdown"], "results": all_rows, "train": train_info,
            "timings": timings, "files": files, "config": cfg.name,
            "reduction": sets["Inject"]["reduction"]}

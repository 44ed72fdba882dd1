"""Shared stages of the generative-attack experiments (cached in a work folder, rerun = reuse).

* :func:`demo_data`: the demo's data exactly as ``btd-jax demo`` builds it (seed 0), CT or MRI.
* :func:`detector`: a BTD DDPM trained on the demo's real training patches (demo model; the
  timestep law decides the recipe: ``lowt`` = the demo, ``uniform`` = the paper's, ``truncated`` =
  the ``-fast`` presets'), CT or MRI.
* :func:`attackers`: the attacker's DDPM (every t) and cGAN, trained on CT patients the detector
  never sees (``btd_jax.attacks.attacker.ATTACKER_SOURCES``; :mod:`btd_jax.attacks.suite`).
* :func:`attack_sets`: the four generative test sets on the demo's test region, in the authors'
  layout under one root (RePaint-CT-Remove, SDEdit-CT-Inject, cGAN-CT-Inject, cGAN-CT-Remove).
* :func:`btd_rows`, :func:`baseline_rows`: BTD (score settings) and the eight baselines on one
  attack's sets, bootstrap AUC/EER rows, each with the ``btd-jax`` command that reproduces it
  (paths shown relative to the work folder, ``WORK/...``); :func:`markdown`: their table.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import jax

from btd_jax import baselines, configs, demo, evaluate, train
from btd_jax.attacks import demo_data as demo_data_lib, suite
from btd_jax.baselines import comparison
from btd_jax.data import datasets
from btd_jax.score import Scorer

def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _suffix(modality: str) -> str:
    return "" if modality == "CT" else f"_{modality}"  # CT keeps the folder names of earlier caches


def demo_data(work: Path, n_test: int = 150, seed: int = 0, modality: str = "CT"):
    """The demo's data folder (train.npz + testset/) of ``modality``, built once."""
    d = work / f"data{_suffix(modality)}"
    if not (d / "data.json").is_file():
        log(f"building the demo {modality} data")
        demo_data_lib.build(d, modality, size=32, n_train=4096, n_test=n_test, seed=seed)
    return d


def detector(work: Path, t_sampling: str = "lowt", steps: int = 800, seed: int = 0, modality: str = "CT") -> Path:
    """A demo-preset DDPM trained ``steps`` steps with ``t_sampling`` on the demo training patches."""
    wd = work / f"detector{_suffix(modality)}_{t_sampling}_{steps}"
    if not (wd / "done.json").is_file():
        cfg = demo.demo_config("demo", steps, modality, seed)
        if t_sampling != cfg.train.t_sampling:
            cfg = configs.override(cfg, {"name": f"demo-{t_sampling}", "train.t_sampling": t_sampling})
        log(f"training the {t_sampling} detector for {steps} steps in {wd}")
        t0 = time.perf_counter()
        train.train_and_evaluate(cfg, str(wd), datasets.load_patches(demo_data(work, modality=modality) / "train.npz"),
                                 progress=False, async_checkpoints=False)
        (wd / "done.json").write_text(json.dumps({"seconds": time.perf_counter() - t0, "steps": steps}))
    return wd


def attackers(work: Path, cfg: suite.SuiteConfig = suite.SuiteConfig(), seed: int = 0) -> Dict[str, Any]:
    """Trains (once) the attacker's DDPM and cGAN under ``work/attacker``; returns the training info."""
    out = work / "attacker"
    info_path = out / "info.json"
    if not info_path.is_file():
        log(f"training the attackers (DDPM {cfg.ddpm_steps} steps, cGAN {cfg.gan_steps} steps)")
        info = suite.train_attackers(out, cfg, 32, seed)
        info_path.write_text(json.dumps(info, indent=2, default=str))
    return json.loads(info_path.read_text())


def attack_sets(work: Path, cfg: suite.SuiteConfig = suite.SuiteConfig(), seed: int = 0,
                root_name: str = "attacks") -> Tuple[Path, Dict[str, float]]:
    """Writes (once) the four generative test sets on the demo's test regions under ``work/root_name``."""
    root = work / root_name
    done = root / "done.json"
    if not done.is_file():
        log(f"attacking the demo's test regions: {cfg.n} sites per data set")
        sources = demo_data_lib.load_sources("CT", test_frac=0.35, min_width=32)  # as demo_data.build
        seconds = suite.write_sets(root, suite.load_attackers(work / "attacker", cfg), sources, cfg.n, seed)
        done.write_text(json.dumps(seconds))
    return root, json.loads(done.read_text())


def ensure_dir(p: str | os.PathLike) -> Path:
    p = Path(p)
    p.mkdir(parents=True, exist_ok=True)
    return p


def shown(path: Path, work: Path) -> str:
    """``path`` as written in results: ``WORK/<path relative to the work folder>`` (no machine paths)."""
    try:
        return "WORK/" + Path(path).resolve().relative_to(Path(work).resolve()).as_posix()
    except ValueError:
        return Path(path).name


def btd_command(wd: str, root: str, attack: str, dataset: str, center: Optional[int], kw: Dict[str, Any],
                modality: str = "CT") -> str:
    """The ``btd-jax`` command(s) that reproduce one BTD row from the cached work folder."""
    tamper = dataset.split("-")[0]
    if kw.get("variant", "btd") == "btd" and kw.get("reduction", "mean") == "mean":
        return (f"btd-jax evaluate --workdir {wd} --dataset {root} --modality {modality} --attack {attack} "
                f"--tamper {tamper} --centers 16 --out OUT")  # reports the central 16 and the whole patch
    opts = [f"--center {center}"] if center else []
    if "reduction" in kw:
        opts.append(f"--reduction {kw['reduction']}")
    if kw.get("variant") == "multi_t":
        opts.append("--variant multi_t --start_ts " + " ".join(map(str, kw["start_ts"])))
    if kw.get("variant") == "two_sided":
        opts.append(f"--variant two_sided --reference {wd}/score_reference.json")
    return (f"btd-jax score --workdir {wd} --input {root} --modality {modality} --attack {attack} --tamper {tamper} "
            f"{' '.join(opts)} --out S.csv && btd-jax evaluate --scores S.csv --attack {attack} --out OUT")


def btd_rows(name: str, wd: Path, root: Path, attack: str, settings: Dict[str, Dict[str, Any]], n_boot: int,
             ref=None, modality: str = "CT", size: int = 32, centers=(16, None), work: Optional[Path] = None,
             ) -> List[Dict[str, Any]]:
    """BTD rows of every data set of ``attack`` under ``root``: one per (setting, window).

    ``settings``: {label: Scorer.score keywords}; the ``two_sided`` variant uses ``ref`` and only the
    central window (the reference is fitted there)."""
    scorer = Scorer.load(str(wd))
    patches, labels, meta = evaluate.load_eval_set(str(root), modality, attack, size=size)
    rows = []
    for label, kw in settings.items():
        for center in centers:
            kw2 = dict(kw, center=center)
            if kw2.get("variant") == "two_sided":
                if center is None:
                    continue
                kw2["reference"] = ref
            s = scorer.score(patches, key=jax.random.key(0), **kw2)
            red = evaluate.reduction_name(center, kw.get("reduction", "mean"))
            for r in evaluate.evaluate_scored({red: s}, labels, meta, modality, attack, n_boot=n_boot, seed=0,
                                              method=f"BTD {name} {label}"):
                r["command"] = btd_command(shown(wd, work) if work else str(wd),
                                           shown(root, work) if work else str(root), attack, r["dataset"], center,
                                           kw, modality)
                rows.append(r)
    return rows


def baseline_rows(train_path: Path, root: Path, attack: str, wd: Path, steps: int, n_boot: int, ckpt_dir: Path,
                  modality: str = "CT", size: int = 32, work: Optional[Path] = None):
    """The eight baselines (``tiny``, ``steps``; fitted once into ``ckpt_dir`` and reused) on every data
    set of ``attack`` under ``root``: (rows, seconds). Injection: central 16 window; removal: whole patch."""
    train_patches = datasets.load_patches(str(train_path))
    patches, labels, meta = evaluate.load_eval_set(str(root), modality, attack, size=size)
    res = comparison.compare(train_patches, patches, labels, meta, modality=modality, attack=attack,
                             scorer=Scorer.load(str(wd)), methods=baselines.NAMES, preset="tiny", baseline_steps=steps,
                             center=16, n_boot=n_boot, checkpoint_dir=str(ckpt_dir), reuse=True, progress=log)

    def p(x):
        return shown(x, work) if work else str(x)

    cmd = (f"btd-jax compare --dataset {p(root)} --train {p(train_path)} --workdir {p(wd)} --modality {modality} "
           f"--attack {attack} --preset tiny --baseline_steps {steps} --center 16 --out OUT")
    return [dict(r, command=cmd) for r in res.rows if r["method"] != "BTD"], res.seconds


def markdown(rows: List[Dict[str, Any]], extra: Tuple[str, ...] = ()) -> str:
    """A Markdown table of result rows (``extra``: further columns shown before the method)."""
    head = ("| dataset | " + "".join(f"{c} | " for c in extra)
            + "method | window | AUC | AUC bootstrap [95% CI] | EER | EER bootstrap [95% CI] |")
    lines = [head, "|---|" + "---|" * len(extra) + "---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | " + "".join(f"{r.get(c, '')} | " for c in extra)
                     + f"{r['method']} | {r['reduction']} | {r['auc']:.3f} | {r['auc_mean']:.3f} "
                     f"[{r['auc_ci_low']:.3f}, {r['auc_ci_high']:.3f}] | {r['eer']:.3f} | {r['eer_mean']:.3f} "
                     f"[{r['eer_ci_low']:.3f}, {r['eer_ci_high']:.3f}] |")
    return "\n".join(lines) + "\n"

"""BTD and the eight baselines on generative deepfakes made offline (RePaint, SDEdit, cGAN), demo scale.

    python -m experiments.attacks_demo --work WORK --out experiments/results/attacks_demo.json

Every stage is cached in ``WORK`` (a rerun reuses it): the demo's data (``btd-jax demo``'s, seed 0);
three BTD detectors on its real training patches, the demo U-Net trained 800 steps with the demo's
low-t law (``demo``), the paper's uniform law (``paper``) and the ``-fast`` presets' truncated law
(``fast``, scored with their 99th-percentile pooling); the attacker's DDPM and cGAN, trained on two
CT patients the detectors never see; the four generative test sets on the demo's test regions
(``WORK/attacks``: RePaint-CT-Remove, SDEdit-CT-Inject, cGAN-CT-Inject, cGAN-CT-Remove, 150 real +
150 fake each); then AUC/EER (scanner-balanced bootstrap, 100 draws) of

* BTD: each detector with the paper's score (d = 1, mean; central 16x16 window and whole patch),
  and on the ``demo`` detector the score variants max, percentile:99, multi_t and two_sided;
* the eight baselines (``btd_jax.baselines``, ``tiny`` preset, 300 steps, fitted once on the demo's
  training patches; injection scored on the central window, removal on the whole patch).

Each row carries the ``btd-jax`` command that reproduces it from ``WORK``. Writes JSON (rows,
settings, timings) and a Markdown table beside it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Dict, List

import jax
import numpy as np
from scipy import ndimage as ndi

from btd_jax import baselines, evaluate
from btd_jax.attacks import suite
from btd_jax.baselines import comparison
from btd_jax.data import datasets
from btd_jax.data import demo_data as demo_data_lib
from btd_jax.score import Scorer
from btd_jax.scoring import variants
from experiments import attacks_common as common

DETECTORS = {"demo": "lowt", "paper": "uniform", "fast": "truncated"}
ATTACKS = {"injection": ("SDEdit", "cGAN"), "removal": ("RePaint", "cGAN")}


def _btd_rows(name: str, wd: Path, root: Path, attack: str, settings: Dict[str, Any], n_boot: int,
              ref=None) -> List[Dict[str, Any]]:
    scorer = Scorer.load(str(wd))
    patches, labels, meta = evaluate.load_eval_set(str(root), "CT", attack, size=32)
    rows = []
    for label, kw in settings.items():
        for center in (16, None):
            kw2 = dict(kw, center=center)
            if kw2.get("variant") == "two_sided":
                if center is None:
                    continue  # the reference is fitted on the central window
                kw2["reference"] = ref
            s = scorer.score(patches, key=jax.random.key(0), **kw2)
            red = evaluate.reduction_name(center, kw.get("reduction", "mean"))
            for r in evaluate.evaluate_scored({red: s}, labels, meta, "CT", attack, n_boot=n_boot, seed=0,
                                              method=f"BTD {name} {label}"):
                r["command"] = _btd_command(wd, root, attack, r["dataset"], center, kw)
                rows.append(r)
    return rows


def _btd_command(wd: Path, root: Path, attack: str, dataset: str, center, kw) -> str:
    """The ``btd-jax`` command(s) that reproduce one BTD row from the cached work folder."""
    tamper = dataset.split("-")[0]
    if kw.get("variant", "btd") == "btd" and kw.get("reduction", "mean") == "mean":
        return (f"btd-jax evaluate --workdir {wd} --dataset {root} --attack {attack} --tamper {tamper} "
                "--centers 16 --out OUT")
    opts = [f"--center {center}"] if center else []
    if "reduction" in kw:
        opts.append(f"--reduction {kw['reduction']}")
    if kw.get("variant") == "multi_t":
        opts.append("--variant multi_t --start_ts " + " ".join(map(str, kw["start_ts"])))
    if kw.get("variant") == "two_sided":
        opts.append(f"--variant two_sided --reference {wd}/score_reference.json")
    return (f"btd-jax score --workdir {wd} --input {root} --modality CT --attack {attack} --tamper {tamper} "
            f"{' '.join(opts)} --out S.csv && btd-jax evaluate --scores S.csv --attack {attack} --out OUT")


def _baseline_rows(work: Path, root: Path, attack: str, demo_wd: Path, steps: int, n_boot: int):
    train = datasets.load_patches(str(common.demo_data(work) / "train.npz"))
    patches, labels, meta = evaluate.load_eval_set(str(root), "CT", attack, size=32)
    res = comparison.compare(train, patches, labels, meta, modality="CT", attack=attack, scorer=Scorer.load(
        str(demo_wd)), methods=baselines.NAMES, preset="tiny", baseline_steps=steps, center=16, n_boot=n_boot,
        checkpoint_dir=str(work / f"baselines_{attack}"), reuse=True, progress=common.log)
    cmd = (f"btd-jax compare --dataset {root} --train {work}/data/train.npz --workdir {demo_wd} --attack {attack} "
           f"--preset tiny --baseline_steps {steps} --center 16 --out OUT")
    return [dict(r, command=cmd) for r in res.rows if r["method"] != "BTD"], res.seconds


def _highpass(a: np.ndarray) -> np.ndarray:
    return a - ndi.gaussian_filter(a.astype(np.float64), 1.0)


def _describe(root: Path) -> Dict[str, Dict[str, float]]:
    """What each generative attack did to its pixels (HU, inside its mask): mean change, and the
    high-pass noise level (x - gaussian(x, 1)) of the fake vs the original and vs real pixels."""
    sources = {(s.name, s.frame): s for s in demo_data_lib.load_sources("CT", 0.35, 32)}
    out = {}
    for attack in ATTACKS:
        patches, labels, meta = evaluate.load_eval_set(str(root), "CT", attack, size=32)
        csv_dir = root / "CT" / ("Inject" if attack == "injection" else "Remove")
        for name, idx in evaluate.dataset_indices(labels, meta, "CT", attack).items():
            stats: Dict[str, List[float]] = {"mean_change_hu": [], "noise_fake_hu": [], "noise_orig_hu": [],
                                             "painted_contrast_hu": []}
            for i in idx[labels[idx] == 1]:
                src = sources[(str(meta["source"][i]), int(meta["frame"][i]))]
                y, x = int(meta["src_y"][i]), int(meta["src_x"][i])
                crop = np.load(str(meta["path"][i]))
                mask = np.load(csv_dir / str(meta["mask"][i]))
                cy, cx = int(meta["y"][i]), int(meta["x"][i])
                fake = crop[cy - 16:cy + 16, cx - 16:cx + 16]
                m = mask[cy - 16:cy + 16, cx - 16:cx + 16]
                orig = src.image[y - 16:y + 16, x - 16:x + 16]
                stats["mean_change_hu"].append(float((fake - orig)[m].mean()))
                stats["noise_fake_hu"].append(float(_highpass(fake)[m].std()))
                stats["noise_orig_hu"].append(float(_highpass(orig)[m].std()))
                stats["painted_contrast_hu"].append(float(meta["contrast"][i]))
            out[name] = {k: round(float(np.mean(v)), 2) for k, v in stats.items()}
    return out


def _markdown(rows: List[Dict[str, Any]]) -> str:
    lines = ["| dataset | method | window | AUC | AUC bootstrap [95% CI] | EER | EER bootstrap [95% CI] |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['method']} | {r['reduction']} | {r['auc']:.3f} | {r['auc_mean']:.3f} "
                     f"[{r['auc_ci_low']:.3f}, {r['auc_ci_high']:.3f}] | {r['eer']:.3f} | {r['eer_mean']:.3f} "
                     f"[{r['eer_ci_low']:.3f}, {r['eer_ci_high']:.3f}] |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, help="cache folder (data, models, test sets)")
    ap.add_argument("--out", default="experiments/results/attacks_demo.json")
    ap.add_argument("--detectors", nargs="*", default=list(DETECTORS), choices=list(DETECTORS))
    ap.add_argument("--detector_steps", type=int, default=800)
    ap.add_argument("--ddpm_steps", type=int, default=1500, help="attacker DDPM training steps")
    ap.add_argument("--gan_steps", type=int, default=600, help="attacker cGAN training steps")
    ap.add_argument("--n", type=int, default=150, help="fake (and real) rows per generative data set")
    ap.add_argument("--baseline_steps", type=int, default=300, help="0: no baselines")
    ap.add_argument("--n_boot", type=int, default=100)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    work = common.ensure_dir(args.work)
    common.demo_data(work)
    cfg = suite.SuiteConfig(ddpm_steps=args.ddpm_steps, gan_steps=args.gan_steps, n=args.n)
    attacker_info = common.attackers(work, cfg)
    root, attack_seconds = common.attack_sets(work, cfg)
    wds = {name: common.detector(work, DETECTORS[name], args.detector_steps) for name in args.detectors}

    rows, seconds = [], {}
    hand_root = common.demo_data(work) / "testset"
    for attack in ATTACKS:
        if "demo" in wds:
            ref = None
            real = demo_data_lib.train_patches(demo_data_lib.load_sources("CT", 0.35, 32), 32, 512,
                                               np.random.default_rng(123), augment=False)["patches"]
            ref = variants.fit_scorer_reference(Scorer.load(str(wds["demo"])), real, center=16, pool="mean")
            ref.save(str(wds["demo"]))
            settings = {"mean": {}, "max": {"reduction": "max"}, "p99": {"reduction": "percentile:99"},
                        "multi_t": {"variant": "multi_t", "start_ts": (0, 1, 2, 3)},
                        "two_sided": {"variant": "two_sided"}}
            rows += _btd_rows("demo", wds["demo"], root, attack, settings, args.n_boot, ref)
            rows += [dict(r, kind="hand-made") for r in _btd_rows("demo", wds["demo"], hand_root, attack,
                                                                   {"mean": {}}, args.n_boot)]
        if "paper" in wds:
            rows += _btd_rows("paper", wds["paper"], root, attack, {"mean": {}}, args.n_boot)
        if "fast" in wds:
            rows += _btd_rows("fast", wds["fast"], root, attack, {"p99": {"reduction": "percentile:99"}}, args.n_boot)
        if args.baseline_steps and "demo" in wds:
            b_rows, seconds[attack] = _baseline_rows(work, root, attack, wds["demo"], args.baseline_steps,
                                                     args.n_boot)
            rows += b_rows
        common.log(f"{attack}: {len(rows)} rows so far")
    for r in rows:
        r.setdefault("kind", "generative")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    detectors = {k: json.loads((v / "done.json").read_text()) for k, v in wds.items()}
    out.write_text(json.dumps({"rows": rows, "attacker": attacker_info, "attack_seconds": attack_seconds,
                               "what_the_attacks_did": _describe(root),
                               "detectors": detectors, "baseline_seconds": seconds, "args": vars(args),
                               "command": f"python -m experiments.attacks_demo --work {args.work}",
                               "total_seconds": time.perf_counter() - t0}, indent=2, default=str))
    out.with_suffix(".md").write_text(_markdown(rows))
    print(_markdown([r for r in rows if r["reduction"] in ("center16", "full")]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

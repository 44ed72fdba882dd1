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
from typing import Any, Dict

import numpy as np

from btd_jax.attacks import demo_data as demo_data_lib, quality, suite
from btd_jax.score import Scorer
from btd_jax.scoring import variants
from experiments import attacks_common as common

DETECTORS = {"demo": "lowt", "paper": "uniform", "fast": "truncated"}
ATTACKS = {"injection": ("SDEdit", "cGAN"), "removal": ("RePaint", "cGAN")}


def _quality(root: Path) -> Dict[str, Dict[str, Any]]:
    """What each generative attack did to its pixels (:mod:`btd_jax.attacks.quality`, HU)."""
    sources = demo_data_lib.load_sources("CT", 0.35, 32)
    return {name: quality.summarize(q, attack) for attack in ATTACKS
            for name, q in quality.read_sets(root, "CT", attack, sources, 32).items()}


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
            rows += common.btd_rows("demo", wds["demo"], root, attack, settings, args.n_boot, ref, work=work)
            rows += [dict(r, kind="hand-made") for r in common.btd_rows("demo", wds["demo"], hand_root, attack,
                                                                         {"mean": {}}, args.n_boot, work=work)]
        if "paper" in wds:
            rows += common.btd_rows("paper", wds["paper"], root, attack, {"mean": {}}, args.n_boot, work=work)
        if "fast" in wds:
            rows += common.btd_rows("fast", wds["fast"], root, attack, {"p99": {"reduction": "percentile:99"}},
                                    args.n_boot, work=work)
        if args.baseline_steps and "demo" in wds:
            b_rows, seconds[attack] = common.baseline_rows(common.demo_data(work) / "train.npz", root, attack,
                                                           wds["demo"], args.baseline_steps, args.n_boot,
                                                           work / f"baselines_{attack}", work=work)
            rows += b_rows
        common.log(f"{attack}: {len(rows)} rows so far")
    for r in rows:
        r.setdefault("kind", "generative")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    detectors = {k: json.loads((v / "done.json").read_text()) for k, v in wds.items()}
    out.write_text(json.dumps({"rows": rows, "attacker": attacker_info, "attack_seconds": attack_seconds,
                               "what_the_attacks_did": _quality(root),
                               "detectors": detectors, "baseline_seconds": seconds,
                               "args": dict(vars(args), work="WORK"),
                               "command": "python -m experiments.attacks_demo --work WORK",
                               "total_seconds": time.perf_counter() - t0}, indent=2, default=str))
    out.with_suffix(".md").write_text(common.markdown(rows))
    print(common.markdown([r for r in rows if r["reduction"] in ("center16", "full")]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

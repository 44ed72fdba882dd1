"""The LDM attacker on CPU: training time, autoencoder reconstruction error, sampling cost; JSON out.

    python -m experiments.bench_ldm --workdir runs/bench_ldm --out experiments/results/bench_ldm_cpu.json

Trains :func:`btd_jax.attacks.ldm.ldm_config` (``--preset``, ``--size`` px patches) on the attacker's
own CT patients (:data:`btd_jax.attacks.attacker.ATTACKER_SOURCES`, ``--patches`` augmented crops)
with :func:`btd_jax.attacks.attacker.train_ldm` (a finished model in ``--workdir`` is reused:
pass a fresh folder to time training). Then it reports the autoencoder's mean absolute
reconstruction error in HU (posterior means, decoded) on other crops of the attacker's slices
and on the demo detector's slices (patients the autoencoder never saw), and times
:func:`btd_jax.attacks.ldm.remove` and :func:`btd_jax.attacks.ldm.inject` at full strength
(``ldm.LDM_REMOVAL`` / ``ldm.LDM_INJECTION``, or ``--steps/--jump_length/--resamplings``) on ``--n``
patches of the detector's patients: the second of two identical calls (the first compiles). The
injection's mean change inside the nodule (HU) against the painted prior's says how much of the
nodule survived. The machine is shared: the load average is recorded with the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

from btd_jax.attacks import attacker, demo_data, ldm, pipeline, sdedit
from btd_jax.data import preprocess


def _hu(unit: np.ndarray) -> np.ndarray:
    return unit * (preprocess.CT_HI - preprocess.CT_LO) + preprocess.CT_LO


def _recon_mae_hu(params, cfg, patches01) -> float:
    z = ldm.autoencoder.encode(params["autoencoder"], cfg.autoencoder, patches01)
    back = ldm.autoencoder.decode(params["autoencoder"], cfg.autoencoder, z)
    return float(np.abs(_hu(back) - _hu(patches01)).mean())


def _time_attack(fn) -> tuple:
    """(output, first call s, second call s, load): the first call compiles (same shapes and options)."""
    t0 = time.perf_counter()
    fn()
    warm = time.perf_counter() - t0
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    out = fn()
    return out, warm, time.perf_counter() - t0, (load0 + os.getloadavg()[0]) / 2


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True, help="LDM folder (trained there unless it holds one)")
    ap.add_argument("--out", required=True, help="JSON results")
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--patches", type=int, default=4096)
    ap.add_argument("--ae_steps", type=int, default=1500)
    ap.add_argument("--ddpm_steps", type=int, default=3000)
    ap.add_argument("--n", type=int, default=16, help="patches per timed attack")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--strength", type=float, default=ldm.STRENGTH)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--jump_length", type=int, default=None)
    ap.add_argument("--resamplings", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    size = args.size
    sources = attacker.attacker_sources("CT")
    patches = attacker.attacker_patches(sources, size, args.patches, seed=args.seed + 1)
    cfg = ldm.ldm_config(args.preset, size, "CT", ae_steps=args.ae_steps, ddpm_steps=args.ddpm_steps, seed=args.seed)
    # A folder that holds a finished LDM is reused: its training figures are the ones it recorded.
    meta = Path(args.workdir) / ldm.LDM_FILE
    reused = meta.is_file() and "ddpm" in json.loads(meta.read_text())["info"]
    train_info = (json.loads(meta.read_text())["info"] if reused
                  else attacker.train_ldm(args.workdir, patches, cfg, seed=args.seed, progress=False))
    params, cfg = ldm.load(args.workdir)

    held = attacker.attacker_patches(sources, size, 512, seed=args.seed + 99)
    demo = demo_data.train_patches(demo_data.load_sources("CT", 0.35, size), size, 512,
                                   np.random.default_rng(args.seed), augment=False)["patches"]
    recon = {"attacker_slices_other_crops": _recon_mae_hu(params, cfg, held),
             "detector_patients": _recon_mae_hu(params, cfg, demo)}

    given = {"steps": args.steps, "jump_length": args.jump_length, "resamplings": args.resamplings}
    given = {k: v for k, v in given.items() if v is not None}
    opts_rm, opts_inj = (dataclasses.replace(o, **given) for o in (ldm.LDM_REMOVAL, ldm.LDM_INJECTION))
    rng = np.random.default_rng(args.seed)
    x = demo[rng.permutation(len(demo))[:args.n]]  # both of the detector's patients
    radii = rng.uniform(pipeline.REMOVE_RADIUS_PX[0], min(pipeline.REMOVE_RADIUS_PX[1], size / 2.4), len(x))
    c = size // 2
    masks = np.stack([(np.hypot(*np.mgrid[:size, :size] - c) <= r) for r in radii])
    n_dev = jax.local_device_count()

    def remove():
        return ldm.remove(params, cfg, x, masks, jax.random.key(1), options=opts_rm, batch_size=args.batch)

    hu = _hu(x)
    nodule_radii = rng.uniform(sdedit.RADIUS_PX[0], min(sdedit.RADIUS_PX[1], size / 4.0), len(x))  # as the pipeline
    painted = [sdedit.paint_nodule(p, c, c, r, rng.uniform(*sdedit.CONTRAST_HU), rng) for p, r in zip(hu, nodule_radii)]
    priors = preprocess.window_ct(np.stack([p for p, _ in painted]))
    nodules = np.stack([m for _, m in painted])

    def inject():
        return ldm.inject(params, cfg, x, priors, nodules, jax.random.key(2), strength=args.strength,
                          options=opts_inj, batch_size=args.batch)

    t_star = int(round(args.strength * (cfg.ddpm.diffusion.timesteps - 1)))
    res_rm = _time_attack(remove)
    res_inj = _time_attack(inject)
    (out_inj, changed_inj) = res_inj[0]
    inj_change = [float((_hu(o) - h)[m].mean()) for o, h, m in zip(out_inj, hu, nodules)]
    prior_change = [float((_hu(p) - h)[m].mean()) for p, h, m in zip(priors, hu, nodules)]
    (out_rm, changed_rm) = res_rm[0]

    def entry(res, opts, extra):
        _, warm, secs, load = res
        return {"options": dataclasses.asdict(opts), "n": len(x), "first_call_s": warm, "seconds": secs,
                "seconds_per_fake": secs / len(x), "load_avg": load, **extra}

    result = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "devices": n_dev,
                    "jax": jax.__version__},
        "args": {k: v for k, v in vars(args).items() if k not in ("workdir", "out")},
        "config": {"preset": args.preset, "size": size, "autoencoder": dataclasses.asdict(cfg.autoencoder),
                   "scale": cfg.scale, "ddpm_model": dataclasses.asdict(cfg.ddpm.model),
                   "ddpm_steps": cfg.ddpm.train.num_steps, "patches": len(patches)},
        "training": {"reused_model": reused, "autoencoder_s": train_info["autoencoder"].get("seconds"),
                     "autoencoder_steps": train_info["autoencoder"].get("steps"),
                     "autoencoder_final_loss": (train_info["autoencoder"].get("losses") or [[None] * 5])[-1],
                     "ddpm_s": train_info["ddpm"]["seconds"], "ddpm_steps": train_info["ddpm"]["steps"],
                     "ddpm_first_loss": train_info["ddpm"]["first_loss"],
                     "ddpm_final_loss": train_info["ddpm"]["final_loss"]},
        "reconstruction_mae_hu": recon,
        "removal": entry(res_rm, opts_rm, {"changed_px_per_fake": float(changed_rm.sum() / len(x)),
                                           "mean_abs_change_hu": float(np.abs(_hu(out_rm) - hu)[changed_rm].mean())}),
        "injection": entry(res_inj, opts_inj, {"strength": args.strength, "t_star": t_star,
                                              "nodule_mean_change_hu": float(np.mean(inj_change)),
                                              "prior_mean_change_hu": float(np.mean(prior_change))}),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()

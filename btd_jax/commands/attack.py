"""``btd-jax attack``: make generative deepfakes offline and write them in the authors' test-set layout.

    btd-jax attack --method repaint --attack removal   --input DICOM|STORE|slices.npy --model DDPM_DIR --out ROOT
    btd-jax attack --method sdedit  --attack injection --input ... --model DDPM_DIR --out ROOT [--strength 0.15]
    btd-jax attack --method cgan    --attack injection|removal --input ... --model GAN_DIR --out ROOT
    btd-jax attack --method ldm     --attack injection|removal --input ... --model LDM_DIR --out ROOT
    ... --train_attacker [--attacker_data unseen|same|PATH] [--attacker_steps K]   (fit --model first)
    ... --preset fast                (the demo's cheaper sampler instead of the published one)

Methods: ``repaint`` (diffusion in-painting from noise: removal), ``sdedit`` (a painted nodule noised
to t* and finished by the DDPM: injection), ``cgan`` (a CT-GAN-style in-painting GAN: both),
``ldm`` (latent diffusion in-painting, the paper's SD attack: both; an LDM folder as ``--model``,
trained with ``--train_attacker --config demo|tiny --size S``, ``--attacker_steps`` for its
autoencoder and its latent DDPM each; it samples at full strength, ``btd_jax.attacks.ldm``, and the
sampler flags override single settings).
RePaint and SDEdit sample as published by default (``--preset full``: RePaint 250 respaced steps of
the ancestral sampler, jump length 10, 10 resamplings; SDEdit the ancestral sampler over every step
from t*); ``--preset fast`` is the demo's budget (RePaint 30 steps, j = 5, r = 3; SDEdit DDIM, 15
steps), and ``--sampler/--steps/--jump_length/--resamplings`` override single settings.
``--model`` is a btd_jax workdir holding a DDPM (repaint/sdedit) or a folder holding a cGAN; with
``--train_attacker`` the model is trained there first on ``--attacker_data``: ``unseen`` (default:
patients the demo's detector never sees, ``btd_jax.attacks.attacker.ATTACKER_SOURCES``), ``same``
(the demo detector's own training distribution: the training columns of the demo's slices; attack
their held-out test columns with ``--input demo``) or a DICOM/store/.npy PATH. ``--input`` slices
are in HU (CT) or raw/[0, 1] intensities (MRI); ``--input demo`` is the demo's own slices, attacked
in their test region. ``--modality MRI`` attacks MR slices. ``--n`` sites are attacked and ``--n``
other sites kept real; the CSV ``ROOT/CT/<Inject|Remove>/CT_<...>.csv`` (MRI: ``ROOT/MRI/...``) has
columns ``path, x, y, type``, an indicator ``<Method>-<CT|MRI>-<Inject|Remove>`` and the site's
scanner/patient/radius/mask, and is read unchanged by ``btd-jax evaluate --dataset ROOT``. Rows
this method wrote there before are replaced only with ``--overwrite``; ``ROOT`` may not be (inside)
the input or the model folder. ``--lenient`` skips unreadable DICOM files of
``--input``/``--attacker_data`` and lists them in ``<Method>-<CT|MRI>-<Inject|Remove>.skipped.csv``
next to the CSV.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from btd_jax import configs, train
from btd_jax.attacks import attacker, cgan, inputs, ldm, pipeline, repaint, suite
from btd_jax.commands._flags import non_negative_int, positive_fraction, positive_int
from btd_jax.commands._safety import add_lenient_flag, add_overwrite_flag, output_plan, report_skipped, skipped_file
from btd_jax.data.errors import DataError
from btd_jax.data.testsets import layout
from btd_jax.data.validate import read_csv

_METHODS = ("repaint", "sdedit", "cgan", "ldm")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("attack", help="generative deepfakes (RePaint, SDEdit, cGAN, LDM) in the authors' layout",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", required=True, help="repaint | sdedit | cgan | ldm")
    p.add_argument("--attack", required=True, help="injection | removal")
    p.add_argument("--input", required=True,
                   help="DICOM file/folder, slice store, .npy slices (S, H, W), or 'demo' (the demo's slices, "
                        "attacked in their held-out test columns)")
    p.add_argument("--model", required=True, help="attacker model: DDPM workdir (repaint/sdedit), cGAN or LDM folder")
    p.add_argument("--out", required=True, help="test-set root to write (rows of other methods are kept)")
    p.add_argument("--n", type=positive_int, default=50, help="attacked sites (and as many real sites)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="sites, radii and the attack's noise key")
    p.add_argument("--modality", default=None, help="CT or MRI (default: the model's)")
    p.add_argument("--max_slices", type=positive_int, default=None, help="use at most this many input slices")
    p.add_argument("--train_attacker", action="store_true", help="train the attacker model in --model first")
    p.add_argument("--attacker_data", default="unseen",
                   help="attacker training data: 'unseen' (default: patients the demo's detector never sees), "
                        "'same' (the demo detector's training columns: same patients, disjoint pixels) or a "
                        "DICOM/store/.npy PATH")
    p.add_argument("--attacker_steps", type=positive_int, default=600,
                   help="training steps of the attacker model (ldm: of each part)")
    p.add_argument("--attacker_patches", type=positive_int, default=2048,
                   help="training patches cut from the attacker data")
    p.add_argument("--config", default="demo",
                   help="DDPM preset (or JSON) of a DDPM attacker trained here; ldm: demo | tiny")
    p.add_argument("--size", type=positive_int, default=32, help="patch side of a cGAN or LDM attacker trained here")
    p.add_argument("--preset", default=repaint.DEFAULT_PRESET, choices=tuple(repaint.PRESETS),
                   help="RePaint/SDEdit sampling: 'full' (default, as published) or 'fast' (the demo's budget)")
    p.add_argument("--sampler", default=None, choices=("ddpm", "ddim"),
                   help="RePaint/SDEdit sampler (default: the preset's; full: ddpm; fast: ddpm repaint, ddim sdedit)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="reverse-grid size (default: the preset's; full: 250 repaint, every step from t* sdedit)")
    p.add_argument("--jump_length", type=positive_int, default=None, help="RePaint jump length j (full: 10; fast: 5)")
    p.add_argument("--resamplings", type=positive_int, default=None,
                   help="RePaint resamplings r, 1 = none (full: 10 repaint, 1 sdedit; fast: 3 repaint, 2 sdedit)")
    p.add_argument("--strength", type=positive_fraction, default=0.15,
                   help="SDEdit t* as a fraction of the schedule")
    p.add_argument("--batch_size", type=positive_int, default=64, help="patches per compiled call")
    add_overwrite_flag(p)
    add_lenient_flag(p)
    return p


def _check_choice(args) -> None:
    if args.method not in _METHODS:
        raise DataError(f"unknown --method {args.method!r}; expected one of {', '.join(_METHODS)}")
    attack = {"inject": "injection", "remove": "removal"}.get(args.attack, args.attack)
    if (args.method, attack) not in pipeline.COMBINATIONS:
        raise DataError(f"--method {args.method} does not do --attack {args.attack}; valid: "
                        + ", ".join(f"{m} {a}" for m, a in pipeline.COMBINATIONS))
    args.attack = attack


def _check_out(args, modality: str) -> None:
    """The output plan: this method's images and masks and its skipped list, never (inside) the input,
    the attacker data or the model folder; without ``--overwrite`` no CSV that already holds rows of
    this method. Checked before any work."""
    # ROOT collects several methods' rows: only this method's own files and rows need --overwrite.
    named = {inputs.DEMO_INPUT, *attacker.DATA_CHOICES}  # names, not paths
    plan = output_plan(args, inputs=[a for a in (args.input, args.attacker_data, args.model) if a not in named],
                       workdirs=[args.model])
    path = layout.testset_csv_path(args.out, modality, args.attack)
    own = pipeline.dataset_name(args.method, modality, args.attack)
    plan.shared_folder(args.out)
    plan.pattern(str(path.parent / "images"), f"{pipeline.METHODS[args.method]}_*")
    plan.file(skipped_file(str(path.parent / own)))
    if path.is_file() and not plan.overwrite:
        header, rows = read_csv(path, strip=False)
        if own in header and any(str(r.get(own, "")).strip() in ("1", "1.0") for r in rows):
            raise DataError(f"{path}: already holds {own} rows; pass --overwrite to replace them "
                            "(rows of other methods are kept)")
    plan.check()


def _train(args, modality: str, skipped=None) -> None:
    size = args.size if args.method in ("cgan", "ldm") else configs.load(args.config).image_size
    sources = attacker.training_sources(args.attacker_data, modality, skipped=skipped)
    patches = attacker.attacker_patches(sources, size, args.attacker_patches, seed=args.seed + 1,
                                        min_body=attacker.min_body(modality))
    print(f"attacker ({args.attacker_data}): {len(patches)} training patches of {size} px from "
          f"{', '.join(sorted({s.patient for s in sources}))}", file=sys.stderr)
    if args.method == "cgan":
        gan_cfg = suite.gan_config(size, cgan.GanConfig.features, args.attacker_steps, modality)
        info = attacker.train_gan(args.model, patches, gan_cfg, seed=args.seed)
        print(f"attacker cGAN: {info['steps']} steps in {info['seconds']:.0f} s -> {args.model}", file=sys.stderr)
    elif args.method == "ldm":
        cfg = ldm.ldm_config(args.config, size, modality, ae_steps=args.attacker_steps, ddpm_steps=args.attacker_steps,
                             seed=args.seed)
        info = attacker.train_ldm(args.model, patches, cfg, seed=args.seed, progress=True)
        print(f"attacker LDM: autoencoder {info['autoencoder']['steps']} steps, latent DDPM {info['ddpm']['steps']} "
              f"steps in {info['seconds']:.0f} s -> {args.model}", file=sys.stderr)
    else:
        base = configs.override(configs.load(args.config), {"modality": modality})
        cfg = attacker.ddpm_config(base, args.attacker_steps, seed=args.seed + 1)
        info = attacker.train_ddpm(args.model, patches, cfg, progress=True)
        print(f"attacker DDPM: {info['steps']} steps, loss {info['first_loss']} -> {info['final_loss']}",
              file=sys.stderr)


def _load(args):
    if args.method == "cgan":
        params, cfg = cgan.load(args.model)
        return pipeline.Attacker("cgan", params, cfg), cfg.modality
    if args.method == "ldm":
        params, cfg = ldm.load(args.model)
        base = ldm.LDM_REMOVAL if args.attack == "removal" else ldm.LDM_INJECTION
    else:
        params, cfg = train.load_params(args.model)
        base = repaint.preset_options(args.preset, args.method)
    given = {"sampler": args.sampler, "steps": args.steps, "jump_length": args.jump_length,
             "resamplings": args.resamplings}
    opts = dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
    return pipeline.Attacker(args.method, params, cfg, options=opts, strength=args.strength), cfg.modality


def run(args) -> int:
    _check_choice(args)
    modality = args.modality or "CT"
    skipped = [] if args.lenient else None
    if args.train_attacker:
        _check_out(args, modality)  # the trained model has this modality
        _train(args, modality, skipped)
    atk, model_modality = _load(args)
    modality = args.modality or model_modality
    _check_out(args, modality)
    sources = inputs.load_sources(args.input, modality, args.max_slices, skipped=skipped)
    items, masks = pipeline.attack_sources(atk, args.attack, sources, args.n, seed=args.seed, modality=modality,
                                           min_body=attacker.min_body(modality), batch_size=args.batch_size)
    name = pipeline.METHODS[args.method]
    csv_path = pipeline.write_layout(args.out, modality, args.attack, items, masks, name)
    report_skipped("attack", str(csv_path.parent / pipeline.dataset_name(args.method, modality, args.attack)),
                   skipped or [])
    print(f"wrote {len(items)} rows ({args.n} {name} fakes, {args.n} real) to {csv_path}")
    print(f"evaluate: btd-jax evaluate --workdir DETECTOR --dataset {args.out} --modality {modality} "
          f"--attack {args.attack} --tamper {name} --out RESULTS")
    return 0

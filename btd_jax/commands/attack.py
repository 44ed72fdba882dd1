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
next to the CSV. The work is :func:`btd_jax.attacks.attack`.
"""

from __future__ import annotations

import argparse
import sys

from btd_jax import attacks
from btd_jax.attacks import attacker, inputs, pipeline, repaint
from btd_jax.commands._flags import non_negative_int, positive_fraction, positive_int
from btd_jax.commands._safety import add_lenient_flag, add_overwrite_flag, output_plan, say_skipped
from btd_jax.data.errors import DataError
from btd_jax.data.validate import read_csv


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


def _check_out(args, modality: str) -> None:
    """The output plan: this method's images and masks and its skipped list, never (inside) the input,
    the attacker data or the model folder; without ``--overwrite`` no CSV that already holds rows of
    this method. Checked before any work."""
    # ROOT collects several methods' rows: only this method's own files and rows need --overwrite.
    named = {inputs.DEMO_INPUT, *attacker.DATA_CHOICES}  # names, not paths
    plan = output_plan(args, inputs=[a for a in (args.input, args.attacker_data, args.model) if a not in named],
                       workdirs=[args.model])
    files = attacks.run.output_files(args.out, args.method, modality, args.attack)
    own = pipeline.dataset_name(args.method, modality, args.attack)
    plan.shared_folder(args.out)
    plan.pattern(str(files.images), files.image_glob)
    plan.file(str(files.skipped))
    if files.csv.is_file() and not plan.overwrite:
        header, rows = read_csv(files.csv, strip=False)
        if own in header and any(str(r.get(own, "")).strip() in ("1", "1.0") for r in rows):
            raise DataError(f"{files.csv}: already holds {own} rows; pass --overwrite to replace them "
                            "(rows of other methods are kept)")
    plan.check()


def run(args) -> int:
    args.attack = attacks.run.check_choice(args.method, args.attack, names=("--method", "--attack"))
    done = attacks.attack(
        args.method, args.attack, args.input, args.model, args.out, n=args.n, seed=args.seed, modality=args.modality,
        max_slices=args.max_slices, train=args.train_attacker, attacker_data=args.attacker_data,
        attacker_steps=args.attacker_steps, attacker_patches=args.attacker_patches, config=args.config,
        size=args.size, preset=args.preset, sampler=args.sampler, steps=args.steps, jump_length=args.jump_length,
        resamplings=args.resamplings, strength=args.strength, batch_size=args.batch_size, strict=not args.lenient,
        before_work=lambda modality: _check_out(args, modality), progress=lambda line: print(line, file=sys.stderr))
    say_skipped("attack", done.skipped, done.skipped_path)
    print(f"wrote {done.rows} rows ({done.n} {done.method} fakes, {done.n} real) to {done.csv_path}")
    print(f"evaluate: btd-jax evaluate --workdir DETECTOR --dataset {args.out} --modality {done.modality} "
          f"--attack {done.attack} --tamper {done.method} --out RESULTS")
    return 0

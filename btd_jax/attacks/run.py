"""One attack end to end, as ``btd-jax attack`` runs it: train or load the attacker, attack slices,
write the authors' test-set layout.

    from btd_jax import attacks
    done = attacks.attack("sdedit", "injection", "slices.npy", "runs/attacker_ddpm", "testsets", n=50)
    print(done.rows, done.csv_path)          # testsets/CT/Inject/CT_Inject.csv: 50 fakes + 50 real
    done = attacks.attack("cgan", "removal", "demo", "runs/gan", "testsets", train=True, attacker_data="same")

The parts: :func:`train_attacker` (an attacker model trained on the attacker's data),
:func:`load_attacker` (a model folder and sampler settings -> :class:`~btd_jax.attacks.pipeline.Attacker`),
then :func:`~btd_jax.attacks.pipeline.attack_sources` and :func:`~btd_jax.attacks.pipeline.write_layout`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from btd_jax import configs
from btd_jax.attacks import attacker, cgan, inputs, ldm, pipeline, repaint, suite
from btd_jax.checkpoints import load_params
from btd_jax.data.errors import DataError
from btd_jax.data.testsets import layout
from btd_jax.runtime.outputs import skipped_path, write_skipped

__all__ = ["AttackRun", "Outputs", "attack", "check_choice", "load_attacker", "output_files", "train_attacker"]

Progress = Optional[Callable[[str], None]]


def _say(progress: Progress, msg: str) -> None:
    if progress is not None:
        progress(msg)


def check_choice(method: str, attack: str, names: Tuple[str, str] = ("method", "attack")) -> str:
    """The attack ('injection' | 'removal'; 'inject'/'remove' accepted) when ``method`` does it, else a
    :class:`DataError` naming the parameters as ``names`` (the command passes its flags)."""
    if method not in pipeline.METHODS:
        raise DataError(f"unknown {names[0]} {method!r}; expected one of {', '.join(pipeline.METHODS)}")
    a = {"inject": "injection", "remove": "removal"}.get(attack, attack)
    if (method, a) not in pipeline.COMBINATIONS:
        raise DataError(f"{names[0]} {method} does not do {names[1]} {attack}; valid: "
                        + ", ".join(f"{m} {x}" for m, x in pipeline.COMBINATIONS))
    return a


class Outputs(NamedTuple):
    """What :func:`attack` writes under its root: the CSV, this method's images (``images/<glob>``,
    masks included) and the list of skipped input files."""

    csv: Path
    images: Path
    image_glob: str
    skipped: Path


def output_files(out: str | os.PathLike, method: str, modality: str, attack: str) -> Outputs:
    """The files :func:`attack` writes under ``out`` for ``method``, ``modality`` and ``attack``."""
    csv_path = layout.testset_csv_path(out, modality, attack)
    own = pipeline.dataset_name(method, modality, attack)
    return Outputs(csv_path, csv_path.parent / "images", f"{pipeline.METHODS[method]}_*",
                   Path(skipped_path(str(csv_path.parent / own))))


def train_attacker(method: str, model: str | os.PathLike, *, modality: str = "CT", attacker_data: str = "unseen",
                   steps: int = 600, n_patches: int = 2048, config: str = "demo", size: int = 32, seed: int = 0,
                   skipped: Optional[list] = None, progress: Progress = None) -> Dict[str, Any]:
    """Trains the attacker model of ``method`` in the folder ``model`` on ``n_patches`` patches of
    ``attacker_data`` ('unseen': patients the demo's detector never sees; 'same': the demo detector's
    training columns; or a DICOM/store/.npy path).

    repaint/sdedit train a DDPM of the preset (or JSON) ``config`` at its patch size; cgan a CT-GAN-style
    GAN and ldm a latent DDPM (``config`` 'demo' | 'tiny'; ``steps`` for its autoencoder and its DDPM
    each) of ``size`` px. ``skipped``: a list to collect unreadable DICOM files of a path in (None: they
    stop). ``progress`` receives one line per stage (and enables the DDPMs' progress bars). Returns
    the data used (``attacker_data``, ``patients``, ``n_patches``, ``size``) and the trainer's ``info``.
    """
    if method not in pipeline.METHODS:
        raise DataError(f"unknown method {method!r}; expected one of {', '.join(pipeline.METHODS)}")
    size = size if method in ("cgan", "ldm") else configs.load(config).image_size
    sources = attacker.training_sources(attacker_data, modality, skipped=skipped)
    patches = attacker.attacker_patches(sources, size, n_patches, seed=seed + 1, min_body=attacker.min_body(modality))
    patients = sorted({s.patient for s in sources})
    _say(progress, f"attacker ({attacker_data}): {len(patches)} training patches of {size} px from "
                   f"{', '.join(patients)}")
    if method == "cgan":
        gan_cfg = suite.gan_config(size, cgan.GanConfig.features, steps, modality)
        info = attacker.train_gan(model, patches, gan_cfg, seed=seed)
        _say(progress, f"attacker cGAN: {info['steps']} steps in {info['seconds']:.0f} s -> {model}")
    elif method == "ldm":
        cfg = ldm.ldm_config(config, size, modality, ae_steps=steps, ddpm_steps=steps, seed=seed)
        info = attacker.train_ldm(model, patches, cfg, seed=seed, progress=progress is not None)
        _say(progress, f"attacker LDM: autoencoder {info['autoencoder']['steps']} steps, latent DDPM "
                       f"{info['ddpm']['steps']} steps in {info['seconds']:.0f} s -> {model}")
    else:
        base = configs.override(configs.load(config), {"modality": modality})
        info = attacker.train_ddpm(model, patches, attacker.ddpm_config(base, steps, seed=seed + 1),
                                   progress=progress is not None)
        _say(progress, f"attacker DDPM: {info['steps']} steps, loss {info['first_loss']} -> {info['final_loss']}")
    return {"method": method, "attacker_data": attacker_data, "patients": patients, "n_patches": len(patches),
            "size": size, "info": info}


def load_attacker(method: str, attack: str, model: str | os.PathLike, *, preset: str = repaint.DEFAULT_PRESET,
                  sampler: Optional[str] = None, steps: Optional[int] = None, jump_length: Optional[int] = None,
                  resamplings: Optional[int] = None, strength: float = 0.15) -> pipeline.Attacker:
    """The attacker of ``method`` from its model folder (a DDPM workdir for repaint/sdedit, a cGAN or LDM
    folder), sampling with ``preset`` ('full': as published; 'fast': the demo's budget; LDM: its own
    full-strength sampler) and any of ``sampler``/``steps``/``jump_length``/``resamplings`` overriding
    one setting. ``strength``: SDEdit (and LDM injection) t* as a fraction of the schedule. Its
    modality is ``attacker.cfg.modality``."""
    a = check_choice(method, attack)
    if method == "cgan":
        params, cfg = cgan.load(model)
        return pipeline.Attacker("cgan", params, cfg)
    if method == "ldm":
        params, cfg = ldm.load(model)
        base = ldm.LDM_REMOVAL if a == "removal" else ldm.LDM_INJECTION
    else:
        params, cfg = load_params(str(model))
        base = repaint.preset_options(preset, method)
    given = {"sampler": sampler, "steps": steps, "jump_length": jump_length, "resamplings": resamplings}
    opts = dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})
    return pipeline.Attacker(method, params, cfg, options=opts, strength=strength)


@dataclasses.dataclass
class AttackRun:
    """What :func:`attack` did: ``rows`` written to ``csv_path`` (``n`` fakes of ``dataset``, e.g.
    'SDEdit-CT-Inject', and ``n`` real sites), the input files left out (``skipped``, listed in
    ``skipped_path``) and the attacker's training (:func:`train_attacker`; None when loaded)."""

    csv_path: Path
    rows: int
    n: int
    method: str
    dataset: str
    modality: str
    attack: str
    skipped: List[Any]
    skipped_path: Optional[str]
    training: Optional[Dict[str, Any]]


def attack(method: str, attack: str, input: str | os.PathLike, model: str | os.PathLike, out: str | os.PathLike, *,
           n: int = 50, seed: int = 0, modality: Optional[str] = None, max_slices: Optional[int] = None,
           train: bool = False, attacker_data: str = "unseen", attacker_steps: int = 600, attacker_patches: int = 2048,
           config: str = "demo", size: int = 32, preset: str = repaint.DEFAULT_PRESET, sampler: Optional[str] = None,
           steps: Optional[int] = None, jump_length: Optional[int] = None, resamplings: Optional[int] = None,
           strength: float = 0.15, batch_size: int = 64, strict: bool = True,
           before_work: Optional[Callable[[str], None]] = None, progress: Progress = None) -> AttackRun:
    """Attacks ``n`` sites of the slices ``input`` with ``method`` ('repaint' | 'sdedit' | 'cgan' | 'ldm')
    and the model in ``model``, picks ``n`` real sites, and writes both in the authors' test-set layout
    under ``out`` (``btd-jax attack``), read unchanged by ``btd-jax evaluate --dataset out``.

    ``input``: a DICOM file/folder, slice store or .npy slices (HU for CT, raw/[0, 1] for MRI; at most
    ``max_slices``), or 'demo' (the demo's slices, attacked in their held-out columns). ``attack``:
    'injection' | 'removal'. ``modality``: CT or MRI (default: the model's; 'CT' for one trained
    here). With ``train`` the model is first trained in ``model`` (:func:`train_attacker` with
    ``attacker_data``, ``attacker_steps``, ``attacker_patches``, ``config``, ``size``). Sampling:
    :func:`load_attacker` (``preset``, ``sampler``, ``steps``, ``jump_length``, ``resamplings``,
    ``strength``). ``seed``: sites, radii and the attack's key; ``batch_size``: patches per compiled
    call. ``strict=False`` skips unreadable DICOM files of ``input`` and ``attacker_data`` and lists
    them in ``<Method>-<CT|MRI>-<Inject|Remove>.skipped.csv`` next to the CSV (:func:`output_files`).

    Rows this method wrote in the CSV before are replaced, rows of other methods kept. ``before_work``
    is called with the set's modality once it is known, before anything is trained or written (the
    command checks its output plan there). ``progress`` receives the training's lines.
    """
    a = check_choice(method, attack)
    skipped: Optional[list] = None if strict else []
    training = None
    if train:
        modality = modality or "CT"  # the trained model has this modality
        if before_work is not None:
            before_work(modality)
        training = train_attacker(method, model, modality=modality, attacker_data=attacker_data,
                                  steps=attacker_steps, n_patches=attacker_patches, config=config, size=size,
                                  seed=seed, skipped=skipped, progress=progress)
    atk = load_attacker(method, a, model, preset=preset, sampler=sampler, steps=steps, jump_length=jump_length,
                        resamplings=resamplings, strength=strength)
    if not train:
        modality = modality or atk.cfg.modality
        if before_work is not None:
            before_work(modality)
    sources = inputs.load_sources(input, modality, max_slices, skipped=skipped)
    items, masks = pipeline.attack_sources(atk, a, sources, n, seed=seed, modality=modality,
                                           min_body=attacker.min_body(modality), batch_size=batch_size)
    name = pipeline.METHODS[method]
    csv_path = pipeline.write_layout(out, modality, a, items, masks, name)
    files = output_files(out, method, modality, a)
    listed = write_skipped(str(files.skipped), skipped or [])
    return AttackRun(csv_path, len(items), n, name, pipeline.dataset_name(method, modality, a), modality, a,
                     list(skipped or []), listed, training)

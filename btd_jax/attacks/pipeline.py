"""Generative attacks on whole slices, written in the authors' test-set layout.

    sources = inputs.as_sources(hu_slices, "CT", names, scanners, patients, frames)
    atk = pipeline.Attacker("sdedit", params=ddpm_params, cfg=ddpm_cfg)
    items, masks = pipeline.attack_sources(atk, "injection", sources, n=50, seed=0)
    csv_path = pipeline.write_layout("out_root", "CT", "injection", items, masks, method="SDEdit")

``n`` sites get the attack (fake rows) and ``n`` other sites stay untouched (real rows), drawn alike
(removal sites in proportion to the local structure: something to remove). Each row stores a
(2P)^2 context crop around its site (CT: Hounsfield units, ``.npy``; MRI: [0, 1], 16-bit PNG), the
pixels the attack rewrote, and its site in the source slice. Real and fake rows of one run carry the
same ``<Method>-<CT|MRI>-<Inject|Remove>`` indicator, so ``btd-jax evaluate`` pairs them.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
from scipy import ndimage as ndi

from btd_jax.attacks import cgan, demo_data, ldm, repaint, sdedit, tamper
from btd_jax.configs import Config
from btd_jax.data import preprocess
from btd_jax.data.errors import DataError
from btd_jax.data.testsets import layout
from btd_jax.data.validate import read_csv
from btd_jax.runtime.atomic import atomic_open, save_npy

__all__ = ["METHODS", "COMBINATIONS", "REMOVE_RADIUS_PX", "Attacker", "dataset_name", "choose_sites",
           "attack_patches", "attack_sources", "write_layout"]

METHODS = {"repaint": "RePaint", "sdedit": "SDEdit", "cgan": "cGAN", "ldm": "LDM"}
COMBINATIONS = (("repaint", "removal"), ("sdedit", "injection"), ("cgan", "injection"), ("cgan", "removal"),
                ("ldm", "injection"), ("ldm", "removal"))
# Removed structures: the radii of the demo's hand-made removals.
REMOVE_RADIUS_PX: Tuple[float, float] = (4.0, 10.0)
_HU_SCALE = preprocess.CT_HI - preprocess.CT_LO


def _attack(attack: str) -> str:
    a = {"inject": "injection", "injection": "injection", "remove": "removal", "removal": "removal"}.get(
        str(attack).lower())
    if a is None:
        raise DataError(f"unknown attack {attack!r}; expected 'injection' or 'removal'")
    return a


def dataset_name(method: str, modality: str, attack: str) -> str:
    """('sdedit', 'CT', 'injection') -> 'SDEdit-CT-Inject'."""
    mod = "CT" if preprocess.canonical_modality(modality) == "CT" else "MRI"
    return f"{METHODS[method]}-{mod}-{'Inject' if _attack(attack) == 'injection' else 'Remove'}"


@dataclasses.dataclass
class Attacker:
    """A method with its model: ``cfg`` is the DDPM's Config (repaint, sdedit), a GanConfig (cgan) or an
    LdmConfig (ldm, whose ``params`` are ``{'autoencoder', 'ddpm'}``).

    ``options`` None: the published sampler (:data:`repaint.PRESETS` ``"full"``)."""

    method: str
    params: Any
    cfg: Any
    options: Optional[repaint.RePaintOptions] = None
    strength: float = 0.15  # SDEdit (and LDM injection) t* / (T - 1)
    dilation: int = 2       # SDEdit, LDM injection: pixels generated around the painted nodule

    def __post_init__(self):
        if self.method not in METHODS:
            raise DataError(f"unknown attack method {self.method!r}; expected one of {', '.join(METHODS)}")
        kinds = {"cgan": (cgan.GanConfig, "cGAN"), "ldm": (ldm.LdmConfig, "LDM")}
        want, what = kinds.get(self.method, (Config, "DDPM"))
        if not isinstance(self.cfg, want):
            raise DataError(f"method {self.method!r} needs a {what} model")

    @property
    def image_size(self) -> int:
        return int(self.cfg.image_size)

    def check(self, attack: str) -> str:
        a = _attack(attack)
        if (self.method, a) not in COMBINATIONS:
            raise DataError(f"method {self.method!r} does not do {a}; valid: "
                            + ", ".join(f"{m} {x}" for m, x in COMBINATIONS))
        return a


def _structure(unit: np.ndarray, radius: int = 4) -> np.ndarray:
    """Local standard deviation of a [0, 1] image over ~radius pixels: where a structure lies."""
    m = ndi.uniform_filter(unit.astype(np.float64), 2 * radius + 1)
    m2 = ndi.uniform_filter(unit.astype(np.float64) ** 2, 2 * radius + 1)
    return np.sqrt(np.maximum(m2 - m * m, 0.0))


def choose_sites(sources: Sequence[demo_data.SourceImage], n: int, size: int, rng: np.random.Generator,
                 region: str = "test", weighted: bool = False, min_body: float = 0.9) -> List[Tuple[int, int, int]]:
    """``n`` sites (source index, y, x), spread evenly over the sources whose ``region`` holds a
    whole ``size`` patch at least ``min_body`` inside the body; ``weighted``: by local structure."""
    valid = [(i, demo_data.valid_centres(s, region, size, min_body)) for i, s in enumerate(sources)]
    valid = [(i, v) for i, v in valid if v.any()]
    if not valid:
        raise DataError(f"no {size}x{size} patch fits inside any input slice's {region} region "
                        f"(with {min_body:.0%} of it inside the body); the slices are too small for this model "
                        "or mostly air")
    counts = [n // len(valid) + (k < n % len(valid)) for k in range(len(valid))]
    sites = []
    for (i, v), c in zip(valid, counts):
        if c:
            w = _structure(sources[i].unit) if weighted else None
            sites += [(i, int(y), int(x)) for y, x in demo_data.sample_centres(v, c, rng, w)]
    return sites


def _to_unit(patches: np.ndarray, ct: bool) -> np.ndarray:
    return preprocess.window_ct(patches) if ct else np.clip(patches, 0.0, 1.0).astype(np.float32)


def _from_unit(unit: np.ndarray, ct: bool) -> np.ndarray:
    return (unit * _HU_SCALE + preprocess.CT_LO).astype(np.float32) if ct else unit.astype(np.float32)


def _disc_masks(n: int, size: int, radii: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    c = size // 2
    return np.stack([tamper.nodule_alpha((size, size), c, c, r, rng, lobulation=0.1, edge=0.5) > 0.5
                     for r in radii]) if n else np.zeros((0, size, size), bool)


def attack_patches(atk: Attacker, attack: str, patches: np.ndarray, key: jax.Array, rng: np.random.Generator,
                   ct: bool = True, **kwargs) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Attack (N, P, P) patches in tamper units (HU for CT, [0, 1] for MRI) at their centres.

    Returns (tampered patches in the same units, equal to the input outside the masks; masks (N,P,P)
    bool; radii (N,); contrasts (N,), in HU for CT). Extra keywords go to the sampler/generator.
    """
    a = atk.check(attack)
    patches = np.asarray(patches, np.float32)
    n, size = len(patches), atk.image_size
    if patches.ndim != 3 or patches.shape[1:] != (size, size):
        raise DataError(f"patches: expected (N, {size}, {size}) for this {size}-pixel attacker model, got "
                        f"{patches.shape} (a model of the wrong size?)")
    unit = _to_unit(patches, ct)
    contrasts = np.zeros(n, np.float32)
    if atk.method == "cgan":
        out, masks = cgan.generate(atk.params, atk.cfg, unit, a, key, **kwargs)
        radii = np.full(n, atk.cfg.hole / 2.0, np.float32)
    elif atk.method == "repaint":
        radii = rng.uniform(REMOVE_RADIUS_PX[0], min(REMOVE_RADIUS_PX[1], (size // 2) / 1.2), n).astype(np.float32)
        masks = _disc_masks(n, size, radii, rng)
        opts = atk.options or repaint.preset_options(repaint.DEFAULT_PRESET, "repaint")
        out = repaint.inpaint(atk.params, atk.cfg, unit, masks, key, options=opts, **kwargs)
    elif atk.method == "ldm" and a == "removal":  # the disc of RePaint, in-painted in latent space
        radii = rng.uniform(REMOVE_RADIUS_PX[0], min(REMOVE_RADIUS_PX[1], (size // 2) / 1.2), n).astype(np.float32)
        out, masks = ldm.remove(atk.params, atk.cfg, unit, _disc_masks(n, size, radii, rng), key,
                                options=atk.options or ldm.LDM_REMOVAL, **kwargs)
    else:  # sdedit, ldm injection: a painted nodule finished by the model
        radii = rng.uniform(sdedit.RADIUS_PX[0], min(sdedit.RADIUS_PX[1], size / 4.0), n).astype(np.float32)
        lo, hi = sdedit.CONTRAST_HU if ct else sdedit.CONTRAST_MRI
        contrasts = rng.uniform(lo, hi, n).astype(np.float32)
        c0 = size // 2
        painted = [sdedit.paint_nodule(p, c0, c0, r, c, rng) for p, r, c in zip(patches, radii, contrasts)]
        priors = _to_unit(np.stack([p for p, _ in painted]), ct)
        nodules = np.stack([m for _, m in painted])
        if atk.method == "ldm":
            out, masks = ldm.inject(atk.params, atk.cfg, unit, priors, nodules, key, strength=atk.strength,
                                    dilation=atk.dilation, options=atk.options or ldm.LDM_INJECTION, **kwargs)
        else:
            out, masks = sdedit.sdedit(atk.params, atk.cfg, unit, priors, nodules, key, strength=atk.strength,
                                       dilation=atk.dilation, options=atk.options, **kwargs)
    tampered = np.where(masks, _from_unit(out, ct), patches)
    return tampered.astype(np.float32), masks, radii, contrasts


def _crop(img: np.ndarray, y: int, x: int, side: int) -> Tuple[np.ndarray, int, int]:
    """side x side crop around (y, x) shifted to lie inside, and the centre in crop coordinates."""
    h, w = img.shape
    y0, x0 = int(np.clip(y - side // 2, 0, max(h - side, 0))), int(np.clip(x - side // 2, 0, max(w - side, 0)))
    return img[y0:y0 + side, x0:x0 + side], y - y0, x - x0


def attack_sources(atk: Attacker, attack: str, sources: Sequence[demo_data.SourceImage], n: int, seed: int = 0,
                   modality: str = "CT", region: str = "test", min_body: float = 0.9,
                   **kwargs) -> Tuple[List[Dict], List[np.ndarray]]:
    """Run ``atk`` at ``n`` sites of ``sources`` (images in HU for CT, [0, 1] for MRI) and pick ``n``
    real sites: (items, masks) for :func:`write_layout`. Deterministic for ``seed`` (sites, radii
    and the attack's key)."""
    a = atk.check(attack)
    if n < 1:
        raise DataError(f"n must be >= 1, got {n}")
    size = atk.image_size
    ct = preprocess.canonical_modality(modality) == "CT"
    rng = np.random.default_rng(seed)
    weighted = a == "removal"
    fake_sites = choose_sites(sources, n, size, rng, region, weighted, min_body)
    real_sites = choose_sites(sources, n, size, rng, region, weighted, min_body)
    patches = np.stack([sources[i].image[y - size // 2:y - size // 2 + size, x - size // 2:x - size // 2 + size]
                        for i, y, x in fake_sites])
    tampered, masks, radii, contrasts = attack_patches(atk, a, patches, jax.random.key(seed), rng, ct, **kwargs)
    name = METHODS[atk.method]
    real_type, fake_type = ("TM", "FM") if a == "injection" else ("TB", "FB")
    items, crop_masks = [], []
    for k, (fake, (i, y, x)) in enumerate([(True, s) for s in fake_sites] + [(False, s) for s in real_sites]):
        src = sources[i]
        img = src.image.copy()
        full_mask = np.zeros(img.shape, bool)
        if fake:
            sl = (slice(y - size // 2, y - size // 2 + size), slice(x - size // 2, x - size // 2 + size))
            img[sl], full_mask[sl] = tampered[k], masks[k]
        crop, cy, cx = _crop(img, y, x, 2 * size)
        # the attack is in the name: MRI keeps both attacks' images in one folder
        kind = f"{'inject' if a == 'injection' else 'remove'}_{'fake' if fake else 'real'}"
        tag = f"{name}_{kind}_{src.name}_f{src.frame}_{k:05d}"
        items.append({"image": crop, "x": cx, "y": cy, "type": fake_type if fake else real_type,
                      "methods": [name], "name": tag, "scanner": src.scanner, "patient": src.patient,
                      "source": src.name, "frame": src.frame, "src_y": y, "src_x": x,
                      "radius": round(float(radii[k]), 2) if fake else 0.0,
                      "contrast": round(float(contrasts[k]), 2) if fake else 0.0, "mask": f"images/{tag}_mask.npy"})
        crop_masks.append(_crop(full_mask, y, x, 2 * size)[0])
    return items, crop_masks


def _read_rows(csv_path: Path) -> Tuple[List[str], List[Dict[str, str]]]:
    return read_csv(csv_path, strip=False)


def write_layout(root: str | Path, modality: str, attack: str, items: List[Dict], masks: Sequence[np.ndarray],
                 method: str) -> Path:
    """Write ``items`` in the authors' layout under ``root`` and return the CSV path.

    Rows already in that CSV are kept (another method's run adds its own indicator column); rows of
    an earlier run of the same method are replaced. ``method`` is the indicator name, e.g. 'SDEdit'.
    """
    mod = "CT" if preprocess.canonical_modality(modality) == "CT" else "MRI"
    csv_path = layout.testset_csv_path(root, mod, _attack(attack))
    old_header, old_rows = _read_rows(csv_path) if csv_path.is_file() else ([], [])
    new_path = layout.write_testset(root, mod, _attack(attack), items, methods=[method],
                                     image_format="npy" if mod == "CT" else "png")
    for it, m in zip(items, masks):
        save_npy(new_path.parent / it["mask"], np.asarray(m, bool))
    own = f"{method}-{mod}-{'Inject' if _attack(attack) == 'injection' else 'Remove'}"
    keep = [r for r in old_rows if str(r.get(own, "0")).strip() not in ("1", "1.0")]
    if not keep:
        return new_path
    header, rows = _read_rows(new_path)
    fields = ["path", "x", "y", "type"]
    indicators = [c for c in dict.fromkeys(old_header + header) if c.count("-") >= 2 and c not in fields]
    extras = [c for c in dict.fromkeys(old_header + header) if c not in fields and c not in indicators]
    merged = [{**{c: "0" for c in indicators}, **{c: "" for c in extras}, **r} for r in keep + rows]
    with atomic_open(new_path, newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields + indicators + extras)
        w.writeheader()
        w.writerows(merged)
    return new_path

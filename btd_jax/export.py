"""The d = 1 BTD scorer as a serialized StableHLO artifact (``jax.export``), servable without btd_jax.

The exported function takes a batch of patches of any size ``b`` (a symbolic dimension) and returns
the BTD scores and residual maps; the trained parameters are constants inside it. Serving needs
only ``jax`` (and numpy)::

    export.export_scorer(scorer, "scorer/")                 # scorer.jaxexport + scorer.json (+ calibration)
    exp = jax.export.deserialize(open("scorer/scorer.jaxexport", "rb").read())
    scores, maps = exp.call(images_bhwc)                   # float32 [0, 1], (b, H, W, C)

    s = export.load("scorer/")                             # the same with the manifest and calibration
    s.score(images)                                        # (N,) numpy; (N, H, W) or (N, H, W, C)

The function does not check its input: values must already be in [0, 1] (see btd_jax.score's
validation). ``d = 1`` at t = 0 is deterministic, so the artifact needs no random key.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from btd_jax import calibration, configs, diffusion
from btd_jax.data.errors import DataError
from btd_jax.models.unet import Unet
from btd_jax.runtime.atomic import write_bytes, write_json
from btd_jax.runtime.errors import require
from btd_jax.score import parse_reduction, reduce_residual
from btd_jax.scoring.scorer import Scorer, as_scorer

__all__ = ["ExportedScorer", "export_scorer", "load", "scorer_function", "calibration_files", "ARTIFACT",
           "MANIFEST", "DEFAULT_PLATFORMS", "PLATFORMS"]

ARTIFACT = "scorer.jaxexport"
MANIFEST = "scorer.json"
DEFAULT_PLATFORMS = ("cpu", "cuda")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what jax.export lowers for
_CALIBRATIONS = ("calibration.json", "screen_calibration.json")


def scorer_function(params: Any, cfg: configs.Config, center: Optional[int], reduction: str):
    """(b, H, W, C) float32 in [0, 1] -> (scores (b,), maps (b, H, W)): d = 1 BTD with ``params`` baked in."""
    model = Unet.from_config(cfg.model)
    sched = diffusion.make_schedule(cfg.diffusion)
    clip_denoised = bool(cfg.score.clip_denoised)

    def fn(x01):
        x = diffusion.normalize(x01) if cfg.diffusion.auto_normalize else x01
        x_d = diffusion.p_sample(sched, lambda a, t: model.apply({"params": params}, a, t), x, 0, None,
                                 clip_denoised=clip_denoised)[0]
        maps = jnp.mean(jnp.square(x - x_d.astype(jnp.float32)), axis=-1)
        return reduce_residual(maps, center, reduction), maps

    return fn


def export_scorer(scorer: Union[Scorer, str, "os.PathLike[str]"], out_dir: str, center: Optional[int] = None,
                  reduction: Optional[str] = None, platforms: Optional[Sequence[str]] = DEFAULT_PLATFORMS,
                  workdir: Optional[str] = None) -> Dict[str, Any]:
    """Exports ``scorer`` (a :class:`btd_jax.score.Scorer`, or a workdir to load one from) to ``out_dir``
    (``btd-jax export``).

    ``center``/``reduction`` default to the config's ``score`` settings (``center=0``: whole patch).
    ``platforms`` None = the current backend (else names from :data:`PLATFORMS`). Calibration files
    found in ``workdir`` (default ``scorer.workdir``) are copied beside the artifact. Every file is
    written atomically, after the artifact is serialized. Returns the manifest.
    """
    require("flatbuffers", "exporting a scorer")  # jax.export serializes with it: fail before lowering
    scorer = as_scorer(scorer)
    unknown = [p for p in (platforms or ()) if p not in PLATFORMS]
    if unknown:
        raise DataError(f"unknown platform(s) {', '.join(map(repr, unknown))}; expected some of {', '.join(PLATFORMS)}")
    cfg = scorer.cfg
    center = cfg.score.center if center is None else (center or None)
    reduction = cfg.score.reduction if reduction is None else reduction
    parse_reduction(reduction)
    if center is not None and not 1 <= center <= cfg.image_size:
        raise ValueError(f"center window {center} must be between 1 and the patch size {cfg.image_size}")
    if cfg.score.steps != 1 or cfg.score.start_t != 0:
        raise ValueError("only the deterministic d = 1 scorer (score.steps=1, start_t=0) is exported")
    params = jax.device_get(scorer.params)  # host copy: constants must not carry the scorer's mesh sharding
    fn = scorer_function(params, cfg, center, reduction)
    size, ch = cfg.image_size, cfg.model.channels
    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"b, {size}, {size}, {ch}"), jnp.float32)
    plats = tuple(platforms) if platforms else (jax.default_backend(),)
    exp = jax.export.export(jax.jit(fn), platforms=plats)(spec)
    write_bytes(os.path.join(out_dir, ARTIFACT), bytes(exp.serialize()))
    workdir = workdir or getattr(scorer, "workdir", None)
    copied = []
    for name in calibration_files(workdir):
        with open(os.path.join(workdir, name), "rb") as f:
            write_bytes(os.path.join(out_dir, name), f.read())
        copied.append(name)
    manifest = {"format": "jax.export", "artifact": ARTIFACT, "jax": jax.__version__, "platforms": list(plats),
                "input": {"shape": ["b", size, size, ch], "dtype": "float32", "range": [0.0, 1.0]},
                "outputs": {"scores": ["b"], "maps": ["b", size, size]},
                "steps": 1, "center": center, "reduction": reduction, "calibrations": copied,
                "config": configs.to_dict(cfg)}
    write_json(os.path.join(out_dir, MANIFEST), manifest, indent=1)
    return manifest


def calibration_files(workdir: Optional[str]) -> List[str]:
    """The calibration files of ``workdir`` that :func:`export_scorer` copies beside the artifact."""
    return [n for n in _CALIBRATIONS if workdir and os.path.exists(os.path.join(workdir, n))]


@dataclasses.dataclass
class ExportedScorer:
    """A deserialized artifact: ``score``/``score_and_maps`` on numpy batches, plus its calibration."""

    exported: Any
    manifest: Dict[str, Any]
    calibration: Optional[calibration.Calibration] = None

    def _prepare(self, images: Any) -> np.ndarray:
        x = np.asarray(images, np.float32)
        _, size, _, ch = [None] + self.manifest["input"]["shape"][1:]
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4 or x.shape[1:] != (size, size, ch) or x.shape[0] == 0:
            raise DataError(f"images: expected (N, {size}, {size}[, {ch}]) patches, got shape {np.shape(images)}")
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise DataError("images: values must be finite and in [0, 1]")
        return x

    def score_and_maps(self, images: Any) -> Tuple[np.ndarray, np.ndarray]:
        s, m = self.exported.call(self._prepare(images))
        return np.asarray(s), np.asarray(m)

    def score(self, images: Any) -> np.ndarray:
        return self.score_and_maps(images)[0]


def load(out_dir: str) -> ExportedScorer:
    """Reads what :func:`export_scorer` wrote (needs jax, not the model code)."""
    path = os.path.join(out_dir, ARTIFACT)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no exported scorer (write one with btd-jax export)")
    with open(os.path.join(out_dir, MANIFEST)) as f:
        manifest = json.load(f)
    with open(path, "rb") as f:
        try:
            exp = jax.export.deserialize(bytearray(f.read()))
        except Exception as e:  # damaged or from an incompatible jax
            raise DataError(f"{path}: not a readable jax.export artifact ({type(e).__name__}: {e})") from None
    cal = None
    if "calibration.json" in manifest.get("calibrations", []):
        cal = calibration.Calibration.load(os.path.join(out_dir, "calibration.json"))
    return ExportedScorer(exp, manifest, cal)

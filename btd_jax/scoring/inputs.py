"""Scoring inputs on disk end to end (``btd-jax score``): read patches, score them, write the scores CSV
(and optionally residual maps and PNG overlays).

    done = scoring.score_input("runs/ct", "patches.npy", "scores.csv", center=32)
    done = scoring.score_input("runs/ct", "TESTSET_ROOT", "s.csv", modality="CT", attack="injection")
    done = scoring.score_input("runs/ct", "dicom/", "s.csv", locations="points.csv", maps="maps.npz")

Any input format gives patches (:func:`btd_jax.data.readers.read_patches`): patch arrays as they are,
a test set with its labels, scans as ``n_per_slice`` random patches per slice, or with ``locations``
the patches around listed points. The CSV (:func:`btd_jax.eval_io.write_scores_csv`) has ``id,
score``, ``label`` for test sets and every metadata column of the input.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Union

import jax
import numpy as np
from tqdm import tqdm

from btd_jax import plots
from btd_jax.configs import ScoreConfig
from btd_jax.data import readers, validate
from btd_jax.eval_io import write_scores_csv
from btd_jax.runtime.atomic import numpy_name, save_npz
from btd_jax.runtime.errors import NonFiniteError
from btd_jax.runtime.outputs import skipped_path, write_skipped
from btd_jax.scoring import variants
from btd_jax.scoring.scorer import Scorer, as_scorer

__all__ = ["Scored", "score_input", "reference_path"]


@dataclasses.dataclass
class Scored:
    """What :func:`score_input` did: ``scores`` (N,), ``labels`` (N,) for test sets (else None), the
    metadata ``columns``, residual ``maps`` (N, H, W) when asked, the settings used, the items left
    out (``strict=False``), the fitted reference (``fit_reference``), the paths written and how many
    PNG overlays."""

    scores: np.ndarray
    labels: Optional[np.ndarray]
    columns: Dict[str, np.ndarray]
    maps: Optional[np.ndarray]
    settings: ScoreConfig
    skipped: List[Any]
    reference: Any = None
    paths: Dict[str, str] = dataclasses.field(default_factory=dict)
    overlays: int = 0


def _fit_reference(scorer: Scorer, patches: np.ndarray, variant: str, s: ScoreConfig, key: Any,
                   start_ts: Optional[Sequence[int]], labels: Optional[np.ndarray],
                   options: Optional[Dict[str, Any]] = None) -> Any:
    """The reference of ``variant`` (btd and multi_t: the two_sided reference over their energies)."""
    target = variants.reference_target(variant).name
    options = dict(options or {})
    if target == "two_sided" and variant != "two_sided":
        options["base"] = variant
    return variants.fit_variant_reference(scorer, patches, target, s, key=key, start_ts=start_ts, labels=labels,
                                          **options)


def reference_path(workdir: str, variant: str, path: Optional[str] = None) -> str:
    """Where ``score_input(fit_reference=...)`` saves ``variant``'s reference: ``path``, or the
    reference's own file beside the checkpoints of ``workdir`` (``score_reference.json``,
    ``oneclass_reference.json``, ...) when ``path`` is empty or None."""
    return path or os.path.join(os.fspath(workdir), variants.reference_target(variant).reference_file)


def score_input(model: Union[Scorer, str, "os.PathLike[str]"], path: str, out: Optional[str] = None, *,
                locations: Optional[str] = None, steps: Optional[int] = None, center: Optional[int] = None,
                reduction: Optional[str] = None, sampler: Optional[str] = None, start_t: Optional[int] = None,
                batch_size: Optional[int] = None, clip_inputs: Optional[bool] = None, variant: str = "btd",
                start_ts: Optional[Sequence[int]] = None, reference: Optional[str] = None,
                fit_reference: Union[None, bool, str] = None, fit_options: Optional[Dict[str, Any]] = None,
                maps: Optional[str] = None, png: Optional[str] = None,
                png_max: int = 32, seed: int = 0, modality: Optional[str] = None, attack: Optional[str] = None,
                tamper: Optional[str] = None, n_per_slice: int = 4, strict: bool = True,
                fmt: Union[str, readers.Format] = "auto", progress: bool = True) -> Scored:
    """BTD scores of the patches of ``path`` with the model ``model`` (a :class:`Scorer` or a workdir).

    Writes ``out`` (the scores CSV) and ``<out>.skipped.csv`` (items left out with ``strict=False``)
    when ``out`` is given, ``maps`` (residual maps + ids + scores, ``.npz``; btd only) and ``png``
    (a folder of at most ``png_max`` overlays, highest scores first).

    Settings left None come from the config's ``score`` section: ``steps`` (d), ``center``,
    ``reduction``, ``sampler``, ``start_t``, ``batch_size``, ``clip_inputs``. ``variant``: a name of
    :mod:`btd_jax.scoring.variants` (``start_ts`` for multi_t, ``reference`` a reference JSON);
    ``fit_reference``: treat the input as real validation patches (a test set's fakes are refused),
    fit the reference of ``variant`` (btd and multi_t: the two_sided reference over their energies)
    and save it there (True or '': beside the checkpoints, :func:`reference_path`) before scoring, with
    the variant's fitting options ``fit_options`` (e.g. oneclass ``{"components": 1}``).
    ``seed``: the noise key (d > 1) and random patch locations. ``modality``/``attack``/``tamper``: which
    test set or scans; ``n_per_slice``: random patches per slice of scans; ``locations``: a CSV of
    points (``path, x, y[, frame|slice]``, paths relative to it or to ``path``). Scores that are NaN/inf
    raise :class:`~btd_jax.runtime.NonFiniteError` before anything is written.
    """
    scorer = as_scorer(model)
    cfg = scorer.cfg
    if locations:
        skipped: List[Any] = []
        ps = readers.located_patches(locations, path, cfg.image_size, modality, None if strict else skipped, fmt=fmt)
    else:
        ps = readers.read_patches(path, fmt=fmt, modality=modality, attack=attack, tamper=tamper,
                                  size=cfg.image_size, n_per_slice=n_per_slice, seed=seed, strict=strict)
        skipped = list(ps.skipped)
    labels = getattr(ps, "labels", None) if not locations else None
    patches = ps.patches
    if out:
        write_skipped(skipped_path(out), skipped)
    validate.check_shape(patches, str(path), size=cfg.image_size, channels=cfg.model.channels,
                         owner=f"the model ({cfg.name})")  # before any work, not after the first chunk
    given = dict(steps=steps, center=center, reduction=reduction, sampler=sampler, start_t=start_t,
                 batch_size=batch_size, clip_inputs=clip_inputs or None)
    kw: Dict[str, Any] = {k: v for k, v in given.items() if v is not None}
    s = scorer.settings(**kw)
    key = jax.random.key(seed)
    if s.steps > 1 or s.start_t > 0:
        kw["key"] = key
    want_maps = bool(maps or png)
    ref = None
    fitting = fit_reference is not None and fit_reference is not False
    if variant != "btd" or fitting:
        if want_maps:
            raise ValueError("residual maps and PNGs are only available with variant 'btd'")
        kw.update(key=key, variant=variant, start_ts=start_ts, reference=reference)
        if fitting:
            if not isinstance(fit_reference, str) and scorer.workdir is None:
                raise ValueError("fit_reference=True saves beside the checkpoints: load the model from a workdir "
                                 "or give a path")
            ref = kw["reference"] = _fit_reference(scorer, patches, variant, s, key, start_ts, labels, fit_options)
            saved = ref.save(reference_path(scorer.workdir or "", variant,
                                            fit_reference if isinstance(fit_reference, str) else None))
        else:  # a bad or foreign reference is refused before any patch is scored
            kw["reference"] = scorer.reference(variant, reference)
    with tqdm(total=len(patches), desc="scoring", unit="patch", file=sys.stderr, dynamic_ncols=True,
              disable=not progress) as bar:
        scores, res_maps = scorer.run(patches, maps=want_maps, progress=bar.update, **kw)
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        raise NonFiniteError(f"{len(bad)} of {len(scores)} scores are NaN/inf (first: patch {bad[0]}); nothing "
                             f"written to {out}. The model's weights or these inputs are unusable")
    done = Scored(scores, labels, dict(ps.columns), res_maps, s, skipped, ref)
    if ref is not None:
        done.paths["reference"] = saved
    if out:
        done.paths["csv"] = write_scores_csv(out, labels, scores, ps.columns)
    ids = np.arange(len(scores))
    if maps:
        extra = {"labels": labels} if labels is not None else {}
        done.paths["maps"] = save_npz(numpy_name(maps, ".npz"), maps=res_maps, ids=ids, scores=scores, **extra)
    if png:
        done.overlays = plots.write_overlays(png, np.asarray(patches), res_maps, scores, ids, png_max)
        done.paths["png"] = png
    return done

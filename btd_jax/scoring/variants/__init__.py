"""Score variants beside the paper's BTD score, one registry entry each (:mod:`.registry`).

* ``btd`` -- the paper: the residual of d reverse steps, pooled by any reduction of
  :mod:`btd_jax.configs.reductions` ('mean', 'max', 'percentile:Q').
* ``multi_t`` -- the residual map averaged over several small start times, then pooled.
* ``two_sided`` -- ``|log E - mu| / sigma`` against real validation patches: flags too-smooth
  content as well as the paper's too-large residuals.

To add one: a module here that calls :func:`register` with a :class:`Variant` (and fits and decodes a
reference if it needs real statistics), imported below, plus its test. A fitted reference is only
valid for the model and the settings it was fitted with; both are stored with it
(``score_reference.json`` beside the checkpoints by default, :mod:`.reference`)::

    ref = fit_scorer_reference(scorer, val_real, center=16)          # two_sided over btd energies
    ref.save(workdir)
    s = scorer.score(test, variant="two_sided")                        # finds the workdir's reference
    s = variant_scores(scorer, test, variant="multi_t", start_ts=(0, 1, 2), key=jax.random.key(0))
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence, Union

import numpy as np

from btd_jax.configs import ScoreConfig
from btd_jax.data.errors import DataError
from btd_jax.scoring.stream import SCORE_FIELDS
from btd_jax.scoring.variants import btd, multi_t, oneclass, twosided  # noqa: F401  (each registers its entry)
from btd_jax.scoring.variants import reference as reference_file
from btd_jax.scoring.variants.maps import (DEFAULT_START_TS, as_model, average_maps, energy_maps, multi_t_maps,
                                           pool_maps)
from btd_jax.scoring.variants.reference import REFERENCE_FILE, check_model, model_fingerprint, settings_of
from btd_jax.scoring.variants.registry import VARIANTS, Call, Variant, get, markdown_table, names, register
from btd_jax.scoring.variants.twosided import Reference, fit_reference, two_sided

__all__ = [
    "VARIANTS", "Variant", "Call", "register", "get", "names", "markdown_table", "REFERENCE_FILE",
    "DEFAULT_START_TS", "pool_maps", "average_maps", "multi_t_maps", "energy_maps", "Reference", "fit_reference",
    "two_sided", "load_reference", "fit_variant_reference", "variant_scores", "scorer_scores",
    "fit_scorer_reference", "model_fingerprint", "resolve_reference", "reference_target", "settings_of",
]

def load_reference(path: str) -> Any:
    """Any variant's reference from its JSON file (or a folder holding ``score_reference.json``)."""
    return reference_file.read(path, {v.name: v.decode for v in VARIANTS.values() if v.decode is not None})


def _settings(model: Any, **given: Any) -> ScoreConfig:
    """``model.settings(**given)`` for a Scorer, else a ScoreConfig of ``given``."""
    given = {k: v for k, v in given.items() if k in SCORE_FIELDS}
    resolve = getattr(model, "settings", None)
    return resolve(**given) if resolve is not None else ScoreConfig(**given)


def resolve_reference(variant: Union[str, Variant], reference: Any, model: Any) -> Any:
    """The decoded reference ``variant`` needs (None when it needs none): ``reference`` as given (a
    fitted reference or its JSON path) or, when None, the file in the model's workdir; a reference of
    another variant or fitted with another model is refused."""
    variant = get(variant) if isinstance(variant, str) else variant
    if not variant.needs_reference:
        return None
    if reference is None:
        workdir = getattr(model, "workdir", None)
        if workdir is None:
            raise ValueError(f"variant {variant.name!r} needs reference= (a fitted reference or its JSON path), or "
                             f"a Scorer loaded from a workdir holding {variant.reference_file}")
        reference = os.path.join(workdir, variant.reference_file)
    if isinstance(reference, (str, os.PathLike)):
        reference = load_reference(os.fspath(reference))
    if getattr(reference, "variant", variant.name) != variant.name:
        raise ValueError(f"variant {variant.name!r} cannot use a {reference.variant!r} reference")
    check_model(reference, model)
    return reference


def variant_scores(model, images, cfg=None, variant: str = "btd", pool: str = "mean", center: Optional[int] = None,
                   start_ts: Optional[Sequence[int]] = None, reference: Any = None, key=None, steps: int = 1,
                   start_t: int = 0, batch_size: int = 256, **kw) -> np.ndarray:
    """(N,) float64 scores of ``images`` for one variant; higher = more likely fake.

    ``model`` is a Scorer (anything with ``residual_map``) or params with their ``cfg``. The settings
    are ``pool`` (the reduction), ``center``, ``steps``, ``start_t``, ``batch_size`` and ScoreConfig
    names in ``kw`` (``sampler``, ``clip_denoised``, ...); ``kw`` may also hold ``progress``. A
    variant with a reference scores with the reference's own settings.
    """
    v = get(variant)
    progress = kw.pop("progress", None)
    m = as_model(model, cfg)
    unknown = sorted(set(kw) - set(SCORE_FIELDS))
    if unknown:
        raise TypeError(f"unknown scoring option(s) {unknown}")
    s = ScoreConfig(steps=steps, center=center, reduction=pool, start_t=start_t, batch_size=batch_size, **kw)
    if v.needs_reference and reference is None:
        raise ValueError(f"variant {variant!r} needs a reference fitted on real patches (fit_reference)")
    call = Call(key=key, start_ts=None if start_ts is None else tuple(start_ts),
                reference=resolve_reference(v, reference, m), progress=progress)
    return v.score(m, images, s, call)


def scorer_scores(scorer, images, variant: str, settings: ScoreConfig, key=None,
                  start_ts: Optional[Sequence[int]] = None, reference: Any = None, progress=None) -> np.ndarray:
    """``Scorer.score(..., variant=...)``: the variant's scores (N,) float32 under the resolved ``settings``.

    ``reference`` may be a fitted reference, a JSON path, or None (the Scorer's workdir's file).
    """
    v = get(variant)
    call = Call(key=key, start_ts=None if start_ts is None else tuple(start_ts),
                reference=resolve_reference(v, reference, scorer), progress=progress)
    return np.asarray(v.score(scorer, images, settings, call), np.float32)


def reference_target(variant: str) -> Variant:
    """The variant whose reference ``variant`` is scored against: itself, or for variants without one
    (btd, multi_t) ``two_sided`` over their energies."""
    v = get(variant)
    return v if v.needs_reference else get("two_sided")


def fit_variant_reference(scorer, real_images, variant: str, settings: ScoreConfig, key=None,
                          start_ts: Optional[Sequence[int]] = None, progress=None, labels: Any = None,
                          **options: Any) -> Any:
    """Fits ``variant``'s reference on REAL patches (N, H, W[, C]) under ``settings``; ``options`` are the
    variant's fitting options (two_sided: ``base='btd' | 'multi_t'``; oneclass: ``features``, ``tails``,
    ``components``, ``null``).

    A reference is fitted on real patches only: with ``labels`` (1 = fake), any fake is refused, as is
    a variant that needs no reference."""
    v = get(variant)
    if labels is not None and np.any(np.asarray(labels) != 0):
        n = int(np.sum(np.asarray(labels) != 0))
        raise DataError(f"a {variant} reference is fitted on REAL patches only; the input holds {n} patch(es) "
                        "labelled fake")
    if not v.needs_reference:
        raise ValueError(f"variant {variant!r} needs no reference; the ones that do: "
                         f"{', '.join(n for n, x in VARIANTS.items() if x.needs_reference)}")
    call = Call(key=key, start_ts=None if start_ts is None else tuple(start_ts), progress=progress, options=options)
    return v.fit(scorer, real_images, settings, call)


def fit_scorer_reference(scorer, real_images, base: str = "btd", center: Optional[int] = None,
                         pool: str = "mean", start_ts: Optional[Sequence[int]] = None, key=None, steps: int = 1,
                         start_t: int = 0, batch_size: int = 256, **kw) -> Reference:
    """The two-sided :class:`Reference` of ``scorer`` on real validation patches (N, H, W[, C]).

    Energies are made with ``base`` ('btd' at ``start_t``, or 'multi_t' over ``start_ts``), ``steps``,
    ``center``, ``pool`` and ScoreConfig names in ``kw`` (e.g. ``sampler``); the scorer's resolved
    settings are stored with the reference, with the model's fingerprint.
    """
    progress = kw.pop("progress", None)
    s = _settings(scorer, center=center, reduction=pool, steps=int(steps), start_t=int(start_t),
                  batch_size=batch_size, **kw)
    return fit_variant_reference(scorer, real_images, "two_sided", s, key=key, start_ts=start_ts, progress=progress,
                                 base=base)

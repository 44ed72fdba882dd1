"""Window scores of a score variant in screening: exact windows from their residual maps, proposals
from the slice's proposal map.

The paper's score (variant ``btd``) is pooled on the devices and approximated by pooling the
proposal map (:func:`~btd_jax.screen.proposals.window_proxy`). Any other variant with a
``from_maps`` entry (:mod:`btd_jax.scoring.variants`) scores the same windows on the host from
their images and residual maps: the exact stage from each window's own map, the proposal stage
from the proposal map cut into the same windows. A variant with a reference screens at the
reference's scoring settings (steps, start time, sampler, windows, pooling).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from btd_jax.configs import ScoreConfig
from btd_jax.scoring import variants

__all__ = ["WindowScore", "window_score", "crops"]

_MODEL_FIELDS = ("start_t", "sampler", "clip_denoised")  # fixed by the scorer's config in screening


@dataclasses.dataclass(frozen=True)
class WindowScore:
    """A variant's window scores: ``variant``, its ``reference`` (None without one) and the
    ``settings`` its maps are made and pooled with."""

    variant: str
    reference: Any
    settings: ScoreConfig

    @property
    def on_device(self) -> bool:
        """True for the paper's score: the devices pool it, nothing is rescored on the host."""
        return self.variant == "btd"

    def exact(self, images: np.ndarray, maps: np.ndarray) -> np.ndarray:
        """(N, P, P) windows and their (N, P, P) residual maps -> (N,) float64 scores."""
        return np.asarray(variants.get(self.variant).from_maps(images, maps, self.settings, self.reference),
                          np.float64)

    def approx(self, suspicion: np.ndarray, img: np.ndarray, rows: np.ndarray, cols: np.ndarray,
               patch: int) -> np.ndarray:
        """(K,) approximate scores of the P x P windows at ``rows``/``cols`` from the (H, W) proposal map."""
        if len(rows) == 0:
            return np.zeros(0)
        return self.exact(crops(img, rows, cols, patch), crops(suspicion, rows, cols, patch))


def crops(arr: np.ndarray, rows: np.ndarray, cols: np.ndarray, p: int) -> np.ndarray:
    """(H, W) -> (K, p, p) copies of the windows with top-left ``rows``/``cols``."""
    return np.lib.stride_tricks.sliding_window_view(np.asarray(arr), (p, p))[rows, cols].copy()


def window_score(scorer: Any, variant: str, reference: Any, steps: Optional[int], center: Optional[int],
                 reduction: str) -> WindowScore:
    """The :class:`WindowScore` of ``variant`` for ``scorer``; ``steps`` None = the config's (or the
    reference's). A variant that needs several maps per window, or a reference whose settings the
    scorer's config cannot give, is refused."""
    v = variants.get(variant)
    if v.from_maps is None:
        can = ", ".join(n for n, x in variants.VARIANTS.items() if x.from_maps is not None)
        raise ValueError(f"variant {variant!r} needs several residual maps per window and cannot screen; "
                         f"variants that can: {can}")
    base = scorer.cfg.score
    s = dataclasses.replace(base, center=center, reduction=reduction, steps=int(base.steps if steps is None else steps))
    ref = variants.resolve_reference(v, reference, scorer) if v.needs_reference else None
    if ref is not None:
        used = variants.settings_of(ref, s)
        if steps is not None and used.steps != int(steps):
            raise ValueError(f"the {variant} reference was fitted with steps={used.steps}; screen with that "
                             f"(got steps={steps}) or fit a reference with these settings")
        odd = {k: (getattr(used, k), getattr(base, k)) for k in _MODEL_FIELDS if getattr(used, k) != getattr(base, k)}
        if odd:
            raise ValueError(f"the {variant} reference was fitted with "
                             + ", ".join(f"{k}={a!r}" for k, (a, _) in odd.items())
                             + ", which screening (the config's "
                             + ", ".join(f"{k}={b!r}" for k, (_, b) in odd.items()) + ") cannot give")
        s = used
    return WindowScore(variant, ref, s)

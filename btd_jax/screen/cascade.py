"""How much work screening does: the :class:`Cascade` settings (no JAX)."""

from __future__ import annotations

import dataclasses
from typing import Optional

__all__ = ["Cascade", "PROPOSALS", "SPANS"]

PROPOSALS = ("grid", "fullconv")
SPANS = ("slice", "centres")


@dataclasses.dataclass(frozen=True)
class Cascade:
    """How much work screening does. ``stride``: the exact grid; ``proposal_stride`` (grid only):
    None = the patch size (tiles: fastest); P // 2 makes the proposal map faithful to windows centred
    on each pixel (closer agreement with exhaustive search, ~4x the proposal work).
    ``proposal_center``: the central c x c of each proposal window whose residuals make the map
    (None: the score's centre window); with ``proposal_stride = proposal_center`` (e.g. 48 for
    96 px) these centres tile the slice, so every pixel is seen away from a window's border.
    ``proposal_scale``: the proposal pass sees the slice shrunk by this integer factor (area mean;
    ~scale^2 fewer windows or pixels) and its map is enlarged back: a coarser view that only has to
    point the exact stage at the right region.
    ``shortlist`` candidates per slice (None: ``per_slice``) are scored exactly, and the best
    ``per_slice`` of them get their neighbours within ``refine`` grid steps scored too: the
    approximate score only has to put the best region in the shortlist, not first. ``climb``: keep
    moving to the best neighbour (at most ``max_climb`` moves) until it is a local maximum; it only
    adds windows to those scored, so it can only raise the top finding.
    ``proposal_span`` (grid windows whose whole map counts, i.e. no ``proposal_center``):
    ``'centres'`` (default) lays the grid over the pixels that some exact window's centre covers
    (all but ``(P - centre) / 2`` rows and columns on each side), its spare pixels split evenly on
    both sides: on 512 x 512 slices with 96 px windows and centre 32, 5 x 5 tiles instead of 6 x 6,
    with the same agreement with exhaustive search (BUILD_NOTES); ``'slice'`` over the whole slice
    (the last window of a row flush with the edge).
    ``max_candidates`` caps the shortlist per volume (None: no cap, so the cost is linear in the
    number of slices and a slice's result does not depend on the others).
    ``tissue_min``: skip windows with less than this fraction of pixels above ``tissue_level``
    (default: -500 HU after CT windowing) in both passes (0 = off). The default 0.01 skips windows
    that are almost all air: it agreed with exhaustive search's best window as often as scoring
    every window did, with ~20% fewer windows (BUILD_NOTES)."""

    proposal: str = "grid"
    proposal_stride: Optional[int] = None
    proposal_center: Optional[int] = None
    proposal_scale: int = 1
    proposal_span: str = "centres"
    stride: int = 16
    per_slice: int = 2
    shortlist: Optional[int] = None
    max_candidates: Optional[int] = None
    refine: int = 1
    climb: bool = True
    max_climb: int = 8
    tissue_min: float = 0.01
    tissue_level: float = 200.0 / 2700.0

    def __post_init__(self):
        if self.proposal not in PROPOSALS:
            raise ValueError(f"proposal must be one of {PROPOSALS}, got {self.proposal!r}")
        if self.proposal_span not in SPANS:
            raise ValueError(f"proposal_span must be one of {SPANS}, got {self.proposal_span!r}")
        capped = self.max_candidates is not None
        if self.stride < 1 or self.per_slice < 1 or (capped and self.max_candidates < 1) or self.refine < 0:
            raise ValueError("stride, per_slice and max_candidates (or None) must be >= 1 and refine >= 0")
        if self.shortlist is not None and self.shortlist < self.per_slice:
            raise ValueError(f"shortlist ({self.shortlist}) must be None or >= per_slice ({self.per_slice})")
        if self.max_climb < 0:
            raise ValueError(f"max_climb must be >= 0, got {self.max_climb}")
        for name in ("proposal_stride", "proposal_center", "proposal_scale"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.tissue_min <= 1.0:
            raise ValueError(f"tissue_min must be in [0, 1], got {self.tissue_min}")

    @property
    def rounds(self) -> int:
        """Neighbourhoods scored per refined candidate at most: its own plus one per climbing move."""
        return self.max_climb + 1 if self.climb else 1

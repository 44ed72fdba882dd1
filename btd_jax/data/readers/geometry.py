"""Where voxels are: a volume's affine to patient millimetres (LPS) and its per-slice provenance.

Every reader reports geometry in one convention, so findings come out in one coordinate system
whatever the input: the affine maps voxel indices ``(col, row, slice, 1)`` to DICOM patient
coordinates ``(x, y, z, 1)`` in LPS millimetres. Per-slice affines (``(col, row, 0, 1) -> mm`` of
one slice, as a slice store's manifest keeps them) become a volume's geometry with
:func:`geometry_from_affines`, which refuses missing slices and uneven spacing.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import numpy as np

from btd_jax.data.errors import DataError

__all__ = ["Geometry", "LPS_TO_RAS", "slice_affine", "slice_step", "geometry_from_affines"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse
_SPACING_RTOL = 0.01  # relative tolerance on slice gaps (positions are written with ~0.01 mm rounding)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where voxels are. ``affine`` (4, 4): ``(col, row, slice, 1) -> (x, y, z, 1)`` in LPS mm.

    DICOM input also fills the per-slice ``sop_instance_uids``/``paths``/``frames`` and the
    study/series/frame-of-reference UIDs that derived objects must reference.
    """

    affine: np.ndarray
    sop_instance_uids: Optional[Tuple[str, ...]] = None
    paths: Optional[Tuple[str, ...]] = None
    frames: Optional[Tuple[int, ...]] = None
    study_uid: str = ""
    series_uid: str = ""
    frame_of_reference_uid: str = ""
    patient_id: str = ""
    modality: str = ""

    def to_mm(self, slice: float, row: float, col: float) -> Tuple[float, float, float]:
        """Voxel (slice, row, col) -> patient (x, y, z) in mm (LPS)."""
        x = self.affine @ np.array([col, row, slice, 1.0])
        return float(x[0]), float(x[1]), float(x[2])

    @property
    def ras_affine(self) -> np.ndarray:
        """The same affine in RAS (NIfTI's convention)."""
        return LPS_TO_RAS @ self.affine

    def describe(self, s: int) -> dict:
        """Per-slice provenance for reports: ``sop_instance_uid``, ``path``, ``frame`` (when known)."""
        out = {}
        if self.sop_instance_uids is not None:
            out["sop_instance_uid"] = self.sop_instance_uids[s]
        if self.paths is not None:
            out["path"] = self.paths[s]
        if self.frames is not None and self.frames[s]:
            out["frame"] = int(self.frames[s])
        return out


def slice_affine(volume_affine: np.ndarray, k: int) -> list[list[float]]:
    """4x4 map of ``(col, row, 0, 1)`` of slice ``k`` to mm, from a volume's ``(col, row, slice, 1)`` affine."""
    a = np.asarray(volume_affine, np.float64).copy()
    a[:3, 3] = a[:3, 3] + a[:3, 2] * k
    return np.round(a, 6).tolist()


def slice_step(positions: np.ndarray, where: str) -> np.ndarray:
    """(S, 3) sorted slice positions (mm) -> the mean step between slices; DataError on repeated
    positions, missing slices (a gap over 1.5 spacings) or uneven spacing."""
    steps = np.diff(positions, axis=0)
    gaps = np.linalg.norm(steps, axis=1)
    if (gaps < 1e-3).any():
        i = int(np.argmax(gaps < 1e-3))
        raise DataError(f"{where}: slices {i} and {i + 1} share the position {positions[i].round(3).tolist()} mm "
                        "(duplicate slice?)")
    med = float(np.median(gaps))
    if (gaps > 1.5 * med).any():
        i = int(np.argmax(gaps > 1.5 * med))
        raise DataError(f"{where}: missing slice(s): a gap of {gaps[i]:.3g} mm between slices {i} and {i + 1} "
                        f"where the series' spacing is {med:.3g} mm")
    bad = np.abs(gaps - med) > _SPACING_RTOL * med + 1e-3
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{where}: inconsistent slice spacing: {gaps[i]:.4g} mm between slices {i} and {i + 1}, "
                        f"{med:.4g} mm elsewhere (range {gaps.min():.4g}-{gaps.max():.4g} mm)")
    return steps.mean(axis=0)


def geometry_from_affines(affines: Sequence[Sequence[Sequence[float]]], where: str, **fields) -> Geometry:
    """A volume's :class:`Geometry` from its slices' ``(col, row, 0, 1) -> mm`` affines (in slice order),
    the slice axis checked by :func:`slice_step`; ``fields``: the other Geometry fields."""
    stack = [np.asarray(a, np.float64) for a in affines]
    affine = stack[0].copy()
    if len(stack) > 1:
        affine[:3, 2] = slice_step(np.stack([a[:3, 3] for a in stack]), where)
    elif not np.linalg.norm(affine[:3, 2]) > 0:
        affine[:3, 2] = np.cross(affine[:3, 0], affine[:3, 1]) / np.linalg.norm(affine[:3, 0])
    return Geometry(affine=affine, **fields)

"""Result records shared by the data loaders: patch sets, labelled test sets, skipped items."""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Skipped", "PatchSet", "TestSet"]


@dataclasses.dataclass(frozen=True)
class Skipped:
    """One item left out in lenient mode: what it was and why."""
    item: str
    reason: str


@dataclasses.dataclass
class PatchSet:
    """Patches with one metadata row each.

    patches: (N, H, W) float32 in [0, 1]; columns: name -> (N,) numpy array; skipped: lenient-mode
    omissions.
    """
    patches: np.ndarray
    columns: dict[str, np.ndarray]
    skipped: list[Skipped] = dataclasses.field(default_factory=list)

    def __len__(self) -> int:
        return int(self.patches.shape[0])


@dataclasses.dataclass
class TestSet(PatchSet):
    """A labelled evaluation set: ``labels`` (N,) int64, 0 real (TM/TB), 1 fake (FM/FB).

    ``columns`` holds every CSV column plus ``path`` (resolved), ``x``, ``y`` (int), ``type``,
    ``method`` ('real' for real rows, else the '+'-joined tamper methods whose indicator is 1,
    'unknown' without indicator columns) and ``scanner``/``patient`` when the CSV has them.
    """
    labels: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))
    modality: str = "CT"
    attack: str = "Inject"

    __test__ = False  # not a pytest test class

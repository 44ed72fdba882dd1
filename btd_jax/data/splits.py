"""Patient-level splits: seeded, stratified by scanner, independent of the order of the items."""

from __future__ import annotations

import zlib
from typing import Sequence

import numpy as np

from btd_jax.data.errors import DataError

__all__ = ["split_patients", "holdout_parts"]


def split_patients(patient_ids: Sequence, scanners: Sequence | None = None,
                   fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0) -> np.ndarray:
    """Seeded patient-level split, stratified by scanner.

    Args:
      patient_ids: (N,) patient of every item (repeats allowed: one entry per slice/patch).
      scanners: (N,) scanner of every item; a patient's scanner is its most frequent one.
      fractions: share of patients per part (default train/val/test 0.7/0.15/0.15), summing to 1.
    Returns:
      (N,) int64 part index of every item; all items of a patient get the same part. Within every
      scanner the patients are shuffled with a generator seeded by (seed, scanner) and cut by
      largest-remainder rounding, so the result depends only on the set of (patient, scanner)
      pairs and ``seed``, not on the order of the items.
    """
    pids = np.asarray([str(p) for p in patient_ids])
    if pids.size == 0:
        raise DataError("split_patients: no patients")
    scs = np.full(pids.shape, "", dtype=object) if scanners is None else \
        np.asarray([str(s) for s in scanners])
    if scs.shape != pids.shape:
        raise DataError(f"split_patients: {pids.size} patient ids but {scs.size} scanners")
    fr = np.asarray(fractions, np.float64)
    if fr.ndim != 1 or fr.size < 1 or np.any(fr < 0) or abs(fr.sum() - 1.0) > 1e-6:
        raise DataError(f"split_patients: fractions must be >= 0 and sum to 1, got {tuple(fr)}")
    uniq, inv = np.unique(pids, return_inverse=True)
    scanner_of = {}
    for j in range(uniq.size):
        vals, counts = np.unique(scs[inv == j].astype(str), return_counts=True)
        scanner_of[uniq[j]] = vals[np.argmax(counts)]
    part_of: dict[str, int] = {}
    for sc in sorted(set(scanner_of.values())):
        group = np.array(sorted(p for p, s in scanner_of.items() if s == sc))
        rng = np.random.default_rng([int(seed), zlib.crc32(sc.encode())])
        group = group[rng.permutation(group.size)]
        raw = fr * group.size
        counts = np.floor(raw).astype(int)
        for k in np.argsort(-(raw - counts), kind="stable")[:group.size - counts.sum()]:
            counts[k] += 1
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for part in range(fr.size):
            for p in group[bounds[part]:bounds[part + 1]]:
                part_of[p] = part
    return np.array([part_of[p] for p in pids], np.int64)


def holdout_parts(n: int, patient_ids: Sequence | None, scanners: Sequence | None, fraction: float,
                  seed: int = 0) -> np.ndarray:
    """(n,) int64, 1 for the held-out items: about ``fraction`` of the patients (:func:`split_patients`,
    stratified by scanner), or, with fewer than two patients or too few for both sides, that
    fraction of the items at random (at least one)."""
    part = None
    if patient_ids is not None and len(set(map(str, patient_ids))) >= 2:
        part = split_patients(patient_ids, scanners, fractions=(1 - fraction, fraction), seed=seed)
        if part.min() == part.max():
            part = None
    if part is None:
        part = np.zeros(n, np.int64)
        part[np.random.default_rng((seed, 1)).permutation(n)[:max(1, int(round(fraction * n)))]] = 1
    return part

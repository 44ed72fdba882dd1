"""The authors' published test-set layout (``CT/<attack>/CT_<attack>.csv``, ``MRI/MRI_<attack>.csv``):
labelled patches (:func:`btd_jax.data.testsets.layout.load_testset`)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

from btd_jax.data import preprocess
from btd_jax.data.errors import DataError
from btd_jax.data.readers.formats import Format, ReadOptions, register
from btd_jax.data.records import TestSet
from btd_jax.data.testsets.layout import ATTACKS, load_testset, testset_csv_path

__all__ = ["FORMAT", "find_testsets", "testset_patches"]

_PAIRS = tuple((m, a) for m in ("CT", "MRI") for a in ("Inject", "Remove"))


def find_testsets(root: Path) -> List[Tuple[str, str]]:
    """(modality, attack) pairs whose CSV exists under ``root``."""
    return [(m, a) for m, a in _PAIRS if testset_csv_path(root, m, a).is_file()]


def testset_patches(root: Path, opts: ReadOptions) -> TestSet:
    """The one test set under ``root`` that ``opts.modality``/``opts.attack`` pick (``opts.tamper``: only
    that method's rows)."""
    found = find_testsets(root)
    if opts.modality is not None:
        want = "CT" if preprocess.canonical_modality(opts.modality) == "CT" else "MRI"
        found = [f for f in found if f[0] == want]
    if opts.attack is not None:
        found = [f for f in found if f[1] == ATTACKS.get(opts.attack.strip().lower(), opts.attack)]
    if len(found) > 1:
        raise DataError(f"{root}: holds several test sets {found}; pass modality= and attack=")
    if not found:
        raise DataError(f"{root}: no test set of modality {opts.modality} and attack {opts.attack}")
    return load_testset(root, found[0][0], found[0][1], tamper=opts.tamper, size=opts.size, strict=opts.strict)


FORMAT = register(Format(
    "testset", "the authors' test-set layout (CT/<attack>/CT_<attack>.csv, MRI/MRI_<attack>.csv: path, x, y, "
               "type and per-method indicator columns): labelled patches",
    lambda p: p.is_dir and bool(find_testsets(p.path)), patches=testset_patches))

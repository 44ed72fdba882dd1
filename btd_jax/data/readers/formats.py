"""The table of input formats: one :class:`Format` entry per format, in its reader's module.

A format says how to recognise its input (``detect``, cheap: names and small headers) and which
readers it offers; every command that takes ``--input``/``--data`` goes through the generic paths of
:mod:`btd_jax.data.readers`, which use whatever a format offers:

* ``scans``: volumes of raw values (HU for CT, scanner values for MRI) with their geometry and one
  record per slice. A format that offers only this is, without any other code, preparable into a
  slice store (``prepare``), screenable and localizable (``read_volume``), and trainable and
  scorable as random patches per slice or patches around listed points (``score --locations``);
* ``patches``: ready patches in [0, 1] (patch arrays, labelled test sets), read as they are;
* ``units``: store units for inputs that are not volumes (file-per-slice folders);
* ``slices``: a crop source to train from directly, without a store.

Adding a format is one reader module calling :func:`register` (imported by
``btd_jax/data/readers/__init__.py``) plus its test; ``--format`` choices and help, detection and the
docs' format table read this table::

    register(Format("raw", "raw float32 volume + JSON header", lambda p: p.path.suffix == ".raw",
                    scans=read_raw_scans))
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from btd_jax.data.errors import DataError, MissingInput
from btd_jax.data.readers.geometry import Geometry
from btd_jax.data.records import PatchSet, Skipped

__all__ = ["COMMANDS", "ReadOptions", "Scan", "ScanRef", "StoreInput", "Probe", "Format", "FORMATS", "READERS", "register",
           "get", "names", "detect", "resolve", "help_text", "markdown_table"]

READERS = ("scans", "patches", "units", "slices")
# The commands each reader serves (scans are read as volumes, store units or patches alike).
COMMANDS = {"scans": ("prepare", "train", "score", "screen", "localize"), "patches": ("train", "score"),
            "units": ("prepare",), "slices": ("train",)}
_NOTES = (".txt", ".csv", ".json", ".md")  # files any input folder may carry besides its data


@dataclasses.dataclass(frozen=True)
class ReadOptions:
    """What a command asks of a reader; each reader uses the fields that apply to it.

    modality: 'CT' or 'MR'/'MRI' (None: what the input says); strict: raise on the first bad item,
    else skip it and list it; series_uid: one series of a folder or store; size: patch or crop side
    (None: the paper's, 96 CT / 128 MRI); attack/tamper: which test set; resize: image folders,
    'authors' or 'none'; shard_rows: file-per-slice inputs, slices per store shard.
    """

    modality: Optional[str] = None
    strict: bool = True
    series_uid: Optional[str] = None
    size: Optional[int] = None
    attack: Optional[str] = None
    tamper: Optional[str] = None
    resize: str = "authors"
    shard_rows: int = 256


@dataclasses.dataclass
class Scan:
    """One volume as its format stores it.

    pixels: (S, H, W) float32, raw values (HU for CT, scanner values for MRI) or, with ``unit``,
      already in [0, 1] (a slice store);
    records: one dict per slice (patient, series, scanner, slice, frame, path, pixel_spacing,
      affine, ...), the slice store's manifest rows;
    geometry: the checked volume geometry, computed when asked (screening needs it, a store does not);
    single: the input was one 2-D slice.
    """

    pixels: np.ndarray
    records: List[Dict[str, Any]]
    modality: Optional[str] = None
    geometry: Callable[[], Optional[Geometry]] = lambda: None
    skipped: List[Skipped] = dataclasses.field(default_factory=list)
    unit: bool = False
    single: bool = False


@dataclasses.dataclass(frozen=True)
class ScanRef:
    """A scan found but not read: ``key`` (stable, names it in a store's plan), ``series`` (what
    ``series_uid`` selects), ``where`` (named in errors), ``n_slices`` (for progress), ``modality`` when
    known before reading (DICOM headers), and ``load() -> Scan``."""

    key: str
    series: str
    where: str
    n_slices: int
    load: Callable[[], Scan]
    modality: Optional[str] = None


@dataclasses.dataclass
class StoreInput:
    """What a format that is not read as volumes gives a slice store: units
    (:class:`btd_jax.data.store.writer.Unit`), the modality, skipped items, an optional shared
    crop-centre list (L, 2) and the options recorded in ``store.json``."""

    units: List[Any]
    modality: str
    skipped: List[Skipped] = dataclasses.field(default_factory=list)
    locations: Optional[np.ndarray] = None
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)


class Probe:
    """What ``detect`` looks at: ``path`` (a ``Path``; ``remote`` for ``scheme://`` paths) and its
    ``files``/``names`` (a folder's, recursive, hidden ones left out), listed once per probe."""

    def __init__(self, path: str | os.PathLike):
        self.text = os.fspath(path)
        self.remote = "://" in self.text
        self.path = Path(self.text)
        self.is_file = not self.remote and self.path.is_file()
        self.is_dir = not self.remote and self.path.is_dir()

    @functools.cached_property
    def files(self) -> Tuple[Path, ...]:
        """The file itself, or every file under the folder (sorted walk, hidden files and folders left out)."""
        if not self.is_dir:
            return (self.path,) if self.is_file else ()
        out = []
        for dirpath, dirnames, filenames in os.walk(self.path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            out += [Path(dirpath) / n for n in sorted(filenames) if not n.startswith(".")]
        return tuple(out)

    @functools.cached_property
    def names(self) -> Tuple[str, ...]:
        return tuple(p.name for p in self.files)

    def matching(self, suffixes: Tuple[str, ...]) -> List[Path]:
        """The files whose names end with one of ``suffixes`` (case-insensitive)."""
        return [p for p in self.files if p.name.lower().endswith(suffixes)]

    def any_suffix(self, suffixes: Tuple[str, ...]) -> bool:
        """Whether some file (the file itself, or one in the folder) ends with one of ``suffixes``."""
        return any(n.lower().endswith(suffixes) for n in self.names)

    def only_suffix(self, suffixes: Tuple[str, ...]) -> bool:
        """Whether a folder holds files ending with ``suffixes`` and nothing else but notes (.txt, .csv, ...)."""
        names = [n.lower() for n in self.names]
        return self.is_dir and any(n.endswith(suffixes) for n in names) and \
            all(n.endswith(suffixes + _NOTES) for n in names)


@dataclasses.dataclass(frozen=True)
class Format:
    """One input format. ``detect(probe) -> bool``; the readers take ``(path, ReadOptions)``:

    scans -> (list of :class:`ScanRef`, skipped items); patches -> :class:`~btd_jax.data.records.PatchSet`
    (a :class:`~btd_jax.data.records.TestSet` when labelled); units -> :class:`StoreInput`;
    slices -> a crop source (:class:`btd_jax.data.crops.sampling.SliceSource`).
    ``extra``: the pip extra its reader needs; ``modality``: what its input holds when it cannot say;
    ``fallback``: detected only when no other format claims the path.
    """

    name: str
    help: str
    detect: Callable[[Probe], bool]
    extra: Optional[str] = None
    scans: Optional[Callable[[Path, ReadOptions], Tuple[List[ScanRef], List[Skipped]]]] = None
    patches: Optional[Callable[[Path, ReadOptions], PatchSet]] = None
    units: Optional[Callable[[Path, ReadOptions], StoreInput]] = None
    slices: Optional[Callable[[str, ReadOptions], Any]] = None
    modality: Optional[str] = None
    fallback: bool = False

    @property
    def offers(self) -> Tuple[str, ...]:
        """The readers this format has, of :data:`READERS`."""
        return tuple(r for r in READERS if getattr(self, r) is not None)

    @property
    def commands(self) -> Tuple[str, ...]:
        """The commands that accept this format (:data:`COMMANDS` of its readers)."""
        used = {c for r in self.offers for c in COMMANDS[r]}
        return tuple(c for c in ("prepare", "train", "score", "screen", "localize") if c in used)


FORMATS: Dict[str, Format] = {}


def register(fmt: Format) -> Format:
    """Adds ``fmt`` to :data:`FORMATS` (a name may be registered once; at least one reader)."""
    if fmt.name in FORMATS or fmt.name == "auto":
        raise ValueError(f"input format {fmt.name!r} is already registered (or reserved)")
    if not fmt.offers:
        raise ValueError(f"input format {fmt.name!r} offers no reader ({', '.join(READERS)})")
    FORMATS[fmt.name] = fmt
    return fmt


def names(command: Optional[str] = None) -> Tuple[str, ...]:
    """The registered formats, or those ``command`` accepts."""
    return tuple(n for n, f in FORMATS.items() if command is None or command in f.commands)


def get(name: str) -> Format:
    """The format called ``name``; DataError naming the valid ones otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise DataError(f"unknown input format {name!r}; expected auto or one of {', '.join(FORMATS)}") from None


def detect(path: str | os.PathLike) -> Format:
    """The format of ``path``: the first entry whose ``detect`` claims it, fallback entries last."""
    probe = Probe(path)
    if not probe.remote and not probe.path.exists():
        raise MissingInput(f"{path}: no such file or folder")
    for fmt in sorted(FORMATS.values(), key=lambda f: f.fallback):
        if fmt.detect(probe):
            return fmt
    raise DataError(f"{path}: not an input format btd_jax reads ({', '.join(FORMATS)})")


def resolve(path: str | os.PathLike, fmt: str | Format = "auto") -> Format:
    """``fmt`` itself, or the detected format of ``path`` for ``'auto'``."""
    if isinstance(fmt, Format):
        return fmt
    return detect(path) if fmt in (None, "auto") else get(fmt)


def help_text(command: Optional[str] = None) -> str:
    """One line per format (name: what it is [needs extra]), of those ``command`` accepts, for
    ``--format``/``--input`` help."""
    out = []
    for f in FORMATS.values():
        if command is None or command in f.commands:
            extra = f" (pip install 'btd_jax[{f.extra}]')" if f.extra else ""
            out.append(f"{f.name}: {f.help}{extra}")
    return "; ".join(out)


def markdown_table() -> str:
    """The registry as a Markdown table (format | input | commands | extra), for the docs."""
    rows = ["| `--format` | input | accepted by | extra |", "|---|---|---|---|"]
    rows += [f"| `{f.name}` | {f.help} | {', '.join(f.commands)} | {f'`{f.extra}`' if f.extra else '-'} |"
             for f in FORMATS.values()]
    return "\n".join(rows) + "\n"

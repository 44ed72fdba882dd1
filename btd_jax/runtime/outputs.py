"""The output plan of a command: every path it will write, declared before any work and checked at once.

    plan = OutputPlan("screen", overwrite=args.overwrite, inputs=[args.input], workdirs=[args.workdir])
    out = plan.folder(args.out)                        # a folder the command fills
    plan.file(os.path.join(out, "findings.json"))      # exact files, with the suffixes writers add
    plan.pattern(os.path.join(out, "overlays"), "slice_*.png")   # files whose names depend on the data
    plan.check()                                       # one DataError naming the first problem

:meth:`OutputPlan.check` refuses, even with ``overwrite``: an output that is an input or lies inside
an input folder (compared after resolving symlinks, and by device and inode, so hard links and bind
mounts are caught too); a workdir's own files (``config.json``, ``checkpoints/``, ...); an existing
file where a folder is wanted and a folder where a file is wanted. Without ``overwrite`` it also
refuses an existing output file, an existing file matching a pattern, and a non-empty output folder
that this command did not write (it leaves a marker file, :data:`MARKER`, in every folder it fills).

A checked plan is active until the command ends: when the command fails, :func:`discard_active`
removes what the plan's paths gained in this run (files that did not exist before, empty folders it
made), so a failure leaves nothing a rerun would trust. Files are written atomically
(:mod:`btd_jax.runtime.atomic`), so none is ever left half-written.
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import os
from typing import Iterable, List, Optional, Sequence, Tuple

from btd_jax.data.errors import DataError
from btd_jax.runtime.atomic import TMP_PREFIX, atomic_open

__all__ = ["WORKDIR_ENTRIES", "MARKER", "OutputPlan", "discard_active", "active_plans", "skipped_path",
           "write_skipped"]

# What a workdir holds for itself; outputs may sit beside these but never replace them.
WORKDIR_ENTRIES = ("config.json", "checkpoints", "metrics.jsonl", ".lock")
MARKER = ".btd-jax-output"

_ACTIVE: List["OutputPlan"] = []


def _real(path: str) -> str:
    return os.path.realpath(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _key(path: str) -> Optional[Tuple[int, int]]:
    """(device, inode) of an existing path, else None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _ancestors(path: str) -> Iterable[str]:
    """``path`` and its parents, as spelled (abspath) and resolved, nearest first."""
    seen = set()
    for p in (os.path.abspath(path), _real(path)):
        while True:
            if p not in seen:
                seen.add(p)
                yield p
            parent = os.path.dirname(p)
            if parent == p:
                break
            p = parent


def _existing_non_folder(path: str) -> Optional[str]:
    """The first parent of ``path`` that exists but is not a folder, if any."""
    p = os.path.dirname(os.fspath(path))
    while p and not os.path.isdir(p):
        if os.path.lexists(p):
            return p
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    return None


def _listing(folder: str) -> List[str]:
    """Entries of ``folder`` that count as content (not our marker or temporary files)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(n for n in names if n != MARKER and not n.startswith(TMP_PREFIX))


def _marked_by(folder: str) -> List[str]:
    try:
        with open(os.path.join(folder, MARKER), encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError):
        return []


@dataclasses.dataclass
class OutputPlan:
    """Every path one run of ``command`` writes; see the module docstring.

    ``inputs``: files and folders the command reads (never written, nothing written inside them);
    ``workdirs``: model folders whose own entries (:data:`WORKDIR_ENTRIES`) are never written.
    """

    command: str
    overwrite: bool = False
    inputs: Sequence[Optional[str]] = ()
    workdirs: Sequence[Optional[str]] = ()
    flag: str = "--overwrite"
    files: List[str] = dataclasses.field(default_factory=list)
    folders: List[Tuple[str, Tuple[str, ...]]] = dataclasses.field(default_factory=list)
    patterns: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
    shared: List[str] = dataclasses.field(default_factory=list)
    _before: set = dataclasses.field(default_factory=set, repr=False)
    _made: List[str] = dataclasses.field(default_factory=list, repr=False)
    _marked: List[str] = dataclasses.field(default_factory=list, repr=False)
    _places: set = dataclasses.field(default_factory=set, repr=False)

    def __post_init__(self):
        self.inputs = [os.fspath(p) for p in self.inputs if p]
        self.workdirs = [os.fspath(p) for p in self.workdirs if p]

    # ------------------------------------------------------------------ declaring

    def file(self, path: Optional[str]) -> Optional[str]:
        """Declares an output file (spelled as it will be written, suffixes included); returns it."""
        if path:
            self.files.append(os.fspath(path))
        return path

    def folder(self, path: Optional[str], resume: Sequence[str] = ()) -> Optional[str]:
        """Declares an output folder. ``resume``: entries whose presence shows the folder holds this
        command's earlier work that it continues (e.g. a workdir's ``config.json``), like the marker."""
        if path:
            self.folders.append((os.fspath(path), tuple(resume)))
        return path

    def pattern(self, folder: str, glob: str) -> str:
        """Declares the files named like ``glob`` in ``folder`` (e.g. ``roc_*.png``), whose names depend
        on the data. The folder is checked like an output's place but neither made nor marked (other
        files in it are left alone). Returns ``folder``."""
        self.patterns.append((os.fspath(folder), glob))
        return folder

    def shared_folder(self, path: str) -> str:
        """Declares a folder that receives outputs beside other content it keeps (e.g. a test-set root
        several runs add to): checked like an output's place, never made, marked or required empty."""
        self.shared.append(os.fspath(path))
        return path

    # ------------------------------------------------------------------ checking

    def _refuse(self, path: str, why: str) -> None:
        what = "outputs" if os.path.abspath(path) in self._places else "the output"
        raise DataError(f"{path}: refusing to write {what} there: {why}")

    def _check_not_input(self, path: str) -> None:
        real = _real(path)
        keys = {_key(a) for a in _ancestors(path)} - {None}
        for src in self.inputs:
            src_real, src_key = _real(src), _key(src)
            if real == src_real or (src_key is not None and src_key == _key(path)):
                self._refuse(path, f"it is the input {src}")
            if os.path.isdir(src_real) and (_inside(real, src_real) or src_key in keys):
                self._refuse(path, f"it is inside the input folder {src}")
        try:
            st = os.stat(path)
        except OSError:
            return
        if os.path.isfile(path) and st.st_nlink > 1:  # a hard link: is the other name an input?
            for src in self.inputs:
                for f in _files_under(src):
                    if _key(f) == (st.st_dev, st.st_ino):
                        self._refuse(path, f"it is a hard link to {f} of the input {src}")

    def _check_not_workdir(self, path: str) -> None:
        real = _real(path)
        for wd in self.workdirs:
            wd_real = _real(wd)
            if real == wd_real:
                self._refuse(path, f"it is the workdir {wd}")
            for name in WORKDIR_ENTRIES:
                if _inside(real, os.path.join(wd_real, name)):
                    self._refuse(path, f"it is {name} of the workdir {wd}")

    def _check_place(self, path: str, folder: bool) -> None:
        bad = _existing_non_folder(path)
        if bad:
            raise DataError(f"{bad}: exists and is not a folder, so {path} cannot be written")
        if folder and os.path.lexists(path) and not os.path.isdir(path):
            raise DataError(f"{path}: exists and is not a folder; give a folder for this output")
        if not folder and os.path.isdir(path):
            raise DataError(f"{path}: is a folder; give a file name for this output")

    def _check_folder_content(self, path: str, resume: Tuple[str, ...]) -> None:
        content = _listing(path)
        if not content or self.overwrite or self.command in _marked_by(path):
            return
        if any(os.path.lexists(os.path.join(path, r)) for r in resume):
            return
        raise DataError(f"{path}: folder exists and holds files that btd-jax {self.command} did not write "
                        f"({', '.join(content[:3])}{', ...' if len(content) > 3 else ''}); give a new or empty "
                        f"folder, or pass {self.flag} to write into it")

    def _pattern_matches(self) -> List[str]:
        found = []
        for folder, glob in self.patterns:
            found += [os.path.join(folder, n) for n in _listing(folder) if fnmatch.fnmatch(n, glob)]
        return found

    def check(self) -> "OutputPlan":
        """Refuses the whole plan with one :class:`DataError` naming the first problem, else makes
        the declared folders (marked as this command's) and keeps the plan active. Call before any work."""
        folders = [f for f, _ in self.folders]
        places = folders + self.shared + [f for f, _ in self.patterns]
        self._places = {os.path.abspath(p) for p in places}
        for path in places + self.files:
            self._check_not_workdir(path)
            self._check_not_input(path)
        for path in places:
            self._check_place(path, folder=True)
        for path in self.files:
            self._check_place(path, folder=False)
        if not self.overwrite:
            for path in self.files:
                if os.path.lexists(path):
                    raise DataError(f"{path}: already exists; pass {self.flag} to replace it")
            found = self._pattern_matches()
            if found:
                more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
                raise DataError(f"{found[0]}{more}: already exists from an earlier run; pass {self.flag} to "
                                "replace these files")
        for path, resume in self.folders:
            self._check_folder_content(path, resume)
        self._before = {os.path.abspath(p) for p in self.files if os.path.lexists(p)}
        self._before |= {os.path.abspath(p) for p in self._pattern_matches()}
        for path in [os.path.dirname(os.path.abspath(f)) for f in self.files] + places:
            self._made += [d for d in _missing_folders(path) if d not in self._made]
        for path in folders:
            self._make(path)
        _ACTIVE.append(self)
        return self

    def _make(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        if self.command not in _marked_by(path):
            with open(os.path.join(path, MARKER), "a", encoding="utf-8") as f:
                f.write(self.command + "\n")
            self._marked.append(os.path.abspath(path))

    # ------------------------------------------------------------------ failure

    def discard(self) -> None:
        """Removes what this run added to the plan's paths (new files, our markers, folders it made
        that are then empty); never a file that existed before the run."""
        for path in [os.path.abspath(p) for p in self.files] + self._pattern_matches():
            path = os.path.abspath(path)
            if path not in self._before and os.path.isfile(path):
                os.remove(path)
        for folder in self._marked:
            try:
                lines = [c for c in _marked_by(folder) if c != self.command]
                if lines:
                    with open(os.path.join(folder, MARKER), "w", encoding="utf-8") as f:
                        f.write("".join(c + "\n" for c in lines))
                else:
                    os.remove(os.path.join(folder, MARKER))
            except OSError:
                pass
        for folder in sorted(self._made, key=len, reverse=True):
            try:
                os.rmdir(folder)  # only when empty
            except OSError:
                pass
        if self in _ACTIVE:
            _ACTIVE.remove(self)


def _missing_folders(path: str) -> List[str]:
    """``path`` and its parents that do not exist yet (a failed run removes those it made, if empty)."""
    missing, p = [], os.path.abspath(path)
    while not os.path.isdir(p) and os.path.dirname(p) != p:
        missing.append(p)
        p = os.path.dirname(p)
    return missing


def _files_under(path: str) -> Iterable[str]:
    if os.path.isfile(path):
        yield path
    elif os.path.isdir(path):
        for root, _, names in os.walk(path):
            for n in names:
                yield os.path.join(root, n)


def active_plans() -> List[OutputPlan]:
    """The plans checked in this process since the last :func:`discard_active` (the running command's)."""
    return list(_ACTIVE)


def discard_active(failed: bool = True) -> None:
    """Ends the running command's plans: with ``failed``, :meth:`OutputPlan.discard` each."""
    while _ACTIVE:
        plan = _ACTIVE.pop()
        if failed:
            plan.discard()


def skipped_path(out: str) -> str:
    """Where the list of items skipped while making ``out`` goes: ``<out without extension>.skipped.csv``."""
    out = str(out).rstrip(os.sep)
    root, ext = os.path.splitext(out)
    return (root if ext and not os.path.isdir(out) else out) + ".skipped.csv"


def write_skipped(path: str, skipped: Sequence) -> Optional[str]:
    """Writes ``item, reason`` rows (``skipped``: objects with ``.item``/``.reason`` or pairs) to the CSV
    ``path`` atomically (declare it in the command's plan). Returns ``path``, or None (and writes
    nothing) when nothing was skipped."""
    if not skipped:
        return None
    rows = [(s.item, s.reason) if hasattr(s, "item") else tuple(s) for s in skipped]
    with atomic_open(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(["item", "reason"])
        w.writerows(rows)
    return path

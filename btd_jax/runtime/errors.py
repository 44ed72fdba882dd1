"""Errors of the run-time checks that are not bad input (those are ``btd_jax.data.DataError``), the
optional extras, and the one-line description of any error a command ends with.

:func:`describe` is the exception boundary's dictionary: it maps an exception to ``(exit status,
one line)`` or None for a genuine bug (which keeps its traceback). Bad input, missing files and
permissions, undecodable text, unreadable arrays and a missing optional package are status 2; a
diverged run or a busy workdir status 1.
"""

from __future__ import annotations

import importlib
import zipfile
from types import ModuleType
from typing import Optional, Tuple

from btd_jax.runtime.lock import WorkdirBusy

__all__ = ["NonFiniteError", "MissingExtra", "EXTRAS", "require", "describe"]

# Optional package (top-level module) -> the btd_jax extra that installs it.
EXTRAS = {"flatbuffers": "export", "torch": "torch", "nibabel": "nifti", "h5py": "h5", "grain": "grain",
          "highdicom": "highdicom", "tensorboardX": "tensorboard", "pylibjpeg": "dicom", "libjpeg": "dicom",
          "openjpeg": "dicom", "rle": "dicom"}


class NonFiniteError(FloatingPointError):
    """Values became (or were found) NaN or infinite: a diverged run or damaged weights."""


class MissingExtra(ImportError):
    """An optional package is not installed; the message names the extra that installs it."""

    def __init__(self, module: str, what: str = ""):
        extra = EXTRAS.get(module.split(".")[0])
        how = f"pip install 'btd_jax[{extra}]'" if extra else f"pip install {module.split('.')[0]}"
        text = (f"{what} needs the optional package {module!r}, which is not installed" if what
                else f"the optional package {module!r} is not installed")
        super().__init__(f"{text}: {how}", name=module)


def require(module: str, what: str = "") -> ModuleType:
    """Imports the optional ``module`` or raises :class:`MissingExtra` (``what`` needs it)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(module, what) from None


def _missing_module(e: BaseException) -> Optional[str]:
    """The module an ImportError (or the chain behind it) could not import."""
    while e is not None:
        name = getattr(e, "name", None)
        if isinstance(e, ImportError) and name:
            return name
        e = e.__cause__ or e.__context__
    return None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def describe(e: BaseException) -> Optional[Tuple[int, str]]:
    """``(exit status, one line)`` for an error a command may end with, or None (a bug: keep the traceback)."""
    if isinstance(e, (NonFiniteError, WorkdirBusy)):
        return 1, _one_line(e)
    if isinstance(e, MissingExtra):
        return 2, _one_line(e)
    if isinstance(e, ImportError):
        name = _missing_module(e)
        if name and name.split(".")[0] in EXTRAS:  # keep a message that already says how to install it
            return 2, _one_line(e if "btd_jax[" in str(e) else MissingExtra(name))
        return 2, _one_line(f"{e} (a package is missing or broken; reinstall btd_jax)")
    if isinstance(e, UnicodeDecodeError):
        return 2, _one_line(f"a text file is not UTF-8 ({e.reason} at byte {e.start}); save it as UTF-8")
    if isinstance(e, OSError):
        if e.filename is not None and e.strerror:
            where = f"{e.filename} -> {e.filename2}" if e.filename2 else f"{e.filename}"
            return 2, _one_line(f"{where}: {e.strerror}")
        return 2, _one_line(e)
    if isinstance(e, KeyError):
        return 2, _one_line(e.args[0] if e.args else e)
    if isinstance(e, (ValueError, EOFError, zipfile.BadZipFile)):
        return 2, _one_line(e)
    return None

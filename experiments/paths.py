"""Paths as results record them: relative to the repository, never a machine path.

A result JSON is committed and read on other machines, so an absolute path in it (a scratch folder, a
home directory) says nothing there. Inside the repository a path is recorded relative to its root;
outside it as ``WORK/<name>``, the placeholder the result pages use for a scratch folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def recorded_path(path: str | os.PathLike) -> str:
    """``path`` relative to the repository root, or ``WORK/<name>`` outside it; relative paths unchanged."""
    p = os.fspath(path)
    if not os.path.isabs(p):
        return p
    resolved = Path(p).resolve()
    try:
        return resolved.relative_to(ROOT).as_posix() or "."
    except ValueError:
        return "WORK/" + resolved.name


def recorded(value: Any) -> Any:
    """``value`` with every absolute path in it recorded by :func:`recorded_path`: strings (each
    space-separated word of a command line, ``--flag=/path`` included), lists, tuples and dicts."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        words = []
        for word in value.split(" "):
            flag, eq, rest = word.partition("=")
            if eq and flag.startswith("-") and os.path.isabs(rest):
                words.append(f"{flag}={recorded_path(rest)}")
            else:
                words.append(recorded_path(word) if os.path.isabs(word) else word)
        return " ".join(words)
    if isinstance(value, dict):
        return {k: recorded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(recorded(v) for v in value)
    return value

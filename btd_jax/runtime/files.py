"""Reading the small JSON records the library writes (calibrations, score references, manifests)."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Dict

from btd_jax.data.errors import DataError, MissingInput

__all__ = ["read_json", "json_digest"]


def read_json(path: str | os.PathLike, what: str, hint: str = "") -> Dict[str, Any]:
    """The JSON object in ``path``; one :class:`DataError` naming the file otherwise.

    A missing file raises :class:`MissingInput` (``no <what>`` and the ``hint`` on how to make one).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingInput(f"{path}: no {what}" + (f" ({hint})" if hint else ""))
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a {what}: the file is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: not a {what}: expected a JSON object, got {type(d).__name__}")
    return d


def json_digest(record: Any) -> str:
    """The first 16 hex of the SHA-256 of ``record``'s canonical JSON (sorted keys): a record's identity."""
    text = json.dumps(record, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]

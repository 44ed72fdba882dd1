"""The score-reference file: what a variant fitted on real patches, for one model and one setting.

One JSON format for every variant that needs a reference (``score_reference.json`` beside the
checkpoints by default): ``variant`` (whose statistics these are), ``model`` (the fingerprint of the
parameters it was fitted with), ``score`` (the ScoreConfig fields the scores were made with), ``n``
(real patches) and the variant's own fields. Loading dispatches on ``variant`` to that variant's
reference type; using a reference with another model is refused.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Dict, Mapping, Optional

from btd_jax.configs import ScoreConfig
from btd_jax.data.errors import DataError
from btd_jax.runtime.atomic import write_json
from btd_jax.runtime.files import read_json
from btd_jax.runtime.finite import tree_checksum

__all__ = ["REFERENCE_FILE", "reference_file", "save", "read", "model_fingerprint", "check_model", "settings_of"]

REFERENCE_FILE = "score_reference.json"


def reference_file(path: str, name: str = REFERENCE_FILE) -> str:
    """``path`` itself, or ``path/<name>`` when ``path`` is a folder (e.g. a workdir)."""
    path = os.fspath(path)
    return os.path.join(path, name) if os.path.isdir(path) else path


def save(record: Mapping[str, Any], path: str, name: str = REFERENCE_FILE) -> str:
    """Writes ``record`` (a reference's ``to_dict()``) atomically to ``path`` (or ``path/<name>`` for a
    folder); returns the file written."""
    return write_json(reference_file(path, name), dict(record), indent=2, sort_keys=True)


def read(path: str, decoders: Mapping[str, Callable[[Dict[str, Any]], Any]], default: str = "two_sided",
         name: str = REFERENCE_FILE):
    """Reads a reference file (``path``, or ``path/<name>`` for a folder) and decodes it with
    ``decoders[record['variant']]`` (files written before the field existed are ``default``)."""
    path = reference_file(path, name)
    d = read_json(path, "score reference", hint="fit one on real patches with btd-jax score --fit_reference")
    variant = d.get("variant", default)
    if variant not in decoders:
        raise DataError(f"{path}: a reference of the unknown score variant {variant!r}; known: "
                        f"{', '.join(decoders)}")
    try:
        return decoders[variant](d)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None


def model_fingerprint(model: Any) -> Optional[str]:
    """``'<config name>/<first 16 hex of the params' SHA-256>'`` of a Scorer (None without params)."""
    cached = getattr(model, "_btd_fingerprint", None)
    if cached is not None:
        return cached
    params, cfg = getattr(model, "params", None), getattr(model, "cfg", None)
    if params is None or cfg is None:
        return None
    fp = f"{cfg.name}/{tree_checksum(params)[:16]}"
    try:
        model._btd_fingerprint = fp
    except AttributeError:
        pass
    return fp


def check_model(ref: Any, model: Any, where: str = "score reference") -> None:
    """Refuses (DataError) a reference fitted with another model's parameters."""
    want, have = getattr(ref, "model", None), model_fingerprint(model)
    if want and have and want != have:
        raise DataError(f"{where}: fitted with the model {want}, but this model is {have}; fit a reference for "
                        "this model (btd-jax score --fit_reference on real patches)")


def settings_of(ref: Any, s: ScoreConfig) -> ScoreConfig:
    """``s`` with the scoring fields the reference was fitted with (its speed fields stay ``s``'s)."""
    fields = {f.name for f in dataclasses.fields(ScoreConfig)} - set(ScoreConfig.SPEED_FIELDS)
    return dataclasses.replace(s, **{k: v for k, v in getattr(ref, "score", {}).items() if k in fields})



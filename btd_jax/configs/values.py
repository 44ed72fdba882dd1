"""Values of config fields parsed by their declared types (``typing`` hints), for overrides and JSON.

A command line gives every value as a string; JSON gives lists for tuples. :func:`convert` turns
either into exactly the declared type (``int``, ``float``, ``bool``, ``str``, ``Optional[...]``,
``Union[...]`` tried in order, fixed or variable-length ``Tuple[...]``, nested) or raises
:class:`TypeMismatch`.
"""

from __future__ import annotations

import ast
import json
import numbers
import typing
from typing import Any, Mapping, Union

__all__ = ["TypeMismatch", "type_name", "convert"]

_NONE = ("none", "null")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


class TypeMismatch(Exception):
    """A value that does not fit the declared type (the caller turns it into a ValueError naming the key)."""


def type_name(tp: Any) -> str:
    """``int``, ``int or None``, ``a tuple of int``, ``(float, float)``: for error messages."""
    if tp is type(None):
        return "None"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        return " or ".join(type_name(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a tuple of {type_name(args[0])}"
        return f"({', '.join(type_name(a) for a in args)})"
    return getattr(tp, "__name__", str(tp))


def _items(value: Any) -> list:
    """The elements of a tuple-valued field given as a sequence, a mapping or a string.

    Strings may be JSON (``[1, 2]``, ``{"tau": 1}``), a Python literal (``(1, 2)``) or a bare list
    (``1,2,4``; a pair also as ``name=value``, so ``start=-3,tau=1`` is two pairs).
    """
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, Mapping):
        return [list(kv) for kv in value.items()]
    if not isinstance(value, str):
        raise TypeMismatch
    text = value.strip()
    if text in ("", "()", "[]", "{}"):
        return []
    for parse in (json.loads, ast.literal_eval):
        try:
            parsed = parse(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
        return _items(parsed) if isinstance(parsed, (list, tuple, dict)) else [parsed]
    if "," not in text and "=" in text:
        return [p.strip() for p in text.split("=", 1)]
    return [p.strip() for p in text.strip("()[]").split(",")]


def convert(value: Any, tp: Any) -> Any:
    """``value`` (a command-line string or a JSON/Python value) as type ``tp``; raises TypeMismatch."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            if type(None) in args:
                return None
            raise TypeMismatch
        for arg in args:
            if arg is not type(None):
                try:
                    return convert(value, arg)
                except TypeMismatch:
                    pass
        raise TypeMismatch
    if origin is tuple:
        items = _items(value)
        if len(args) == 2 and args[1] is Ellipsis:
            types = [args[0]] * len(items)
        elif len(items) == len(args):
            types = list(args)
        else:
            raise TypeMismatch
        return tuple(convert(v, t) for v, t in zip(items, types))
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeMismatch
    if tp is bool:
        if isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", "") == "b":
            return bool(value)
        text = value.strip().lower() if isinstance(value, str) else None
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise TypeMismatch
    if tp in (int, float):
        if isinstance(value, bool):
            raise TypeMismatch
        if isinstance(value, numbers.Integral) or (tp is float and isinstance(value, numbers.Real)):
            return tp(value)
        if isinstance(value, str):
            try:
                return tp(value.strip())
            except ValueError:
                raise TypeMismatch from None
        raise TypeMismatch
    raise TypeError(f"no parser for config fields of type {tp!r}")

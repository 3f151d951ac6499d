"""Typed dataclasses from parsed YAML: `build(cls, data, where)` checks every field against its annotation and
rejects unknown and missing ones, with a `RecipeError` that names the field's path (`stages[0].train`).
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any


class RecipeError(ValueError):
    """A recipe that cannot be used; the message names the file and the field."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _at(where: str, name: str) -> str:
    """The path of field `name` inside `where` (`stages[0]` + `train` -> `stages[0].train`)."""
    return f"{where}.{name}" if where else name


def _convert(value: Any, tp: Any, where: str) -> Any:
    """`value` checked against (and converted to) the annotation `tp`; RecipeError names `where`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except RecipeError as err:
                errors.append(str(err))
        raise RecipeError(
            errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {_type_name(tp)}"
        )
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise RecipeError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        key_tp, value_tp = typing.get_args(tp)
        return {str(k): _convert(v, value_tp, _at(where, str(k))) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        # YAML reads `1e-4` (no dot) as a string; accept it as the number it plainly is.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecipeError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {where}")  # a bug in this module, not in the recipe


def build(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown and missing fields by name."""
    if not isinstance(data, dict):
        raise RecipeError(f"{where or 'recipe'}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise RecipeError(f"{where or 'recipe'}: unknown field(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], _at(where, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise RecipeError(f"{_at(where, name)}: required field is missing")
    return cls(**kwargs)


# A path under the installed package: `groundlm:demo/parts/shapes-tower` (the parts the demo ships with).
PACKAGE_PREFIX = "groundlm:"


def expand(path: str) -> str:
    """`~` and environment variables expanded (recipes may say `$DATA/coco/records.jsonl`); `groundlm:REL` is
    REL inside the installed groundlm package."""
    if path.startswith(PACKAGE_PREFIX):
        return str(Path(__file__).resolve().parents[1] / path[len(PACKAGE_PREFIX) :])
    return os.path.expandvars(os.path.expanduser(path))

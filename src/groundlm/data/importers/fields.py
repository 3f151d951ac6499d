"""Checked field access inside a row converter: each helper returns the value or raises a `RowError` naming
the field, which `base.Importer` turns into an error naming the file and row (or a counted skip)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .base import RowError


def as_dict(row: Any, what: str = "<row>") -> dict:
    """``row`` itself when it is a JSON object, else a RowError."""
    if not isinstance(row, dict):
        raise RowError(what, f"expected a JSON object, got {type(row).__name__}")
    return row


def get(row: Mapping, key: str, types: type | tuple[type, ...], where: str | None = None) -> Any:
    """``row[key]`` checked against ``types`` (bool is never accepted as a number)."""
    name = where or key
    if key not in row or row[key] is None:
        raise RowError(name, "missing", "missing")
    value = row[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise RowError(name, f"expected {_names(types)}, got bool")
    if not isinstance(value, types):
        raise RowError(name, f"expected {_names(types)}, got {type(value).__name__}")
    return value


def get_text(row: Mapping, key: str, where: str | None = None) -> str:
    """``row[key]`` as a non-blank string."""
    return text_value(get(row, key, str, where), where or key)


def text_value(value: Any, where: str) -> str:
    """``value`` itself when it is a non-blank string."""
    if not isinstance(value, str):
        raise RowError(where, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise RowError(where, "empty text", "empty")
    return value


def _names(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in types)


def numbers(value: Any, n: int, where: str) -> list[float]:
    """``value`` as a list of ``n`` finite numbers."""
    ok = (
        isinstance(value, list | tuple)
        and len(value) == n
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )
    if not ok:
        raise RowError(where, f"expected {n} finite numbers, got {value!r}", "bad box")
    return [float(v) for v in value]


def pixel_box(box: list[float], where: str) -> tuple[float, float, float, float]:
    """Check an xyxy pixel box (non-negative, x1 <= x2, y1 <= y2) and return it as a tuple."""
    x1, y1, x2, y2 = box
    if x1 > x2 or y1 > y2 or min(box) < 0:
        raise RowError(where, f"not a valid xyxy pixel box: {box!r}", "bad box")
    return (x1, y1, x2, y2)


def scaled_box(box: list[float], scale: float, width: float, height: float, where: str) -> tuple:
    """A normalised xyxy box (coordinates in ``[0, scale]``) in pixels of a ``width x height`` image."""
    if min(box) < 0 or max(box) > scale:
        raise RowError(where, f"normalised box must lie in [0, {scale:g}], got {box!r}", "bad box")
    x1, y1, x2, y2 = box
    return pixel_box(
        [x1 / scale * width, y1 / scale * height, x2 / scale * width, y2 / scale * height], where
    )


def positive_int(row: Mapping, key: str, where: str | None = None) -> int:
    """``row[key]`` as a positive integer (image widths and heights)."""
    value = get(row, key, (int, float), where)
    if value <= 0 or value != int(value):
        raise RowError(where or key, f"expected a positive integer, got {value!r}")
    return int(value)

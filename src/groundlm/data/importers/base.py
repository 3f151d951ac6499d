"""What every importer shares: the error and skip policy, the import report, and checked field access.

An importer reads one source format and yields records. A broken source row (a missing field, a box that is
not 4 numbers) is either an error that names the file, the row and the field (``on_error="raise"``, the
default) or is skipped and counted in an ``ImportReport`` (``on_error="skip"``). Every record an importer
produces also passes ``validate_record``; a record that would not is treated as a broken row, so an import
never yields something ``read_jsonl`` would refuse.

Every importer that builds task conversations takes the same keyword arguments, ``ImportOptions``: ``rng``
(None: MiniGPT-v2's evaluation prompt and a fixed answer, e.g. the first caption; a ``random.Random``: both
drawn, for training), ``on_error`` and ``report``.

Some rows are not broken but simply have nothing to give (an image without captions, a caption without a
single boxed phrase); those are counted in the report under their reason in both modes and never raise.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict, TypeVar

from PIL import Image

from ...records import Record, validate_record

logger = logging.getLogger("groundlm.data.importers")

OnError = Literal["raise", "skip"]
T = TypeVar("T")
_INDEX = re.compile(r"\[\d+\]")
PathLike = str | os.PathLike


@dataclass
class ImportReport:
    """What an import did: rows read, records made, and rows (or parts of rows) skipped, counted per reason."""

    rows: int = 0
    records: int = 0
    skipped: Counter = field(default_factory=Counter)

    def skip(self, reason: str, n: int = 1) -> None:
        """Count ``n`` skipped rows (or parts of rows) under ``reason``."""
        self.skipped[reason] += n

    @property
    def n_skipped(self) -> int:
        """The total number of skips over all reasons."""
        return sum(self.skipped.values())

    def __str__(self) -> str:
        text = f"read {self.rows} rows, made {self.records} records"
        if self.skipped:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in self.skipped.most_common())
            text += f", skipped {self.n_skipped} ({reasons})"
        return text


class ImportRowError(ValueError):
    """A broken source row: names the file, the row (``row 12``, ``line 13``, ``annotations[4]``) and field."""

    def __init__(self, file: str, where: str, field: str, message: str, kind: str = "invalid"):
        self.file, self.where, self.field, self.message, self.kind = file, where, field, message, kind
        super().__init__(f"{file}: {where}: {field}: {message}")

    @property
    def reason(self) -> str:
        """A short, countable reason such as ``missing bbox`` (indices dropped so similar rows group)."""
        return f"{self.kind} {_INDEX.sub('[]', self.field)}"


class RowError(Exception):
    """Raised inside a row converter; the driver adds the file and row and applies the error policy."""

    def __init__(
        self,
        field: str,
        message: str,
        kind: str = "invalid",
        *,
        file: str | None = None,
        where: str | None = None,
    ):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.kind = field, message, kind
        # Set when the fault lies in another file than the importer's own (Flickr30k's per-image files).
        self.file, self.where = file, where


class ImportOptions(TypedDict, total=False):
    """The keyword arguments of every importer that builds task conversations (see the module docstring)."""

    rng: random.Random | None
    on_error: OnError
    report: ImportReport | None


class Importer:
    """Runs a row converter over a source, applying the error policy and filling the report.

    ``rng`` is kept for the converters: with none they ask MiniGPT-v2's evaluation prompts (``evaluation``).
    """

    def __init__(
        self,
        file: PathLike,
        on_error: OnError = "raise",
        report: ImportReport | None = None,
        *,
        rng: random.Random | None = None,
    ):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.file, self.on_error = str(file), on_error
        self.rng, self.evaluation = rng, rng is None
        self.report = report if report is not None else ImportReport()
        self._own_report = report is None

    def run(self, rows: Iterable[tuple[str, Any]], convert: Callable[[int, Any], Iterable[T]]) -> list[T]:
        """Call ``convert(index, row)`` for every ``(where, row)`` and collect what it returns.

        ``index`` counts rows from 0. A ``RowError`` raised by ``convert``, or a returned record that fails
        ``validate_record``, is re-raised as ``ImportRowError`` naming ``where``, or skipped and counted.
        """
        out: list[T] = []
        for index, (where, row) in enumerate(rows):
            self.report.rows += 1
            try:
                items = list(convert(index, row))
                for item in items:
                    problems = validate_record(item.to_dict()) if isinstance(item, Record) else []
                    if problems:
                        raise RowError(problems[0].field, problems[0].message, "invalid record")
            except RowError as err:
                error = ImportRowError(
                    err.file or self.file, err.where or where, err.field, err.message, err.kind
                )
                if self.on_error == "raise":
                    raise error from None
                self.report.skip(error.reason)
                continue
            out.extend(items)
        self.report.records += sum(isinstance(item, Record) for item in out)
        if self._own_report and self.report.skipped:
            # Nobody asked for the report, so say what was dropped rather than drop it silently.
            logger.warning("%s: %s", self.file, self.report)
        return out


# --------------------------------------------------------------------------------------------------------
# Reading source files


def load_json(path: PathLike) -> Any:
    """Parse a JSON file; a syntax error names the file, line and column."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON at line {err.lineno}, column {err.colno}: {err.msg}") from err


def json_rows(path: PathLike) -> Iterator[tuple[str, Any]]:
    """Yield ``(where, row)`` from a JSON list (``row i``, 0-based) or JSON lines (``line n``, 1-based).

    Both layouts occur for the same kind of file (POPE ships JSON lines and a pretty-printed list), so the
    first non-blank character decides: ``[`` is a list, anything else is one JSON value per line.
    """
    if _first_char(path) == "[":
        rows = load_json(path)
        yield from ((f"row {i}", row) for i, row in enumerate(rows))
        return
    with open(path, encoding="utf-8-sig") as f:  # streamed: instruction files can be large
        numbered = ((lineno, line) for lineno, line in enumerate(f, start=1) if line.strip())
        for lineno, line in numbered:
            yield f"line {lineno}", _json_line(line, path, lineno)


def _json_line(line: str, path: PathLike, lineno: int) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: line {lineno}: invalid JSON (column {err.colno}): {err.msg}") from err


def _first_char(path: PathLike) -> str:
    with open(path, encoding="utf-8-sig") as f:
        while chunk := f.read(4096):
            if chunk.strip():
                return chunk.lstrip()[0]
    return ""


def image_size(path: PathLike) -> tuple[int, int]:
    """``(width, height)`` of an image file, read from its header without decoding the pixels."""
    with Image.open(path) as image:
        return image.size


# --------------------------------------------------------------------------------------------------------
# Checked field access inside a row converter (each raises RowError naming the field)


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

"""What every importer shares: the error and skip policy, the import report, the options, reading source files.

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
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict, TypeVar

from PIL import Image

from ...records import Record, validate_record
from ..report import Skips

logger = logging.getLogger("groundlm.data.importers")

OnError = Literal["raise", "skip"]
T = TypeVar("T")
_INDEX = re.compile(r"\[\d+\]")
PathLike = str | os.PathLike


@dataclass
class ImportReport(Skips):
    """What an import did: rows read, records made, and what was skipped, counted per reason."""

    rows: int = 0
    records: int = 0
    # called once per row read, e.g. to advance a progress bar (`groundlm data import`)
    on_row: Callable[[], None] | None = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        return f"read {self.rows} rows, made {self.records} records" + self.skipped_text()


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
            if self.report.on_row is not None:
                self.report.on_row()
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

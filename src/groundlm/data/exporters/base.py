"""What every exporter shares: the interface, the error and skip policy, the report, image sizes and the writer.

An exporter turns one record into one row of a training framework's file (``Exporter.row``); ``write_export``
runs it over records, writes the rows into an output folder (a JSON list, or JSON lines when the file name ends
in ``.jsonl``, written atomically) plus any files the framework needs beside them (``Exporter.extra_files``).

A record that cannot be written (its boxes need the image size and neither ``meta`` nor the image file gives
it; a slot the target format cannot express) raises an ``ExportError`` naming where the record came from (the
records file and line, else its position), its id and the field, or with ``on_error="skip"`` is skipped and
counted in the ``ExportReport`` under a short reason.

Images: rows keep the record's image path, relative to the image root the target framework is given, and one
``<image>`` tag goes in front of the first user turn of a record with an image (each format's own spelling,
``IMAGE_TAG``). Image sizes come from ``meta["width"]``/``meta["height"]`` (the importers keep them), else
from the header of ``image_root / image``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

from ...records import Record
from ..importers.base import image_size
from ..report import Skips
from .locations import Locations, has_slots

OnError = Literal["raise", "skip"]
PathLike = str | os.PathLike
IMAGE_TAG = "<image>"


class RecordError(Exception):
    """Raised inside ``Exporter.row``; ``write_export`` adds where the record came from and applies the policy."""

    def __init__(self, field: str, message: str, kind: str = "invalid"):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.kind = field, message, kind


class ExportError(ValueError):
    """A record that cannot be exported: names where it came from, its id, the field and the problem."""

    def __init__(self, where: str, record_id: str, field: str, message: str, kind: str = "invalid"):
        self.where, self.record_id, self.field, self.message, self.kind = where, record_id, field, message, kind
        super().__init__(f"{where}: record {record_id!r}: {field}: {message}")

    @property
    def reason(self) -> str:
        """A short, countable reason such as ``no image size``."""
        return self.kind


@dataclass
class ExportReport(Skips):
    """What an export did: records read, rows written, and records skipped, counted per reason."""

    records: int = 0
    rows: int = 0

    def __str__(self) -> str:
        return f"read {self.records} records, wrote {self.rows} rows" + self.skipped_text()


class Exporter(Protocol):
    """One target format. Constructors take keyword options only, those named in ``options``."""

    # the data file written in the output folder (``.jsonl``: JSON lines, else one JSON list)
    file_name: ClassVar[str]
    # the keyword options the constructor takes (the CLI passes only these)
    options: ClassVar[tuple[str, ...]]

    def row(self, record: Record, image_root: Path | None) -> dict:
        """The row for ``record``; raises ``RecordError`` when it cannot be written."""
        ...

    def extra_files(self) -> dict[str, Any]:
        """Other files of the output folder, ``{name: JSON value}`` (LLaMA-Factory's ``dataset_info.json``)."""
        ...


def record_size(record: Record, image_root: Path | None) -> tuple[int, int]:
    """``(width, height)`` of a record's image: from ``meta``, else the image file's header."""
    width, height = record.meta.get("width"), record.meta.get("height")
    if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
        return width, height
    if record.image is None:
        raise RecordError("image", "the record has boxes but no image", "no image")
    path = Path(image_root) / record.image if image_root is not None else Path(record.image)
    if not path.is_file():
        raise RecordError(
            "image",
            f"its boxes need the image size: no meta width/height and {path} not found (give the image root)",
            "no image size",
        )
    try:
        return image_size(path)
    except OSError as err:
        raise RecordError("image", f"{path}: not a readable image ({err})", "unreadable image") from None


def rendered(record: Record, locations: Locations, image_root: Path | None) -> list[str]:
    """Every message's content with its slots written by ``locations`` (the image size read only when needed)."""
    size = record_size(record, image_root) if has_slots(record) else None
    try:
        return locations.render(record, size)
    except ValueError as err:
        raise RecordError("messages", str(err), "unrenderable") from None


def tagged(record: Record, contents: Sequence[str], tag: str) -> list[tuple[str, str]]:
    """``(role, content)`` per message with ``tag`` in front of the first user turn when the record has an image."""
    out, placed = [], record.image is None
    for message, content in zip(record.messages, contents, strict=True):
        if not placed and message.role == "user":
            content, placed = tag + content, True
        out.append((message.role, content))
    return out


def _dump(path: Path, text_chunks: Iterable[str]) -> None:
    """Write ``text_chunks`` to ``path`` atomically (a temporary file in the same folder, then a rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for chunk in text_chunks:
                f.write(chunk)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _lines(rows: list[dict], jsonl: bool) -> Iterable[str]:
    # A JSON list with one row per line: what LLaVA-style loaders `json.load`, still readable with grep.
    dumps = [json.dumps(r, ensure_ascii=False, allow_nan=False) for r in rows]
    if jsonl:
        yield from (d + "\n" for d in dumps)
        return
    yield "[\n" + ",\n".join(dumps) + "\n]\n"


def write_export(
    exporter: Exporter,
    records: Iterable[Record],
    out: PathLike,
    *,
    image_root: PathLike | None = None,
    on_error: OnError = "raise",
    report: ExportReport | None = None,
    where: Callable[[int], str] | None = None,
    progress: Callable[[], None] | None = None,
) -> Path:
    """Export ``records`` into the folder ``out``; returns the data file's path (see the module docstring).

    ``where(i)`` names record ``i``'s origin in errors (default ``record i``); ``progress`` is called once per
    record. Nothing is written when an error is raised.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    report = report if report is not None else ExportReport()
    root = Path(image_root) if image_root is not None else None
    rows = []
    for i, record in enumerate(records):
        report.records += 1
        try:
            rows.append(exporter.row(record, root))
        except RecordError as err:
            error = ExportError(where(i) if where else f"record {i}", record.id, err.field, err.message, err.kind)
            if on_error == "raise":
                raise error from None
            report.skip(error.reason)
        finally:
            if progress is not None:
                progress()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / exporter.file_name
    _dump(path, _lines(rows, path.suffix == ".jsonl"))
    for name, value in exporter.extra_files().items():
        _dump(out / name, [json.dumps(value, ensure_ascii=False, indent=2) + "\n"])
    report.rows += len(rows)
    return path

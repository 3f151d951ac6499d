"""The record: groundlm's dataset contract (docs/data-format.md), its validation and its JSONL file format.

One JSON object per line::

    {"id": "refcoco-val-123", "image": "COCO_train2014_000000581857.jpg",
     "objects": [{"box": [103.9, 299.0, 226.4, 476.9], "label": "the lady", "mask": null}],
     "messages": [{"role": "user", "content": "[refer] give me the location of the lady"},
                  {"role": "assistant", "content": "<box:0>"}],
     "meta": {}}

Boxes are xyxy pixels of the original image. ``<box:i>`` in a message points at ``objects[i]``: an input
location in a user turn, an output location in an assistant turn. Records never hold a model's own coordinate
text, so one record file trains every location codec.

Loading validates every line and reports *all* problems at once (file, line, field), because fixing a
converted dataset one error per run is miserable.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The slot syntax, shared by task builders, codecs and the processor.
BOX_SLOT = re.compile(r"<box:(\d+)>")
# Anything that looks like an attempted slot; used to flag typos such as "<box: 1>" or "<box:a>".
_SLOT_LIKE = re.compile(r"<box\b[^>]*>")

ROLES = ("system", "user", "assistant")
_RECORD_KEYS = {"id", "image", "objects", "messages", "meta"}
_OBJECT_KEYS = {"box", "label", "mask"}
_MESSAGE_KEYS = {"role", "content"}
# How many problems an error message shows; the exception's `.problems` always has all of them.
MAX_SHOWN_PROBLEMS = 50

PathLike = str | os.PathLike


# --------------------------------------------------------------------------------------------------------
# Data classes


@dataclass
class GroundTruthObject:
    """One annotated object: an xyxy pixel box, an optional label and an optional mask (RLE or polygons)."""

    box: tuple[float, float, float, float]
    label: str | None = None
    mask: dict | list | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of this object."""
        return {"box": [float(v) for v in self.box], "label": self.label, "mask": self.mask}


@dataclass
class Message:
    """One conversation turn; ``content`` may contain ``<box:i>`` slots and ``<p>phrase</p>`` tags."""

    role: str
    content: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of this message."""
        return {"role": self.role, "content": self.content}


@dataclass
class Record:
    """One training or evaluation sample (see the module docstring for the JSON layout)."""

    id: str
    image: str | None
    objects: list[GroundTruthObject]
    messages: list[Message]
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of this record, with keys in the documented order."""
        return {
            "id": self.id,
            "image": self.image,
            "objects": [o.to_dict() for o in self.objects],
            "messages": [m.to_dict() for m in self.messages],
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        """Build a record from its JSON form without validating it (use ``validate_record`` for that).

        ``image``, ``objects`` and ``meta`` may be absent (null, empty, empty).
        """
        objects = [
            GroundTruthObject(
                box=tuple(float(v) for v in o["box"]),  # type: ignore[arg-type]
                label=o.get("label"),
                mask=o.get("mask"),
            )
            for o in d.get("objects") or []
        ]
        messages = [Message(role=m["role"], content=m["content"]) for m in d["messages"]]
        return cls(
            id=d["id"],
            image=d.get("image"),
            objects=objects,
            messages=messages,
            meta=dict(d.get("meta") or {}),
        )


# --------------------------------------------------------------------------------------------------------
# Problems


@dataclass(frozen=True)
class Problem:
    """One validation finding: where it is (file, line, field path such as ``objects[0].box``) and what."""

    file: str | None
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = ""
        if self.file is not None:
            where = f"{self.file}:{self.line}: " if self.line is not None else f"{self.file}: "
        elif self.line is not None:
            where = f"line {self.line}: "
        return f"{where}{self.field}: {self.message}"


class RecordValidationError(ValueError):
    """Raised when records fail validation; ``.problems`` lists every finding, the message up to 50."""

    def __init__(self, problems: list[Problem], source: str | None = None):
        self.problems = list(problems)
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''}" + (f" in {source}" if source else "")
        lines = [str(p) for p in self.problems[:MAX_SHOWN_PROBLEMS]]
        if n > MAX_SHOWN_PROBLEMS:
            lines.append(f"... and {n - MAX_SHOWN_PROBLEMS} more")
        super().__init__(head + ":\n" + "\n".join("  " + s for s in lines))


# --------------------------------------------------------------------------------------------------------
# Validation


def _type_name(v: Any) -> str:
    return "null" if v is None else type(v).__name__


def _is_number(v: Any) -> bool:
    # bool is an int subclass, but `true` as a coordinate is certainly a mistake.
    return isinstance(v, int | float) and not isinstance(v, bool)


def _check_box(box: Any, where: str, out: list[Problem]) -> None:
    if not isinstance(box, list | tuple) or len(box) != 4:
        out.append(Problem(None, None, where, f"expected a list of 4 numbers [x1, y1, x2, y2], got {box!r}"))
        return
    if not all(_is_number(v) for v in box):
        out.append(Problem(None, None, where, f"expected 4 numbers, got {box!r}"))
        return
    if not all(math.isfinite(v) for v in box):
        out.append(Problem(None, None, where, f"coordinates must be finite, got {box!r}"))
        return
    x1, y1, x2, y2 = box
    if x1 > x2 or y1 > y2:
        out.append(Problem(None, None, where, f"expected x1 <= x2 and y1 <= y2 (xyxy pixels), got {box!r}"))
    if min(box) < 0:
        out.append(Problem(None, None, where, f"coordinates must be non-negative pixels, got {box!r}"))


def _check_mask(mask: Any, where: str, out: list[Problem]) -> None:
    if mask is None:
        return
    if isinstance(mask, dict):
        # COCO RLE: {"size": [h, w], "counts": "compressed string" | [run lengths]}.
        if set(mask) != {"size", "counts"}:
            out.append(
                Problem(None, None, where, f"RLE mask needs exactly 'size' and 'counts', got {sorted(mask)}")
            )
            return
        size = mask["size"]
        if not (
            isinstance(size, list)
            and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in size)
        ):
            out.append(
                Problem(None, None, f"{where}.size", f"expected [height, width] integers, got {size!r}")
            )
        counts = mask["counts"]
        if isinstance(counts, list):
            if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counts):
                out.append(
                    Problem(None, None, f"{where}.counts", "run lengths must be non-negative integers")
                )
        elif not isinstance(counts, str):
            out.append(
                Problem(None, None, f"{where}.counts", f"expected a string or list, got {_type_name(counts)}")
            )
        return
    if isinstance(mask, list):
        # COCO polygons: a list of rings, each [x1, y1, x2, y2, ...] with at least 3 points.
        if not mask:
            out.append(Problem(None, None, where, "polygon mask is an empty list (use null for no mask)"))
        for k, ring in enumerate(mask):
            ok = (
                isinstance(ring, list)
                and len(ring) >= 6
                and len(ring) % 2 == 0
                and all(_is_number(v) and math.isfinite(v) for v in ring)
            )
            if not ok:
                out.append(
                    Problem(
                        None, None, f"{where}[{k}]", "expected a polygon [x1, y1, x2, y2, ...] of >= 3 points"
                    )
                )
        return
    out.append(
        Problem(None, None, where, f"expected COCO RLE dict, polygon list or null, got {_type_name(mask)}")
    )


def _check_objects(objects: Any, out: list[Problem]) -> None:
    if not isinstance(objects, list):
        out.append(Problem(None, None, "objects", f"expected a list, got {_type_name(objects)}"))
        return
    for i, obj in enumerate(objects):
        where = f"objects[{i}]"
        if not isinstance(obj, dict):
            out.append(Problem(None, None, where, f"expected an object, got {_type_name(obj)}"))
            continue
        for key in sorted(set(obj) - _OBJECT_KEYS):
            out.append(Problem(None, None, f"{where}.{key}", "unknown key (expected box, label, mask)"))
        if "box" not in obj:
            out.append(Problem(None, None, f"{where}.box", "missing"))
        else:
            _check_box(obj["box"], f"{where}.box", out)
        label = obj.get("label")
        if label is not None and not isinstance(label, str):
            out.append(
                Problem(None, None, f"{where}.label", f"expected a string or null, got {_type_name(label)}")
            )
        _check_mask(obj.get("mask"), f"{where}.mask", out)


def _check_content(content: str, where: str, n_objects: int, out: list[Problem]) -> None:
    for m in _SLOT_LIKE.finditer(content):
        slot = BOX_SLOT.fullmatch(m.group(0))
        if slot is None:
            out.append(Problem(None, None, where, f"malformed box slot {m.group(0)!r} (expected <box:N>)"))
            continue
        i = int(slot.group(1))
        if i >= n_objects:
            have = f"{n_objects} object" + ("" if n_objects == 1 else "s")
            out.append(
                Problem(None, None, where, f"<box:{i}> refers to objects[{i}] but the record has {have}")
            )


def _check_messages(messages: Any, n_objects: int, out: list[Problem]) -> None:
    if not isinstance(messages, list):
        out.append(Problem(None, None, "messages", f"expected a list, got {_type_name(messages)}"))
        return
    if not messages:
        out.append(Problem(None, None, "messages", "expected at least one message"))
        return
    previous: str | None = None  # last valid non-system role; drives the alternation check
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, dict):
            out.append(Problem(None, None, where, f"expected an object, got {_type_name(msg)}"))
            continue
        for key in sorted(set(msg) - _MESSAGE_KEYS):
            out.append(Problem(None, None, f"{where}.{key}", "unknown key (expected role, content)"))
        role = msg.get("role")
        # Compare against the previous *valid* turn so one missing turn yields one problem, not a cascade.
        expected = "assistant" if previous == "user" else "user"
        if role not in ROLES:
            allowed = "'system', 'user' or 'assistant'" if i == 0 else "'user' or 'assistant'"
            out.append(Problem(None, None, f"{where}.role", f"expected {allowed}, got {role!r}"))
        elif role == "system":
            if i != 0:
                out.append(Problem(None, None, f"{where}.role", "a system message is only allowed first"))
        elif role != expected:
            first = " (conversations start with the user)" if previous is None else ""
            out.append(Problem(None, None, f"{where}.role", f"expected {expected!r}{first}, got {role!r}"))
            previous = role
        else:
            previous = role
        if "content" not in msg:
            out.append(Problem(None, None, f"{where}.content", "missing"))
            continue
        content = msg["content"]
        if not isinstance(content, str):
            out.append(
                Problem(None, None, f"{where}.content", f"expected a string, got {_type_name(content)}")
            )
            continue
        _check_content(content, f"{where}.content", n_objects, out)


def validate_record(d: Any) -> list[Problem]:
    """Check one decoded JSON line against the record contract; return every problem found (empty = valid).

    The returned problems carry ``file=None, line=None``; the readers fill those in.
    """
    out: list[Problem] = []
    if not isinstance(d, dict):
        return [Problem(None, None, "<record>", f"expected a JSON object, got {_type_name(d)}")]
    # Unknown keys are usually typos ("messsages", "imgae"), which would otherwise silently vanish.
    for key in sorted(set(d) - _RECORD_KEYS):
        out.append(Problem(None, None, key, "unknown key (expected id, image, objects, messages, meta)"))
    rid = d.get("id")
    if not isinstance(rid, str) or not rid:
        out.append(Problem(None, None, "id", f"expected a non-empty string, got {rid!r}"))
    image = d.get("image")
    if image is not None and (not isinstance(image, str) or not image):
        out.append(Problem(None, None, "image", f"expected a non-empty string or null, got {image!r}"))
    objects = d.get("objects", [])
    _check_objects(objects, out)
    n_objects = len(objects) if isinstance(objects, list) else 0
    if "messages" not in d:
        out.append(Problem(None, None, "messages", "missing"))
    else:
        _check_messages(d["messages"], n_objects, out)
    meta = d.get("meta", {})
    if not isinstance(meta, dict):
        out.append(Problem(None, None, "meta", f"expected an object, got {_type_name(meta)}"))
    return out


# --------------------------------------------------------------------------------------------------------
# JSONL reading and writing


def _scan(path: PathLike) -> Iterator[tuple[int, dict | None, list[Problem]]]:
    """Yield ``(line number, decoded dict or None, problems)`` for every non-blank line of a JSONL file."""
    name = str(path)
    # utf-8-sig: tolerate a BOM written by some editors on Windows.
    with open(path, encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                yield (
                    lineno,
                    None,
                    [Problem(name, lineno, "<json>", f"invalid JSON: {e.msg} (column {e.colno})")],
                )
                continue
            problems = [Problem(name, lineno, p.field, p.message) for p in validate_record(d)]
            yield lineno, (d if not problems else None), problems


def iter_jsonl(path: PathLike) -> Iterator[Record]:
    """Stream records from a JSONL file, raising ``RecordValidationError`` at the first invalid line.

    Use this for files too large to hold in memory; ``read_jsonl`` reports every problem at once.
    """
    for _, d, problems in _scan(path):
        if problems:
            raise RecordValidationError(problems, str(path))
        assert d is not None
        yield Record.from_dict(d)


def check_jsonl(path: PathLike, unique_ids: bool = True) -> tuple[list[Record], list[Problem]]:
    """Read a JSONL record file and return its valid records and every problem found, without raising.

    Blank lines are skipped. With ``unique_ids`` a repeated id is a problem too, since evaluation keys
    predictions by id and a duplicate silently overwrites one of them.
    """
    records: list[Record] = []
    problems: list[Problem] = []
    first_line: dict[str, int] = {}
    for lineno, d, line_problems in _scan(path):
        problems.extend(line_problems)
        if d is None:
            continue
        if unique_ids:
            rid = d["id"]
            if rid in first_line:
                problems.append(
                    Problem(
                        str(path), lineno, "id", f"duplicate id {rid!r} (first on line {first_line[rid]})"
                    )
                )
                continue
            first_line[rid] = lineno
        records.append(Record.from_dict(d))
    return records, problems


def read_jsonl(path: PathLike, unique_ids: bool = True) -> list[Record]:
    """Read and validate a JSONL record file; raise ``RecordValidationError`` listing every problem."""
    records, problems = check_jsonl(path, unique_ids)
    if problems:
        raise RecordValidationError(problems, str(path))
    return records


def write_jsonl(path: PathLike, records: Iterable[Record | dict], validate: bool = True) -> None:
    """Write records as JSONL atomically: a temp file in the same directory, then ``os.replace``.

    A crash or a record that fails to serialise leaves any existing file untouched. With ``validate``
    (default) every record is checked first and ``RecordValidationError`` names the output line at fault,
    so an importer can never write a file that ``read_jsonl`` would refuse.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        problems: list[Problem] = []
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for lineno, rec in enumerate(records, start=1):
                d = rec.to_dict() if isinstance(rec, Record) else rec
                if validate:
                    problems.extend(
                        Problem(str(path), lineno, p.field, p.message) for p in validate_record(d)
                    )
                # allow_nan=False: NaN/Infinity are not JSON and other tools would choke on them.
                f.write(json.dumps(d, ensure_ascii=False, allow_nan=False) + "\n")
            if problems:
                raise RecordValidationError(problems, str(path))
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; keep an existing file's permissions, else use the usual 0644.
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        # Remove the partial temp file; the original (if any) was never touched.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise

"""Importers for conversation files: LLaVA / ShareGPT JSON and ms-swift JSONL with grounding ``objects``
(docs/published-systems.md).

- ``from_llava``: a JSON list (or JSON lines) of ``{id, image, conversations: [{from, value}]}``; ``from`` is
  ``human``/``gpt`` (also ``user``/``assistant``/``system``), and ``role``/``content`` turns under ``messages``
  are accepted too. The ``<image>`` tag is removed: the processor places the image itself. Rows without an
  image are text-only records (``image`` null). InternVL's grounding JSONL (``{id, image, width, height,
  conversations}`` with ``<ref>``/``<box>[[…]]</box>``) and Qwen2.5-VL's fine-tuning JSON (``{image,
  conversations}`` with ```` ```json [{"bbox_2d": …}] ``` ```` answers) are this layout.
- ``from_sharegpt``: LLaMA-Factory's sharegpt layout, ``{"messages": [{role, content}], "images": [...]}`` or
  ``{"conversations": [{from, value}], ...}``, with an optional top-level ``system`` prompt (the first message).
- With ``codec`` (a location codec name, `location.CODEC_NAMES`) both read the boxes the turns write in that
  model's format into ``<p>phrase</p><box:k>`` slots and ``objects`` in pixels of the original image
  (``written.WrittenLocations``: frames, image sizes, Qwen2.5-VL's ``input_width``/``input_height``).
- ``from_swift``: ``{"messages": [...], "images": [...], "objects": {"ref": [...], "bbox": [[x1, y1, x2, y2]],
  "bbox_type": "real" | "norm1" | "norm1000"}}`` with ``<ref-object>`` and ``<bbox>`` placeholders in the
  text. Placeholders are consumed in order over the whole conversation, as ms-swift does: the i-th
  ``<ref-object>`` is ``ref[i]`` and the j-th ``<bbox>`` is ``bbox[j]`` (= ``objects[j]`` of the record).
  A ``<ref-object>`` directly followed by a ``<bbox>`` becomes ``<p>ref</p><box:j>`` (a grounded phrase);
  a ``<ref-object>`` on its own becomes the plain words of the reference (a ``<p>`` tag ties a phrase to boxes,
  so a phrase with no box is just text, e.g. "find <ref-object>" → "find the cat"); a lone ``<bbox>`` becomes
  ``<box:j>``. Normalised boxes need the image size: the row's ``width``/``height``, else the image file's
  header (``image_root / images[0]``); without either the row is an error.

Records hold one image, so rows with several images are errors. Ids are ``<file stem>-<row>``; the source id
(if any) is kept in ``meta["source_id"]``. ``meta["task"]`` is the MiniGPT-v2 tag the first user turn
starts with, else ``chat``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ...records import GroundTruthObject, Message, Record
from ...tasks import CHAT, task_of
from .base import Importer, ImportReport, OnError, PathLike, RowError, image_size, json_rows
from .fields import as_dict, get, numbers, pixel_box, positive_int, scaled_box
from .written import WrittenLocations

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
# The tag and the newline LLaVA puts beside it ("<image>\nWhat is…" or "What is…\n<image>").
_IMAGE_TAG = re.compile(r"\n?<image>\n?")
_PLACEHOLDER = re.compile(r"(?P<ref><ref-object>)(?P<grounded>\s*<bbox>)?|(?P<box><bbox>)")
_NORM_SCALE = {"norm1": 1.0, "norm1000": 1000.0}


def _one_image(value: Any, where: str) -> str | None:
    """The single image of a row (a path, a one-element list, or ``{"path": …}``), or None."""
    if isinstance(value, list):
        if len(value) > 1:
            raise RowError(where, f"{len(value)} images; a record holds one image", "unsupported")
        value = value[0] if value else None
    if isinstance(value, dict):
        value = value.get("path")
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise RowError(where, f"expected an image path, got {type(value).__name__}")
    return value


def _turns(row: dict, key: str) -> tuple[list[Message], int]:
    """The row's turns as messages with ``<image>`` removed, and how many ``<image>`` tags there were."""
    messages, tags = [], 0
    for k, turn in enumerate(get(row, key, list)):
        turn = as_dict(turn, f"{key}[{k}]")
        role_key, content_key = ("from", "value") if "from" in turn else ("role", "content")
        role = _ROLES.get(turn.get(role_key))
        if role is None:
            raise RowError(f"{key}[{k}].{role_key}", f"unknown role {turn.get(role_key)!r}")
        content = get(turn, content_key, str, f"{key}[{k}].{content_key}")
        tags += content.count("<image>")
        if "<image>" in content:
            content = _IMAGE_TAG.sub("", content).strip()
        messages.append(Message(role, content))
    return messages, tags


def _check_tags(tags: int, image: str | None, key: str) -> None:
    if tags > 1:
        raise RowError(key, f"{tags} <image> tags; a record holds one image", "unsupported")
    if tags and image is None:
        raise RowError("image", f"the {key} have an <image> tag but the row has no image", "missing")


def _meta(source: str, row: dict, messages: list[Message]) -> dict:
    first_user = next((m.content for m in messages if m.role == "user"), "")
    meta: dict[str, Any] = {"task": task_of(first_user) or CHAT, "source": source}
    if isinstance(row.get("id"), str | int) and not isinstance(row.get("id"), bool):
        meta["source_id"] = row["id"]
    return meta


def from_llava(
    path: PathLike,
    *,
    codec: str | None = None,
    image_root: PathLike | None = None,
    frame: str | None = None,
    bins: int = 100,
    on_error: OnError = "raise",
    report: ImportReport | None = None,
) -> list[Record]:
    """LLaVA / ShareGPT conversations → records (``conversations``/``from``/``value`` or ``messages``/``role``).

    With ``codec``, the locations the turns write in that format become slots and objects (module docstring);
    ``image_root`` (default: the file's folder) finds images for their size when rows lack ``width``/``height``,
    ``frame`` overrides the format's published frame, ``bins`` is the grid of the ``text``/``tokens`` codecs.
    """
    return _conversations(path, "llava", codec, image_root, frame, bins, on_error, report)


def from_sharegpt(
    path: PathLike,
    *,
    codec: str | None = None,
    image_root: PathLike | None = None,
    frame: str | None = None,
    bins: int = 100,
    on_error: OnError = "raise",
    report: ImportReport | None = None,
) -> list[Record]:
    """LLaMA-Factory sharegpt rows (``messages``/``role``/``content`` or ``conversations``/``from``/``value``,
    ``images``, optional ``system``) → records; the arguments are `from_llava`'s."""
    return _conversations(path, "sharegpt", codec, image_root, frame, bins, on_error, report)


def _conversations(path, source, codec, image_root, frame, bins, on_error, report) -> list[Record]:
    stem = Path(path).stem
    reader = WrittenLocations(codec, frame=frame, bins=bins) if codec is not None else None
    root = image_root if image_root is not None else Path(path).parent

    def convert(index: int, row: Any) -> list[Record]:
        row = as_dict(row)
        key = "conversations" if "conversations" in row else "messages"
        image_key = "image" if "image" in row else "images"
        image = _one_image(row.get(image_key), image_key)
        messages, tags = _turns(row, key)
        _check_tags(tags, image, key)
        objects = reader.read(row, messages, key, image, root) if reader is not None else []
        if source == "sharegpt" and row.get("system") is not None:
            messages.insert(0, Message("system", get(row, "system", str)))
        return [Record(f"{stem}-{index}", image, objects, messages, _meta(source, row, messages))]

    return Importer(path, on_error, report).run(json_rows(path), convert)


def _size(row: dict, image: str | None, image_root: PathLike | None) -> tuple[int, int] | None:
    if row.get("width") is not None or row.get("height") is not None:
        return positive_int(row, "width"), positive_int(row, "height")
    if image is None:
        return None
    path = Path(image_root) / image if image_root is not None else Path(image)
    return image_size(path) if path.is_file() else None


def _swift_boxes(row: dict, image: str | None, image_root: PathLike | None) -> tuple[list, list[str]]:
    objects = row.get("objects") or {}
    if not isinstance(objects, dict):
        raise RowError("objects", f"expected an object, got {type(objects).__name__}")
    refs = objects.get("ref") or []
    if not isinstance(refs, list) or not all(isinstance(r, str) and r.strip() for r in refs):
        raise RowError("objects.ref", f"expected a list of non-empty strings, got {refs!r}")
    raw = objects.get("bbox") or []
    if not isinstance(raw, list):
        raise RowError("objects.bbox", f"expected a list of boxes, got {type(raw).__name__}")
    kind = objects.get("bbox_type", "real")
    if kind != "real" and kind not in _NORM_SCALE:
        raise RowError("objects.bbox_type", f"expected 'real', 'norm1' or 'norm1000', got {kind!r}")
    boxes = []
    for j, b in enumerate(raw):
        where = f"objects.bbox[{j}]"
        if isinstance(b, list) and len(b) == 2:
            raise RowError(where, "points ([x, y]) are not supported; records hold boxes", "unsupported")
        boxes.append(numbers(b, 4, where))
    if kind == "real":
        return [pixel_box(b, f"objects.bbox[{j}]") for j, b in enumerate(boxes)], refs
    size = _size(row, image, image_root) if boxes else (0, 0)
    if size is None:
        raise RowError(
            "objects.bbox_type",
            f"{kind} boxes need the image size: add width/height to the row, or pass image_root so "
            f"{image!r} can be read",
            "no image size",
        )
    scale = _NORM_SCALE[kind]
    return [scaled_box(b, scale, size[0], size[1], f"objects.bbox[{j}]") for j, b in enumerate(boxes)], refs


def from_swift(
    path: PathLike,
    *,
    image_root: PathLike | None = None,
    on_error: OnError = "raise",
    report: ImportReport | None = None,
) -> list[Record]:
    """ms-swift rows with ``objects`` → records with ``<p>ref</p>`` and ``<box:j>`` (see the module docstring)."""
    stem = Path(path).stem

    def convert(index: int, row: Any) -> list[Record]:
        row = as_dict(row)
        image = _one_image(row.get("images"), "images")
        messages, tags = _turns(row, "messages")
        _check_tags(tags, image, "messages")
        boxes, refs = _swift_boxes(row, image, image_root)
        labels: list[str | None] = [refs[j] if len(refs) == len(boxes) else None for j in range(len(boxes))]
        n_ref = n_box = 0

        def place(m: re.Match) -> str:
            nonlocal n_ref, n_box
            text = ""
            if m.group("ref"):
                if n_ref >= len(refs):
                    raise RowError("objects.ref", f"more <ref-object> placeholders than {len(refs)} refs")
                text, n_ref = refs[n_ref].strip(), n_ref + 1
                if not m.group("grounded"):
                    return text
            if n_box >= len(boxes):
                raise RowError("objects.bbox", f"more <bbox> placeholders than {len(boxes)} boxes")
            j, n_box = n_box, n_box + 1
            if text:
                labels[j] = text
                return f"<p>{text}</p><box:{j}>"
            return f"<box:{j}>"

        for message in messages:
            message.content = _PLACEHOLDER.sub(place, message.content)
        if n_ref != len(refs):
            raise RowError("objects.ref", f"{len(refs)} refs but {n_ref} <ref-object> placeholders")
        if n_box != len(boxes):
            raise RowError("objects.bbox", f"{len(boxes)} boxes but {n_box} <bbox> placeholders")
        objects = [GroundTruthObject(box=b, label=labels[j]) for j, b in enumerate(boxes)]
        meta = _meta("swift", row, messages)
        return [Record(f"{stem}-{index}", image, objects, messages, meta)]

    return Importer(path, on_error, report).run(json_rows(path), convert)

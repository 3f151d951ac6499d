"""Importer for ODVG, the JSON-lines layout Grounding DINO trainers read (Open-GroundingDino, MM-Grounding-DINO).

Layout, as documented in open-mmlab/mmdetection ``configs/mm_grounding_dino/dataset_prepare.md`` ("Pretraining
Custom Format Explanation") and read by longzw1997/Open-GroundingDino ``datasets/odvg.py``: one JSON object per
line with ``filename`` (relative to the image root), ``height``, ``width`` and

- ``detection`` (object detection, "OD"): ``{"instances": [{"bbox": [x1, y1, x2, y2], "label": 2,
  "category": "chair"}]}``, boxes in pixels; ``label`` indexes a separate label map file
  (``{"0": "cat", …}``), and ``category`` repeats the name, though converters may leave it out;
- ``grounding`` (phrase grounding, "VG"): ``{"caption": "Two surfers walking down the shore. sand on the
  beach.", "regions": [{"bbox": [206, 156, 282, 248], "phrase": "Two surfers", "tokens_positive": [[0, 3],
  [4, 11]]}]}``; a region's ``bbox`` is one box or a list of boxes, and ``tokens_positive`` lists the
  character spans ``[start, end)`` of the phrase in the caption (a phrase may be split word by word, as above).
  Open-GroundingDino's Flickr30k converter writes no ``tokens_positive``, one region per box.

A row may carry both. What becomes of them:

- ``detection`` → one ``[detection]`` record per category, as every detection record in groundlm is (a phrase
  in, all of its boxes out: ``<p>chair</p><box:0><box:1>``), ids ``<file stem>-<row>-det-<k>``. The name is
  ``category``, else ``label_map[str(label)]`` (``label_map``: the label map file or a dict); without either
  the row is an error.
- ``grounding`` → one ``[grounding]`` record, id ``<file stem>-<row>``, whose answer is the caption with each
  region's words written ``<p>words</p><box:i>…`` where its ``tokens_positive`` place it. Spans separated only
  by whitespace join into one phrase (``[[0, 3], [4, 11]]`` is "Two surfers"); spans further apart are separate
  mentions of the same boxes. Regions with the same spans share one phrase and all of their boxes (the
  Flickr30k converter's one region per box). Without ``tokens_positive`` the phrase's first case-insensitive
  occurrence in the caption is used, and a phrase not in the caption is an error. The caption's own words are
  written, the region's ``phrase`` is the objects' label. Phrases that overlap one placed before them (nested
  spans: "the man" and "man") cannot both be tagged, so the later one (by start, the longer first) is left out
  and counted as ``overlapping tokens_positive``; a caption left without a region is counted as
  ``no grounded region``.

Boxes are kept inside the ``width`` x ``height`` image. ``meta`` holds ``width``, ``height`` and, for
grounding, the ``caption``. A broken row raises an ``ImportRowError`` naming the file, line and field
(``grounding.regions[2].tokens_positive``), or is skipped and counted with ``on_error="skip"``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...geometry import clip_box
from ...records import GroundTruthObject, Record
from .. import tasks
from .base import Importer, ImportOptions, PathLike, RowError, json_rows, load_json
from .fields import as_dict, get, get_text, numbers, pixel_box, positive_int

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

Box = tuple[float, float, float, float]
Span = tuple[int, int]


def _label_map(label_map: PathLike | Mapping | None) -> dict[str, str]:
    if label_map is None:
        return {}
    data = label_map if isinstance(label_map, Mapping) else load_json(label_map)
    if not isinstance(data, Mapping) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"{label_map}: a label map is a JSON object of label → category name")
    return {str(k): v for k, v in data.items()}


def _boxes(value: Any, width: int, height: int, where: str) -> list[Box]:
    """One box or a list of boxes, xyxy pixels kept inside the image."""
    many = isinstance(value, list) and bool(value) and all(isinstance(b, list) for b in value)
    raw = value if many else [value]
    out = []
    for j, b in enumerate(raw):
        at = f"{where}[{j}]" if many else where
        out.append(pixel_box(list(clip_box(pixel_box(numbers(b, 4, at), at), width, height)), at))
    return out


def _detection_records(
    row: dict, image: str, size: tuple[int, int], names: dict[str, str], rid: str, rng
) -> list[Record]:
    detection = as_dict(row["detection"], "detection")
    by_category: dict[str, list[Box]] = {}
    for k, inst in enumerate(get(detection, "instances", list, "detection.instances")):
        where = f"detection.instances[{k}]"
        inst = as_dict(inst, where)
        category = inst.get("category")
        if category is None:
            label = inst.get("label")
            if label is None or str(label) not in names:
                raise RowError(f"{where}.category", "missing, and no label map names its label", "missing")
            category = names[str(label)]
        if not isinstance(category, str) or not category.strip():
            raise RowError(f"{where}.category", f"expected a non-empty string, got {category!r}")
        by_category.setdefault(category.strip(), []).extend(_boxes(inst.get("bbox"), *size, f"{where}.bbox"))
    out = []
    for k, (category, boxes) in enumerate(by_category.items()):
        objects = [GroundTruthObject(box=b, label=category) for b in boxes]
        messages = tasks.detection(category, list(range(len(objects))), rng, eval=rng is None)
        meta = {"task": "detection", "source": "odvg", "width": size[0], "height": size[1]}
        out.append(Record(f"{rid}-det-{k}", image, objects, messages, meta))
    return out


def _spans(region: dict, caption: str, where: str) -> tuple[Span, ...]:
    """A region's mentions in the caption: its ``tokens_positive`` with whitespace-separated spans joined."""
    value = region.get("tokens_positive")
    if value is None:
        phrase = get_text(region, "phrase", f"{where}.phrase").strip()
        m = re.search(re.escape(phrase), caption, re.IGNORECASE)
        if m is None:
            raise RowError(f"{where}.phrase", f"{phrase!r} is not in the caption and there is no tokens_positive")
        return ((m.start(), m.end()),)
    if not isinstance(value, list) or not value:
        raise RowError(f"{where}.tokens_positive", f"expected a list of [start, end] spans, got {value!r}")
    spans = []
    for j, span in enumerate(value):
        s, e = numbers(span, 2, f"{where}.tokens_positive[{j}]")
        if not (s == int(s) and e == int(e) and 0 <= s < e <= len(caption)):
            raise RowError(
                f"{where}.tokens_positive[{j}]",
                f"{span!r} is not a span of the {len(caption)}-character caption",
                "bad span",
            )
        if not caption[int(s) : int(e)].strip():
            raise RowError(f"{where}.tokens_positive[{j}]", f"{span!r} covers only whitespace", "bad span")
        spans.append((int(s), int(e)))
    spans.sort()
    joined = [spans[0]]
    for s, e in spans[1:]:
        last_s, last_e = joined[-1]
        if s <= last_e or not caption[last_e:s].strip():
            joined[-1] = (last_s, max(last_e, e))
        else:
            joined.append((s, e))
    return tuple(joined)


def _grounded_caption(row: dict, size: tuple[int, int], importer: Importer) -> tuple[str, list, str] | None:
    grounding = as_dict(row["grounding"], "grounding")
    caption = get_text(grounding, "caption", "grounding.caption")
    groups: dict[tuple[Span, ...], tuple[str, list[Box]]] = {}
    for k, region in enumerate(get(grounding, "regions", list, "grounding.regions")):
        where = f"grounding.regions[{k}]"
        region = as_dict(region, where)
        phrase = get_text(region, "phrase", f"{where}.phrase").strip()
        boxes = _boxes(region.get("bbox"), *size, f"{where}.bbox")
        groups.setdefault(_spans(region, caption, where), (phrase, []))[1].extend(boxes)
    objects: list[GroundTruthObject] = []
    placed: list[tuple[Span, list[int]]] = []
    for spans, (phrase, boxes) in sorted(groups.items(), key=lambda g: (g[0][0][0], -g[0][0][1])):
        if any(s < e2 and s2 < e for s, e in spans for (s2, e2), _ in placed):
            importer.report.skip("overlapping tokens_positive")
            continue
        indices = list(range(len(objects), len(objects) + len(boxes)))
        objects.extend(GroundTruthObject(box=b, label=phrase) for b in boxes)
        placed.extend((span, indices) for span in spans)
    if not placed:
        importer.report.skip("no grounded region")
        return None
    pieces, pos = [], 0
    for (s, e), indices in sorted(placed):
        pieces.append(caption[pos:s])
        pieces.append(tasks.ground(caption[s:e], indices))
        pos = e
    pieces.append(caption[pos:])
    return "".join(pieces).strip(), objects, caption


def from_odvg(
    path: PathLike,
    *,
    label_map: PathLike | Mapping | None = None,
    **options: Unpack[ImportOptions],
) -> list[Record]:
    """ODVG rows → ``[detection]`` records per category and ``[grounding]`` records (see the module docstring)."""
    names = _label_map(label_map)
    stem = Path(path).stem
    importer = Importer(path, **options)
    rng = importer.rng

    def convert(index: int, row: Any) -> list[Record]:
        row = as_dict(row)
        image = get_text(row, "filename")
        size = (positive_int(row, "width"), positive_int(row, "height"))
        if row.get("detection") is None and row.get("grounding") is None:
            raise RowError("detection", "the row has neither 'detection' nor 'grounding'", "missing")
        out = []
        if row.get("detection") is not None:
            out.extend(_detection_records(row, image, size, names, f"{stem}-{index}", rng))
        if row.get("grounding") is not None:
            grounded = _grounded_caption(row, size, importer)
            if grounded is not None:
                text, objects, caption = grounded
                meta = {"task": "grounding", "source": "odvg", "caption": caption, "width": size[0],
                        "height": size[1]}
                messages = tasks.grounding(text, rng, eval=rng is None)
                out.append(Record(f"{stem}-{index}", image, objects, messages, meta))
        return out

    return importer.run(json_rows(path), convert)

"""The location format of Qwen2.5-VL: a JSON list `[{"bbox_2d": [x1, y1, x2, y2], "label": "small cake"}]`,
usually fenced in ```` ```json … ``` ````.

Source: Qwen2.5-VL (QwenLM/Qwen2.5-VL README "absolute coordinate and JSON formats"; cookbooks/
spatial_understanding.ipynb, read through a third-party copy). The numbers are integer ABSOLUTE PIXELS of the
resized model input (the cookbook maps them back with `bbox_2d[0] / input_width * width`), i.e. of the original
image squashed to the input, so `frame = "resize"`. Qwen's own processor picks the input size per image
(`smart_resize`, multiples of 28); here the processor's input is the square `size` × `size` (a required keyword
field, the processor's image_size), so `quantize` is `round(v * size)` (half up, clamped to 0..size) and
`dequantize` is `px / size`, the cookbook's division. A number above `size` (or negative) drops its box.

Points. A record has no point slot; an object whose box is degenerate, (x, y, x, y), is a point
(`objects.point_of`). An answer writes it `{"point_2d": [x, y], "label": …}`, in pixels of the same input as
`bbox_2d` (the JSON point form Qwen2.5-VL answers "point to …" requests with; it is not in
/work/shared/reference, so UNCONFIRMED here), and a prompt writes it inline as `[x, y]`. The parser reads
`point_2d` objects and also the cookbook's XML `<points x1="…" y1="…" alt="…">phrase</points>` (more points as
`x2`/`y2`, …; the phrase, else `alt`, is the label), both as point objects (`GroundedObject.at`).

Rendering (our choice where nothing is published):
- an assistant turn (`output=True`) with slots becomes the JSON list alone, one object per slot in order: a
  phrase's slots get `"label": "<its words>"`, a bare slot `"label": null`; words outside the phrases are not
  written (the published answers are the JSON alone). An answer without slots keeps its words (phrase tags
  removed).
- a user turn (`output=False`) keeps its words and writes each slot inline as its `[x1, y1, x2, y2]` array.

Parsing never runs json.loads on the whole text (a model's JSON is often cut off or broken): one regex of
bounded tokens (`{`, `}`, a `"bbox_2d": [4 numbers]` or `"point_2d": [2 numbers]` array, a `"label": "…"` of at
most 500 characters or `null`, an XML `<points …>…</points>` element) walks the text in order, and each
`{ … }` gives one object with its bbox or point and label (either order; one with no closing brace still
counts). Only the bounded label string goes through json.loads. Linear in the text,
never raises. An empty or null label gives phrase None; swapped corners are put in order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..records import BOX_SLOT
from .codec import WrittenLocations
from .objects import BoxNorm, GroundedObject, PointNorm, point_of
from .qwen_vl import round_half_up
from .scan import (
    SlotText,
    check_bins,
    checked_box,
    never_raising,
    number_words,
    ordered,
    slot_box,
    slots_never_raising,
    tidy,
)

# optional sign and decimals: a negative number is seen whole (and dropped), a fractional pixel is read as it is
_NUMBER = r"-?\d{1,9}(?:\.\d{1,9})?"
_NUM = f"({_NUMBER})"
_TOKENS = re.compile(
    rf'(?P<bbox>"\s*bbox_2d\s*"\s*:\s*\[\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*\])'
    rf'|(?P<point>"\s*point_2d\s*"\s*:\s*\[\s*{_NUM}\s*,\s*{_NUM}\s*\])'
    r'|"\s*label\s*"\s*:\s*(?:(?P<label>"(?:[^"\\]|\\.){0,500}")|(?P<null>null))'
    # the cookbook's XML points: every attribute run starts at `<points`, so no text is read by two attempts
    rf'|<points?(?P<xy>(?:\s+x\d{{0,3}}\s*=\s*"\s*{_NUMBER}\s*"\s+y\d{{0,3}}\s*=\s*"\s*{_NUMBER}\s*")+)'
    r'(?:\s+alt\s*=\s*"(?P<alt>[^"<]{0,500})")?\s*>(?P<words>[^<]{0,500})</points?>'
    # a run of braces is one object boundary: one token for it keeps `{{{{…` to one step
    r"|(?P<edge>[{}][{}\s]*)",
    re.DOTALL,
)
_XY = re.compile(rf'"\s*({_NUMBER})\s*"')
# A prompt's inline `[x1, y1, x2, y2]` or `[x, y]` (bounded numbers and spaces: one attempt per `[`).
_SEP = r"\s{0,8},\s{0,8}"
_INLINE = re.compile(rf"\[\s{{0,8}}{_NUM}{_SEP}{_NUM}(?:{_SEP}{_NUM}{_SEP}{_NUM})?\s{{0,8}}\]")
_POINT_XY = _TOKENS.groupindex["point"] + 1  # the point's x and y groups follow its own
_PHRASE_RUN = re.compile(rf"(?:<p>(?P<words>[^<]*)</p>)?(?P<run>(?:{BOX_SLOT.pattern})+)")
_PHRASE_TAGS = re.compile(r"</?p>")
_FENCE = re.compile(r"```(?:json)?")
# Between two objects of one JSON list, and what closes the list after its last object (`}`, `]`, the fence).
_NEXT_OBJECT = re.compile(r"\s*\}\s*,\s*\{\s*")
_LIST_START = re.compile(r"(?:```(?:json)?\s*)?(?:\[\s*)?(?:\{\s*)?\Z")
_LIST_END = re.compile(r"(?:\s*\})?(?:\s*\])?(?:\s*```)?")


def _label(token: str) -> str | None:
    try:
        value = json.loads(token)
    except ValueError:  # a bad escape inside: keep the raw words
        value = token[1:-1]
    return " ".join(value.split()) or None if isinstance(value, str) else None


@dataclass(frozen=True)
class Qwen25VLLocationCodec(WrittenLocations):
    """Boxes as JSON `{"bbox_2d": [x1, y1, x2, y2], "label": …}` in pixels of the `size`-square input."""

    size: int = field(kw_only=True)  # the processor's square input side in pixels
    fence: bool = True  # wrap an answer's JSON in ```json … ``` as Qwen2.5-VL writes it

    # The numbers are pixels of the original image squashed to the model's input (no padding).
    frame = "resize"
    pixels = True  # absolute pixels of the model's input

    def __post_init__(self) -> None:
        check_bins(self.size, 1)

    def quantize(self, box_norm: Sequence[float]) -> tuple[int, int, int, int]:
        """[0, 1] coordinates → pixels 0..size, `round(v * size)` half up."""
        q = [round_half_up(v, self.size) for v in checked_box(box_norm)]
        return (q[0], q[1], q[2], q[3])

    def dequantize(self, q: Sequence[float]) -> BoxNorm:
        """Pixels → [0, 1] coordinates, `px / size` as the cookbook divides by the input width/height."""
        return (q[0] / self.size, q[1] / self.size, q[2] / self.size, q[3] / self.size)

    def quantize_point(self, point_norm: Sequence[float]) -> tuple[int, int]:
        """A point's [0, 1] coordinates → pixels 0..size, rounded as `quantize` rounds a box's."""
        x, y = (round_half_up(float(v), self.size) for v in point_norm)
        return (x, y)

    def _numbers(self, box_norm: Sequence[float]) -> list[int]:
        """What a slot writes: `[x, y]` for a point (a degenerate box), else the box's 4 pixels."""
        point = point_of(checked_box(box_norm))
        return list(self.quantize_point(point) if point is not None else self.quantize(box_norm))

    def render(self, content: str, boxes_norm: Sequence[Sequence[float]], *, output: bool = True) -> str:
        """See the module docstring: an answer with slots becomes the JSON list, a prompt keeps its words."""
        if not output:
            written = BOX_SLOT.sub(lambda s: json.dumps(self._numbers(slot_box(s, boxes_norm))), content)
            return _PHRASE_TAGS.sub("", written)
        objects = []
        for m in _PHRASE_RUN.finditer(content):
            label = " ".join(m.group("words").split()) or None if m.group("words") is not None else None
            for s in BOX_SLOT.finditer(m.group("run")):
                numbers = self._numbers(slot_box(s, boxes_norm))
                key = "point_2d" if len(numbers) == 2 else "bbox_2d"
                objects.append(f'{{"{key}": {json.dumps(numbers)}, "label": {json.dumps(label, ensure_ascii=False)}}}')
        if not objects:
            return _PHRASE_TAGS.sub("", content)
        listed = "[" + ", ".join(objects) + "]"
        return f"```json\n{listed}\n```" if self.fence else listed

    def _box(self, numbers: Sequence[str]) -> BoxNorm | None:
        values = [float(n) for n in numbers]
        if min(values) < 0 or max(values) > self.size:
            return None
        return self.dequantize(ordered(values))

    def parse(self, text: str, decoded: Sequence[Sequence[float]] = ()) -> list[GroundedObject]:
        """The grounded objects of the JSON in `text`, in order; never raises. `decoded` is ignored."""
        return never_raising(self._parse, text)

    def _point(self, x: str, y: str) -> PointNorm | None:
        values = (float(x), float(y))
        if min(values) < 0 or max(values) > self.size:
            return None
        return (values[0] / self.size, values[1] / self.size)

    def _xml_points(self, m: re.Match[str]) -> list[GroundedObject]:
        """The points of one `<points x1=".." y1=".." …>phrase</points>` element (the phrase, else alt, labels)."""
        numbers = _XY.findall(m.group("xy"))  # x, y alternate: the pattern matched them in pairs
        label = " ".join(m.group("words").split()) or " ".join((m.group("alt") or "").split()) or None
        points = (self._point(numbers[i], numbers[i + 1]) for i in range(0, len(numbers) - 1, 2))
        return [GroundedObject.at(label, *p) for p in points if p is not None]

    def _parse(self, text: str) -> list[GroundedObject]:
        objects: list[GroundedObject] = []
        # the bboxes and points of the JSON object being read (normally one), None where out of range
        found: list[GroundedObject | None] = []
        label: str | None = None

        def flush() -> None:
            for o in found:
                if o is not None:
                    o.phrase = label
                    objects.append(o)
            found.clear()

        for m in _TOKENS.finditer(text):
            if m.group("edge"):
                # an object boundary: what was read so far belongs to the object it ends
                flush()
                label = None
            elif m.group("bbox"):
                box = self._box(m.groups()[1:5])
                found.append(None if box is None else GroundedObject(None, box))
            elif m.group("point"):
                point = self._point(m.group(_POINT_XY), m.group(_POINT_XY + 1))
                found.append(None if point is None else GroundedObject.at(None, *point))
            elif m.group("xy"):
                flush()
                objects.extend(self._xml_points(m))
            elif m.group("label"):
                label = _label(m.group("label"))
            else:
                label = None
        flush()
        return objects

    def to_slots(self, text: str, first: int = 0, *, output: bool = True) -> tuple[str, list[BoxNorm]]:
        """```` ```json\n[{"bbox_2d": [..], "label": "cat"}, {…}]\n``` ```` → `<p>cat</p><box:0>…` (the inverse of
        an answer's `render`; the objects `parse` reads, in order). A JSON list becomes its objects' slots, with
        its brackets, braces and fence; objects in a row with one label become one phrase with several slots, a
        null label bare slots. Words outside the JSON stay. An object without a valid bbox stays as written. With
        `output` False (a user turn) the inline `[x1, y1, x2, y2]` / `[x, y]` arrays a prompt's `render` writes
        are read instead; `parse` never reads those in answers, where any four numbers would look like one.
        Never raises."""
        return slots_never_raising(self._to_slots if output else self._prompt_slots, text, first)

    def _prompt_slots(self, text: str, first: int) -> tuple[str, list[BoxNorm]]:
        # a user turn's inline arrays, as `render(output=False)` writes them: 4 numbers a box, 2 a point
        out = SlotText(text, first)
        for m in _INLINE.finditer(text):
            numbers = [n for n in m.groups() if n is not None]
            if len(numbers) == 2:
                point = self._point(*numbers)
                box = None if point is None else (*point, *point)
            else:
                box = self._box(numbers)
            if box is not None:
                out.replace(m.start(), m.end(), out.slots([box]))
        return out.result()

    def _to_slots(self, text: str, first: int) -> tuple[str, list[BoxNorm]]:
        # each object read like `_parse`, with the span of its first and last bbox/label token
        objects: list[tuple[int, int, str | None, list[BoxNorm]]] = []
        boxes: list[BoxNorm | None] = []
        label: str | None = None
        start = end = -1

        def close() -> None:
            nonlocal boxes, start
            valid = [b for b in boxes if b is not None]
            if valid:
                objects.append((start, end, label, valid))
            boxes, start = [], -1

        for m in _TOKENS.finditer(text):
            if m.group("edge"):
                if boxes:
                    close()
                label, start = None, -1
                continue
            if m.group("xy"):  # the cookbook's XML points are left as written
                continue
            start = m.start() if start < 0 else start
            end = m.end()
            if m.group("bbox"):
                boxes.append(self._box(m.groups()[1:5]))
            elif m.group("point"):  # a point's slot holds its degenerate box, as records keep points
                point = self._point(m.group(_POINT_XY), m.group(_POINT_XY + 1))
                boxes.append(None if point is None else (*point, *point))
            else:
                label = _label(m.group("label")) if m.group("label") else None
        if boxes:
            close()
        out = SlotText(text, first)
        last = 0  # where the previous replacement ended
        joined = False  # whether this object continues the JSON list of the one before
        for i, (start, end, lab, found) in enumerate(objects):
            merge = joined and objects[i - 1][2] == lab  # one label in a row: one phrase, several slots
            joined_before = joined
            if not joined:  # a list starts here: back over the `{`, `[` and fence that open it
                opening = _LIST_START.search(text, last, start)
                last = opening.start() if opening else start
            nxt = objects[i + 1][0] if i + 1 < len(objects) else -1
            joined = nxt >= 0 and _NEXT_OBJECT.fullmatch(text, end, nxt) is not None
            closing = None if joined else _LIST_END.match(text, end)
            stop = closing.end() if closing else end
            # bare slots right after a phrase's get a space, else they would be the phrase's
            prefix = "" if merge else " " if lab is None and joined_before else "" if lab is None else f"<p>{lab}</p>"
            out.replace(last, stop, prefix + out.slots(found))
            last = stop
        return out.result()

    def strip(self, text: str) -> str:
        """The answer for people: the labels of its objects joined by ", " when it holds boxes, else the text
        without code fences."""
        if not isinstance(text, str):
            return ""
        objects = self.parse(text)
        if objects:
            return ", ".join(o.phrase for o in objects if o.phrase)
        return tidy(text, _FENCE)

    def special_tokens(self) -> list[str]:
        """For a word-level tokenizer: the JSON's punctuation and keys, and the pixel values 0..size."""
        return ["`", "json", "[", "]", "{", "}", ":", ",", '"', "bbox_2d", "point_2d", "label", "null",
                *number_words(self.size)]

    def added_tokens(self) -> list[str]:
        """None: the JSON is plain text."""
        return []

    def coordinate_tokens(self) -> list[str] | None:
        """None: the coordinates are plain digits."""
        return None


__all__ = ["Qwen25VLLocationCodec"]

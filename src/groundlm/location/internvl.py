"""The location format of InternVL2 / 2.5: `<ref>cat</ref><box>[[302, 257, 582, 671]]</box>`.

Source: InternVL (OpenGVLab/InternVL internvl_chat/eval/refcoco/evaluate_grounding.py, streamlit_demo/app.py,
internvl_chat/internvl/train/constants.py; VLMEvalKit vlmeval/vlm/internvl/utils.py). A box is `[x1, y1, x2, y2]`
(comma and space), integers 0..1000 of the ORIGINAL image squashed to the model's input (`frame = "resize"`);
all boxes of one phrase are one list inside one `<box>`: `<box>[[x1, y1, x2, y2], [x1, y1, x2, y2]]</box>`.

Quantisation. Both published parsers divide by 1000 (`predict_bbox / 1000`, `/1000 * width`), so `dequantize` is
`q / 1000` and `quantize` is `round(v * 1000)` (round half up, clamped to 0..1000): the production rounding is
UNCONFIRMED, and rounding keeps render→parse within half a bin. A number above 1000 drops its box.

Parsing is tolerant where outputs differ: whitespace anywhere between numbers, brackets and tags; a list without
the `<box>` tags (InternVL's eval prompt ends at `</ref>` and its regex reads a bare `[[..]]`); swapped corners put
in order; an inner list with other than 4 numbers dropped. A phrase owns the lists that follow its `</ref>` with
only whitespace in between; other boxes are bare. The regexes have bounded tokens and no nested quantifier over
the same characters (numbers are separated by required commas), so parsing is linear in the text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .codec import WrittenLocations
from .objects import BoxNorm, GroundedObject
from .qwen_vl import NUM, RefBoxScan, pair_refs, ref_slots, render_slots, round_half_up
from .scan import checked_box, number_words, ordered, tidy

_INNER = rf"\[\s*{NUM}(?:\s*,\s*{NUM})*\s*\]"
_LIST = rf"\[\s*{_INNER}(?:\s*,\s*{_INNER})*\s*\]"
_INNER_RE = re.compile(_INNER)
_NUM_RE = re.compile(NUM)
_TAGS = ["<ref>", "</ref>", "<box>", "</box>"]
# `<box>` and `</box>` each optional around a list of lists
_SCAN = RefBoxScan.build("<ref>", "</ref>", rf"(?:<box>\s*)?{_LIST}(?:\s*</box>)?", _TAGS)


@dataclass(frozen=True)
class InternVLLocationCodec(WrittenLocations):
    """Boxes as `<box>[[x1, y1, x2, y2], ...]</box>`, integers 0..1000 (÷1000), phrases as `<ref>..</ref>`."""

    # The published numbers refer to the original image squashed to the model's input (no padding).
    frame = "resize"
    bins = 1000  # the largest value and the denominator of both published parsers

    def quantize(self, box_norm: Sequence[float]) -> tuple[int, int, int, int]:
        """[0, 1] coordinates → integers 0..1000, `round(v * 1000)` half up (module docstring)."""
        q = [round_half_up(v, self.bins) for v in checked_box(box_norm)]
        return (q[0], q[1], q[2], q[3])

    def dequantize(self, q: Sequence[int]) -> BoxNorm:
        """Integers 0..1000 → [0, 1] coordinates, `q / 1000` as InternVL's parsers do."""
        return (q[0] / self.bins, q[1] / self.bins, q[2] / self.bins, q[3] / self.bins)

    def box_text(self, box_norm: Sequence[float]) -> str:
        """One inner list: `[x1, y1, x2, y2]`."""
        return "[{}, {}, {}, {}]".format(*self.quantize(box_norm))

    def render(self, content: str, boxes_norm: Sequence[Sequence[float]], *, output: bool = True) -> str:
        """`content` with each run of `<box:i>` slots written as ONE `<box>[[..], [..]]</box>` and `<p>phrase</p>`
        as `<ref>phrase</ref>`. `output` changes nothing."""
        return render_slots(content, boxes_norm, lambda texts: f"<box>[{', '.join(texts)}]</box>", self.box_text,
                            "<ref>", "</ref>")

    def _boxes_of(self, m: re.Match[str]) -> list[BoxNorm]:
        boxes: list[BoxNorm] = []
        for inner in _INNER_RE.finditer(m.group("loc")):
            q = [int(n) for n in _NUM_RE.findall(inner.group(0))]
            if len(q) == 4 and max(q) <= self.bins:
                boxes.append(self.dequantize(ordered(q)))
        return boxes

    def parse(self, text: str, decoded: Sequence[Sequence[float]] = ()) -> list[GroundedObject]:
        """The grounded objects written in `text`, in order; never raises. `decoded` is ignored."""
        return pair_refs(text, _SCAN, self._boxes_of)

    def to_slots(self, text: str, first: int = 0, *, output: bool = True) -> tuple[str, list[BoxNorm]]:
        """`<ref>cat</ref><box>[[..], [..]]</box>` → `<p>cat</p><box:0><box:1>`, and a `<ref>` without a box
        → `<p>words</p>` (the inverse of `render`, see `qwen_vl.ref_slots`). Never raises."""
        return ref_slots(text, _SCAN, self._boxes_of, first)

    def strip(self, text: str) -> str:
        """The answer for people: phrase words kept, tags and box lists removed, whitespace normalised."""
        return tidy(text, _SCAN.markup) if isinstance(text, str) else ""

    def special_tokens(self) -> list[str]:
        """The four tags, and for a word-level tokenizer the punctuation and the numbers 0..1000 of a box."""
        return [*_TAGS, "[", "]", ",", *number_words(1000)]

    def added_tokens(self) -> list[str]:
        """The four tags: InternVL adds them to its tokenizer (train/constants.py)."""
        return list(_TAGS)

    def coordinate_tokens(self) -> list[str] | None:
        """None: the coordinates are plain digits."""
        return None


__all__ = ["InternVLLocationCodec"]

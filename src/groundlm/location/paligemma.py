"""The `paligemma` location codec: PaliGemma's `<locNNNN>` detections (Beyer et al. 2024, "PaliGemma: A
versatile 3B VLM for transfer"; format as in google-research/big_vision, `pp/proj/paligemma`).

Format: `<loc0256><loc0100><loc0768><loc0900> cat ; <loc…>×4 dog` — a box is four tokens in the order
**y1, x1, y2, x2**, its phrase follows after a space, and detections are separated by ` ; `. Quantisation is
big_vision's `tf.round(v * 1023)` clipped to 0..1023 (Python's `round` rounds halves to even like `tf.round`);
dequantisation is big_vision's `k / 1023`. Third-party (HF-side) material decodes with `/ 1024`; we follow
big_vision's 1023, so a round trip is off by at most half a step (1 / 2046). The detection string and the
` ; ` separator come from third-party material only (unconfirmed by big_vision).

`render` writes each box of a phrase as its own detection (`<loc…>×4 two dogs ; <loc…>×4 two dogs`) and puts
` ; ` between detections that follow each other with nothing in between. Parsing reads a run of location
tokens four at a time (an incomplete rest or a bin > 1023 is dropped, swapped corners are ordered), and every
box of the run gets the words after it up to the next `;`, `<` or line end as its phrase (None when empty), so
free words between detections become part of the phrase before them — the format has no closing mark. Never
raises.

Frame: "resize" — PaliGemma squashes the image to a 224/448/896 square without padding.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .codec import WrittenLocations
from .objects import BoxNorm, GroundedObject
from .phrased import phrase_of, render_groups
from .scan import SlotText, checked_box, never_raising, ordered, slots_never_raising, tidy

_STEPS = 1023  # big_vision's largest bin: v * 1023 rounds to 0..1023
_SEPARATOR = " ; "
# A run of location tokens and the words after it: `[^;<\n]*` stops at the next `;`, `<` or line end and the
# run's tokens are bounded, so a failed attempt never rescans what another attempt read.
_DETECTION = re.compile(r"(?P<run>(?:<loc\d{4}>\s*)+)(?P<words>[^;<\n]*)")
_LOC = re.compile(r"<loc(\d{4})>")
_MARKUP = re.compile(r"<loc\d{4}>|<seg\d{3}>")
# What `render` puts between two detections that follow each other (` ; `), with the words' trailing space.
_BETWEEN = re.compile(r"\s*;\s*")


@dataclass(frozen=True)
class PaliGemmaLocationCodec(WrittenLocations):
    """Boxes as four `<locNNNN>` tokens (y1, x1, y2, x2 in 0..1023), each followed by its phrase."""

    frame = "resize"

    def token(self, k: int) -> str:
        """The location token of value `k`."""
        return f"<loc{k:04d}>"

    def quantize(self, box_norm: Sequence[float]) -> tuple[int, int, int, int]:
        """[0, 1] xyxy → (y1, x1, y2, x2) in 0..1023, `round(v * 1023)` clipped."""
        x1, y1, x2, y2 = (min(max(round(v * _STEPS), 0), _STEPS) for v in ordered(checked_box(box_norm)))
        return (y1, x1, y2, x2)

    def dequantize(self, q: Sequence[int]) -> BoxNorm:
        """(y1, x1, y2, x2) tokens → [0, 1] xyxy, `k / 1023`."""
        y1, x1, y2, x2 = (k / _STEPS for k in q)
        return ordered((x1, y1, x2, y2))

    def render_box(self, box_norm: Sequence[float]) -> str:
        """One box as four tokens, y first."""
        return "".join(self.token(k) for k in self.quantize(box_norm))

    def render(self, content: str, boxes_norm: Sequence[Sequence[float]], *, output: bool = True) -> str:
        """`<p>cat</p><box:0>` → `<loc…>×4 cat`; boxes of one phrase or adjacent groups are joined by ` ; `.

        A bare slot run writes its boxes' tokens, ` ; `-separated. `output` changes nothing."""

        def write(words, boxes, before, follows):
            label = "" if words is None else " " + " ".join(words.split())
            detections = _SEPARATOR.join(self.render_box(b) + label for b in boxes)
            if follows and not before.strip():
                before = _SEPARATOR
            return before, detections

        return render_groups(content, boxes_norm, write)

    def parse(self, text: str, decoded: Sequence[Sequence[float]] = ()) -> list[GroundedObject]:
        """The grounded objects of `text` in reading order; never raises. `decoded` is ignored."""
        return never_raising(self._parse, text)

    def _parse(self, text: str) -> list[GroundedObject]:
        objects: list[GroundedObject] = []
        for m in _DETECTION.finditer(text):
            values = [int(t) for t in _LOC.findall(m.group("run"))]
            phrase = phrase_of(m.group("words"))
            for start in range(0, len(values) - 3, 4):
                q = values[start : start + 4]
                if max(q) <= _STEPS:
                    objects.append(GroundedObject(phrase, self.dequantize(q)))
        return objects

    def to_slots(self, text: str, first: int = 0, *, output: bool = True) -> tuple[str, list[BoxNorm]]:
        """`<loc…>×4 cat ; <loc…>×4 two dogs ; <loc…>×4 two dogs` → `<p>cat</p><box:0><p>two dogs</p><box:1>
        <box:2>` (the inverse of `render`; the phrases and boxes `parse` reads). The ` ; ` between detections
        that follow each other is the format's, so it goes; detections of one phrase in a row become one phrase
        with several slots. A detection without a valid box stays as written. Never raises."""
        return slots_never_raising(self._to_slots, text, first)

    def _to_slots(self, text: str, first: int) -> tuple[str, list[BoxNorm]]:
        out = SlotText(text, first)
        # the group being built: its start, its end (the words without trailing space), phrase and boxes
        start = end = -1
        phrase: str | None = None
        boxes: list[BoxNorm] = []

        def flush() -> None:
            if boxes:
                out.replace(start, end, ("" if phrase is None else f"<p>{phrase}</p>") + out.slots(boxes))

        for m in _DETECTION.finditer(text):
            values = [int(t) for t in _LOC.findall(m.group("run"))]
            quads = [values[i : i + 4] for i in range(0, len(values) - 3, 4)]
            found = [self.dequantize(q) for q in quads if max(q) <= _STEPS]
            words = m.group("words")
            if not found:  # not a detection: it stays, and it ends the group before it
                flush()
                start, boxes = -1, []
                continue
            mine = phrase_of(words)
            joined = start >= 0 and mine == phrase and _BETWEEN.fullmatch(text, end, m.start()) is not None
            if not joined:
                flush()
                if start >= 0 and _BETWEEN.fullmatch(text, end, m.start()):
                    # adjacent groups: no separator, but a space before bare slots (else the phrase's)
                    out.replace(end, m.start(), "" if mine is not None else " ")
                start, phrase, boxes = m.start(), mine, []
            boxes += found
            end = m.end() - (len(words) - len(words.rstrip()))
        flush()
        return out.result()

    def strip(self, text: str) -> str:
        """The answer for people: phrases (and `;` separators) kept, location and segmentation tokens removed."""
        return tidy(text, _MARKUP) if isinstance(text, str) else ""

    def special_tokens(self) -> list[str]:
        """`<loc0000>` … `<loc1023>`: the format has no phrase tokens."""
        return self.coordinate_tokens()

    def added_tokens(self) -> list[str]:
        """All of `special_tokens` (PaliGemma's own tokenizer has them; another one must gain them)."""
        return self.special_tokens()

    def coordinate_tokens(self) -> list[str]:
        """`<loc0000>` … `<loc1023>`, in value order."""
        return [self.token(k) for k in range(_STEPS + 1)]


__all__ = ["PaliGemmaLocationCodec"]

"""The `tokens` location codec: a box is four special tokens `<loc_k>`, one per coordinate (Kosmos-2,
PaliGemma, Florence-2 style).

Each coordinate of the model's input frame, in [0, 1], falls in one of `bins` equal bins: `k = floor(v * bins)`
clamped to 0..bins-1 (Florence-2's quantiser), and reads back as the bin centre `(k + 0.5) / bins`, so the
round trip of a box is off by at most half a bin. The order is x1, y1, x2, y2 (Florence-2's; PaliGemma's is
y-first). A phrase is tied to its boxes as `<p>phrase</p><loc_a><loc_b><loc_c><loc_d>`, and several boxes of
one phrase simply follow each other (4 tokens each), so a box costs exactly 4 output tokens.

Parsing never raises. It tolerates whitespace between tokens (word-level tokenizers decode with spaces), takes
a run of location tokens four at a time and drops an incomplete rest (a run cut by `max_new_tokens`), and swaps
corners given in the wrong order, as the text codec does. A phrase owns the run of location tokens that follows
its `</p>` with only whitespace in between; other runs are bare boxes (phrase None).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from ..records import BOX_SLOT
from .codec import WrittenLocations
from .objects import BoxNorm, GroundedObject
from .scan import (
    PHRASE_TOKENS,
    check_bins,
    check_four,
    checked_box,
    markup,
    ordered,
    pair,
    pair_slots,
    scanner,
    slot_texts,
    tidy,
)

_LOC = r"<\s*loc_(\d{1,9})\s*>"
_SCAN = scanner(r"<\s*loc_", rf"{_LOC}(?:\s*{_LOC})*")
_LOC_ONE = re.compile(_LOC)
_SLOT_RUN = re.compile(rf"(?:{BOX_SLOT.pattern})+")
_MARKUP = markup(_LOC)


@dataclass(frozen=True)
class TokenLocationCodec(WrittenLocations):
    """Boxes as four `<loc_k>` tokens, k in 0..bins-1 (x1, y1, x2, y2 of the model's input frame)."""

    bins: int = 100

    def __post_init__(self) -> None:
        check_bins(self.bins, 2)

    def token(self, k: int) -> str:
        """The location token of bin `k`."""
        return f"<loc_{k}>"

    def quantize(self, box_norm: Sequence[float]) -> tuple[int, int, int, int]:
        """[0, 1] coordinates → bins 0..bins-1 (`floor(v * bins)`, clamped)."""
        q = [min(max(math.floor(v * self.bins), 0), self.bins - 1) for v in checked_box(box_norm)]
        return (q[0], q[1], q[2], q[3])

    def dequantize(self, q: Sequence[int]) -> BoxNorm:
        """Bins → [0, 1] coordinates at the bin centres, `(k + 0.5) / bins`."""
        check_four(q)
        c = [(k + 0.5) / self.bins for k in q]
        return (c[0], c[1], c[2], c[3])

    def render_box(self, box_norm: Sequence[float]) -> str:
        """One box as four tokens: `<loc_x1><loc_y1><loc_x2><loc_y2>`."""
        return "".join(self.token(k) for k in self.quantize(box_norm))

    def render(self, content: str, boxes_norm: Sequence[Sequence[float]], *, output: bool = True) -> str:
        """Replace the `<box:i>` slots of `content` by the tokens of `boxes_norm[i]` (adjacent slots concatenate).

        `output` (assistant turn or not) changes nothing: a box reads and writes the same 4 tokens.
        """
        return _SLOT_RUN.sub(lambda m: "".join(slot_texts(m.group(0), boxes_norm, self.render_box)), content)

    def _boxes(self, run: str) -> list[BoxNorm]:
        """The boxes of a run of location tokens, four at a time; an incomplete rest or a bin ≥ bins is dropped."""
        values = [int(m.group(1)) for m in _LOC_ONE.finditer(run)]
        boxes = []
        for start in range(0, len(values) - 3, 4):
            q = values[start : start + 4]
            if max(q) < self.bins:
                boxes.append(self.dequantize(ordered(q)))
        return boxes

    def parse(self, text: str, decoded: Sequence[Sequence[float]] = ()) -> list[GroundedObject]:
        """The grounded objects written in `text`, in order; never raises (unparsable text gives []).

        `decoded` is ignored: the boxes are in the text."""
        return pair(text, _SCAN, lambda m: self._boxes(m.group("loc")))

    def to_slots(self, text: str, first: int = 0, *, output: bool = True) -> tuple[str, list[BoxNorm]]:
        """`<p>cat</p><loc_a>…×4` → `<p>cat</p><box:0>`, one slot per 4 tokens of a run (the inverse of
        `render`; the phrases and boxes `parse` reads). Never raises."""
        return pair_slots(text, _SCAN, lambda m: self._boxes(m.group("loc")), first)

    def strip(self, text: str) -> str:
        """The human-readable answer: phrases kept, `<p>` tags and location tokens removed."""
        return tidy(text, _MARKUP) if isinstance(text, str) else ""

    def special_tokens(self) -> list[str]:
        """Tokens the tokenizer must keep whole: `<p>`, `</p>`, `<loc_0>` … `<loc_{bins-1}>`."""
        return [*PHRASE_TOKENS, *self.coordinate_tokens()]

    def added_tokens(self) -> list[str]:
        """All of `special_tokens`: each location token must be one new id."""
        return self.special_tokens()

    def coordinate_tokens(self) -> list[str]:
        """`<loc_0>` … `<loc_{bins-1}>`, in value order."""
        return [self.token(k) for k in range(self.bins)]


__all__ = ["TokenLocationCodec"]

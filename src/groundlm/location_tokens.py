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

from .location import BoxNorm, GroundedObject
from .records import BOX_SLOT

_LOC = r"<\s*loc_(\d{1,9})\s*>"
# A phrase never spans another <p> or a location token, so an unclosed <p> cannot swallow the boxes after it.
_PHRASE = r"<\s*p\s*>((?:(?!<\s*p\s*>|<\s*loc_).)*?)<\s*/\s*p\s*>"
_SCAN = re.compile(rf"(?P<phrase>{_PHRASE})|(?P<run>{_LOC}(?:\s*{_LOC})*)", re.DOTALL)
_LOC_ONE = re.compile(_LOC)
_SLOT_RUN = re.compile(rf"(?:{BOX_SLOT.pattern})+")
_TAGS = re.compile(rf"<\s*/?\s*p\s*>|{_LOC}")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,!?;:])")


@dataclass(frozen=True)
class TokenLocationCodec:
    """Boxes as four `<loc_k>` tokens, k in 0..bins-1 (x1, y1, x2, y2 of the model's input frame)."""

    bins: int = 100

    def __post_init__(self) -> None:
        if isinstance(self.bins, bool) or not isinstance(self.bins, int) or self.bins < 2:
            raise ValueError(f"bins must be an integer >= 2, got {self.bins!r}")

    def token(self, k: int) -> str:
        """The location token of bin `k`."""
        return f"<loc_{k}>"

    def quantize(self, box_norm: Sequence[float]) -> tuple[int, int, int, int]:
        """[0, 1] coordinates → bins 0..bins-1 (`floor(v * bins)`, clamped)."""
        if len(box_norm) != 4:
            raise ValueError(f"a box needs 4 numbers, got {len(box_norm)}: {box_norm!r}")
        values = [float(v) for v in box_norm]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"a box coordinate is not finite: {box_norm!r}")
        q = [min(max(math.floor(v * self.bins), 0), self.bins - 1) for v in values]
        return (q[0], q[1], q[2], q[3])

    def dequantize(self, q: Sequence[int]) -> BoxNorm:
        """Bins → [0, 1] coordinates at the bin centres, `(k + 0.5) / bins`."""
        if len(q) != 4:
            raise ValueError(f"a box needs 4 numbers, got {len(q)}: {q!r}")
        c = [(k + 0.5) / self.bins for k in q]
        return (c[0], c[1], c[2], c[3])

    def render_box(self, box_norm: Sequence[float]) -> str:
        """One box as four tokens: `<loc_x1><loc_y1><loc_x2><loc_y2>`."""
        return "".join(self.token(k) for k in self.quantize(box_norm))

    def render(self, content: str, boxes_norm: Sequence[Sequence[float]], *, output: bool = True) -> str:
        """Replace the `<box:i>` slots of `content` by the tokens of `boxes_norm[i]` (adjacent slots concatenate).

        `output` (assistant turn or not) changes nothing: a box reads and writes the same 4 tokens.
        """

        def replace(m: re.Match[str]) -> str:
            texts = []
            for slot in BOX_SLOT.finditer(m.group(0)):
                i = int(slot.group(1))
                if i >= len(boxes_norm):
                    raise ValueError(f"slot {slot.group(0)} has no box: only {len(boxes_norm)} boxes are given")
                texts.append(self.render_box(boxes_norm[i]))
            return "".join(texts)

        return _SLOT_RUN.sub(replace, content)

    def _boxes(self, run: str) -> list[BoxNorm]:
        """The boxes of a run of location tokens, four at a time; an incomplete rest or a bin ≥ bins is dropped."""
        values = [int(m.group(1)) for m in _LOC_ONE.finditer(run)]
        boxes = []
        for start in range(0, len(values) - 3, 4):
            q = values[start : start + 4]
            if max(q) >= self.bins:
                continue
            x1, x2 = sorted((q[0], q[2]))
            y1, y2 = sorted((q[1], q[3]))
            boxes.append(self.dequantize((x1, y1, x2, y2)))
        return boxes

    def parse(self, text: str) -> list[GroundedObject]:
        """The grounded objects written in `text`, in order; never raises (unparsable text gives [])."""
        if not isinstance(text, str):
            return []
        try:
            objects: list[GroundedObject] = []
            phrase: str | None = None
            phrase_end = -1
            for m in _SCAN.finditer(text):
                if m.group("phrase") is not None:
                    phrase = " ".join(m.group(2).split()) or None
                    phrase_end = m.end()
                    continue
                owner = phrase if phrase_end >= 0 and not text[phrase_end : m.start()].strip() else None
                objects += [GroundedObject(owner, box) for box in self._boxes(m.group("run"))]
                phrase, phrase_end = None, -1
            return objects
        except Exception:  # a parser of model output must not crash the caller
            return []

    def strip(self, text: str) -> str:
        """The human-readable answer: phrases kept, `<p>` tags and location tokens removed."""
        if not isinstance(text, str):
            return ""
        text = " ".join(_TAGS.sub(" ", text).split())
        return _SPACE_BEFORE_PUNCT.sub(r"\1", text)

    def special_tokens(self) -> list[str]:
        """Tokens the tokenizer must keep whole: `<p>`, `</p>`, `<loc_0>` … `<loc_{bins-1}>`."""
        return ["<p>", "</p>", *(self.token(k) for k in range(self.bins))]

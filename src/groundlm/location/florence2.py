"""The `florence2` location codec: Florence-2's `<loc_k>` boxes (Xiao et al. 2023, "Florence-2: Advancing a
Unified Representation for a Variety of Vision Tasks"; format as in the `transformers` Florence-2 processor).

Format: `car<loc_52><loc_335><loc_998><loc_806>wheel<loc_708><loc_576><loc_865><loc_806>` — a phrase is the
plain words before its four tokens x1, y1, x2, y2. Quantisation is the processor's: `k = floor(v * 1000)`
clamped to 0..999, read back at the bin centre `(k + 0.5) / 1000` (the same arithmetic as groundlm's `tokens`
codec, which this module reuses; only the phrase syntax and the default bin count differ). Several boxes of one
phrase follow each other after the phrase written once (`dogs<loc…>×4<loc…>×4`): Florence-2's own phrase regex
`([^<]+(?:<loc_\\d+>){4,})` takes a run of 4k tokens after one phrase and gives every box that label.

Parsing reads like Florence-2's post-processor: a phrase is all the words since the previous location run
(whitespace collapsed, `<s>`/`</s>`/`<pad>` and `<p>` tags dropped), so words between two grounded phrases in
free text become part of the second phrase — the format has no phrase boundary. Runs are taken four tokens at
a time, an incomplete rest or a bin ≥ bins is dropped, swapped corners are put in order; never raises.

Frame: "resize" — Florence-2 squashes the image to 768 × 768 and quantises by the original width and height.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .codec import WrittenLocations
from .objects import BoxNorm, GroundedObject
from .phrased import phrase_of, render_groups
from .scan import SlotText, check_bins, checked_box, markup, never_raising, ordered, slots_never_raising, tidy
from .tokens import TokenLocationCodec

_LOC = re.compile(r"<\s*loc_(\d{1,9})\s*>")
_NOT_PHRASE = re.compile(r"</?s>|<pad>|<\s*/?\s*p\s*>")
_MARKUP = markup(r"<\s*loc_\d{1,9}\s*>|</?s>|<pad>")


@dataclass(frozen=True)
class Florence2LocationCodec(WrittenLocations):
    """Boxes as four `<loc_k>` tokens (x1, y1, x2, y2), k in 0..bins-1, after their phrase's plain words."""

    bins: int = 1000
    frame = "resize"

    def __post_init__(self) -> None:
        check_bins(self.bins, 2)

    @property
    def grid(self) -> TokenLocationCodec:
        """The quantiser: the `tokens` codec's floor/clamp and bin centres, with this codec's bins."""
        return TokenLocationCodec(bins=self.bins)

    def render(self, content: str, boxes_norm: Sequence[Sequence[float]], *, output: bool = True) -> str:
        """`<p>car</p><box:0>` → `car<loc_…>×4`; a bare slot run → its tokens. `output` changes nothing."""
        grid = self.grid

        def write(words, boxes, before, follows):
            tokens = "".join(grid.render_box(ordered(checked_box(b))) for b in boxes)
            return before, tokens if words is None else " ".join(words.split()) + tokens

        return render_groups(content, boxes_norm, write)

    def parse(self, text: str, decoded: Sequence[Sequence[float]] = ()) -> list[GroundedObject]:
        """The grounded objects of `text` in reading order; never raises. `decoded` is ignored."""
        return never_raising(self._parse, text)

    def _parse(self, text: str) -> list[GroundedObject]:
        objects: list[GroundedObject] = []
        grid = self.grid
        phrase: str | None = None
        run: list[int] = []
        last = 0

        def flush() -> None:
            for start in range(0, len(run) - 3, 4):
                q = run[start : start + 4]
                if max(q) < self.bins:
                    objects.append(GroundedObject(phrase, grid.dequantize(ordered(q))))

        for m in _LOC.finditer(text):
            gap = text[last : m.start()]
            if gap.strip():  # words: the previous run ends, and they are the next run's phrase
                flush()
                run = []
                phrase = phrase_of(_NOT_PHRASE.sub(" ", gap))
            run.append(int(m.group(1)))
            last = m.end()
        flush()
        return objects

    def to_slots(self, text: str, first: int = 0, *, output: bool = True) -> tuple[str, list[BoxNorm]]:
        """`a cat<loc…>×4 dog<loc…>×8` → `<p>a cat</p><box:0> <p>dog</p><box:1><box:2>` (the inverse of
        `render`; the phrases and boxes `parse` reads): a run's phrase is all the words since the previous
        run, as Florence-2 reads them, written `<p>…</p>` with the whitespace around them kept outside. A run
        without a complete valid box stays as written with its words. Never raises."""
        return slots_never_raising(self._to_slots, text, first)

    def _to_slots(self, text: str, first: int) -> tuple[str, list[BoxNorm]]:
        out = SlotText(text, first)
        grid = self.grid
        run: list[int] = []
        run_start = words_start = -1  # the run's first token; where its phrase's words start (-1: none)
        phrase: str | None = None
        last = 0

        def flush() -> None:
            boxes: list[BoxNorm] = []
            for start in range(0, len(run) - 3, 4):
                q = run[start : start + 4]
                if max(q) < self.bins:
                    boxes.append(grid.dequantize(ordered(q)))
            if boxes and phrase is not None:
                out.replace(words_start, last, f"<p>{phrase}</p>" + out.slots(boxes))
            elif boxes:
                out.replace(run_start, last, out.slots(boxes))

        for m in _LOC.finditer(text):
            gap = text[last : m.start()]
            if gap.strip() or not run:  # words (or the first run): a new run, the words its phrase
                if run:
                    flush()
                run, run_start = [], m.start()
                phrase = phrase_of(_NOT_PHRASE.sub(" ", gap))
                words_start = last + len(gap) - len(gap.lstrip())
            run.append(int(m.group(1)))
            last = m.end()
        if run:
            flush()
        return out.result()

    def strip(self, text: str) -> str:
        """The answer for people: words kept, location tokens (and `<s>`, `<pad>`, `<p>` tags) removed."""
        return tidy(text, _MARKUP) if isinstance(text, str) else ""

    def special_tokens(self) -> list[str]:
        """`<loc_0>` … `<loc_{bins-1}>`: the format has no phrase tokens."""
        return self.coordinate_tokens()

    def added_tokens(self) -> list[str]:
        """All of `special_tokens`: each location token must be one id."""
        return self.special_tokens()

    def coordinate_tokens(self) -> list[str]:
        """`<loc_0>` … `<loc_{bins-1}>`, in value order."""
        return self.grid.coordinate_tokens()


__all__ = ["Florence2LocationCodec"]

"""The location format of Qwen-VL: `<ref>cat</ref><box>(302,257),(582,671)</box>`.

Source: Qwen-VL (QwenLM/Qwen-VL README, TUTORIAL.md, eval_mm/evaluate_grounding.py). A box is written as its
two corners `(x1,y1),(x2,y2)`, integers in [0, 1000) of the ORIGINAL image squashed to a square (the model
resizes without padding), so `frame = "resize"`. A phrase is `<ref>phrase</ref>` directly followed by its box;
several boxes of one phrase are consecutive spans `<ref>two apples</ref><box>(..),(..)</box><box>(..),(..)</box>`.

Quantisation. The README only says "normalized values in the range [0, 1000)"; the training-data code is not
published (the reference marks the rounding UNCONFIRMED). The one published piece of code, Qwen's own grounding
evaluation, dequantises `q / 999` (then times the original width/height). We take that as the definition: the
grid is 0..999 with 999 meaning the far edge, so `quantize` is `round(v * 999)` (round half up, clamped to
0..999) and `dequantize` is `q / 999`. This makes render→parse exact to half a bin and a parsed box a fixed
point of rendering. A number above 999 is outside the published range and its box is dropped.

Parsing is tolerant where decoders differ: whitespace around the numbers and tags; a box whose `<box>` opener
is missing (Qwen's eval prompt ends with `<box>`, so the model's answer starts at `(x1,y1)...</box>`) or whose
`</box>` closer is missing (one of the two tags must be there, so plain text like "(1,2),(3,4)" is not a box);
swapped corners are put in order. A phrase owns the box spans that follow its closing tag with only whitespace in
between; other boxes are bare (phrase None). Every regex has bounded tokens and no nested quantifier over the
same characters, so parsing is linear in the text.

Qwen2-VL writes the same numbers with its own single-token tags; `Qwen2VLLocationCodec` (qwen2_vl.py) is this
class with other tag fields. `RefBoxScan` and `pair_refs` here are also used by the InternVL codec (internvl.py).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..records import BOX_SLOT
from .codec import WrittenLocations
from .objects import BoxNorm, GroundedObject
from .scan import checked_box, number_words, ordered, pair, pair_slots, slot_texts, tidy

# At most 9 digits, so a runaway number never reaches int()'s digit limit (which raises).
NUM = r"(\d{1,9})"
_SLOT_RUN = re.compile(rf"(?:{BOX_SLOT.pattern})+")
_PHRASE_TAG = re.compile(r"<(/?)p>")


def round_half_up(value: float, bins: int) -> int:
    """`value` in [0, 1] → integer 0..bins, rounded half up (not Python's half-to-even) and clamped."""
    return min(max(math.floor(value * bins + 0.5), 0), bins)


def render_slots(content: str, boxes_norm: Sequence[Sequence[float]], run_text: Callable[[list[str]], str],
                 box_text: Callable[[Sequence[float]], str], ref_open: str, ref_close: str) -> str:
    """`content` with every run of `<box:i>` slots replaced by `run_text` of its boxes' texts, and the phrase
    tags `<p>`/`</p>` replaced by the format's `ref_open`/`ref_close` (a phrase without boxes is still a
    reference in these formats: it is how a prompt names what to ground)."""
    written = _SLOT_RUN.sub(lambda m: run_text(slot_texts(m.group(0), boxes_norm, box_text)), content)
    return _PHRASE_TAG.sub(lambda m: ref_close if m.group(1) else ref_open, written)


@dataclass(frozen=True)
class RefBoxScan:
    """One regex over a text that finds phrases (group `words`) and location spans (group `loc`) in order."""

    pattern: re.Pattern[str]
    markup: re.Pattern[str]  # what `strip` removes: the tags and the location spans

    @classmethod
    def build(cls, ref_open: str, ref_close: str, location: str, tags: Sequence[str]) -> RefBoxScan:
        # The words stop at the first '<', so an unclosed reference cannot swallow the tags after it and a
        # failed match costs at most the characters up to the next '<'.
        phrase = rf"{re.escape(ref_open)}(?P<words>[^<]*){re.escape(ref_close)}"
        pattern = re.compile(rf"(?P<phrase>{phrase})|(?P<loc>{location})")
        markup = re.compile("|".join([location, *(re.escape(t) for t in tags)]))
        return cls(pattern, markup)


def pair_refs(text: str, scan: RefBoxScan, boxes_of: Callable[[re.Match[str]], list[BoxNorm]]) -> list[GroundedObject]:
    """The objects of `text`: each location span's boxes, owned by the phrase whose closing tag (or whose last
    owned span) it follows with only whitespace in between (`scan.pair`). Never raises: garbage gives []."""
    return pair(text, scan.pattern, boxes_of, keeps_phrase_until=lambda _text, end: end)


def ref_slots(
    text: str, scan: RefBoxScan, boxes_of: Callable[[re.Match[str]], list[BoxNorm]], first: int
) -> tuple[str, list[BoxNorm]]:
    """`text` as record content by the ownership rule of `pair_refs`: a phrase with its spans becomes
    `<p>phrase</p><box:k>…`, and every other `<ref>` (a prompt naming what to ground) becomes `<p>words</p>`,
    which `render` writes back as the same reference. Never raises."""
    return pair_slots(text, scan.pattern, boxes_of, first, keeps_phrase_until=lambda _text, end: end)


@dataclass(frozen=True)
class QwenVLLocationCodec(WrittenLocations):
    """Boxes as `<box>(x1,y1),(x2,y2)</box>`, integers 0..999 (÷999), phrases as `<ref>..</ref>` (Qwen-VL).

    The tags are fields so Qwen2-VL's single-token tags reuse the class (`Qwen2VLLocationCodec`)."""

    ref_open: str = "<ref>"
    ref_close: str = "</ref>"
    box_open: str = "<box>"
    box_close: str = "</box>"

    # The published numbers refer to the original image squashed to the model's square input (no padding).
    frame = "resize"
    bins = 999  # the largest value and the denominator (Qwen-VL's evaluation divides by 999)

    def _scan(self) -> RefBoxScan:
        corners = rf"\(\s*{NUM}\s*,\s*{NUM}\s*\)\s*,\s*\(\s*{NUM}\s*,\s*{NUM}\s*\)"
        o, c = re.escape(self.box_open), re.escape(self.box_close)
        # opener with optional closer, or closer alone (the eval prompt supplies the opener)
        location = rf"{o}\s*{corners}(?:\s*{c})?|{corners}\s*{c}"
        return RefBoxScan.build(self.ref_open, self.ref_close, location, self.special_tokens())

    def __post_init__(self) -> None:
        # the compiled scan is derived from the tag fields; frozen, so set it once here
        object.__setattr__(self, "_compiled", self._scan())

    def quantize(self, box_norm: Sequence[float]) -> tuple[int, int, int, int]:
        """[0, 1] coordinates → integers 0..999, `round(v * 999)` half up (module docstring)."""
        q = [round_half_up(v, self.bins) for v in checked_box(box_norm)]
        return (q[0], q[1], q[2], q[3])

    def dequantize(self, q: Sequence[int]) -> BoxNorm:
        """Integers 0..999 → [0, 1] coordinates, `q / 999` as Qwen-VL's evaluation does."""
        return (q[0] / self.bins, q[1] / self.bins, q[2] / self.bins, q[3] / self.bins)

    def render_box(self, box_norm: Sequence[float]) -> str:
        """One box: `<box>(x1,y1),(x2,y2)</box>` (no spaces, as in the README and TUTORIAL examples)."""
        x1, y1, x2, y2 = self.quantize(box_norm)
        return f"{self.box_open}({x1},{y1}),({x2},{y2}){self.box_close}"

    def render(self, content: str, boxes_norm: Sequence[Sequence[float]], *, output: bool = True) -> str:
        """`content` with `<box:i>` slots written as box spans (adjacent slots: consecutive spans, nothing in
        between) and `<p>phrase</p>` as `<ref>phrase</ref>`. `output` changes nothing: prompts and answers
        write boxes the same way."""
        return render_slots(content, boxes_norm, "".join, self.render_box, self.ref_open, self.ref_close)

    def _boxes_of(self, m: re.Match[str]) -> list[BoxNorm]:
        q = [int(v) for v in m.groups()[-8:] if v is not None]  # the 4 numbers of whichever branch matched
        if len(q) != 4 or max(q) > self.bins:
            return []
        return [self.dequantize(ordered(q))]

    def parse(self, text: str, decoded: Sequence[Sequence[float]] = ()) -> list[GroundedObject]:
        """The grounded objects written in `text`, in order; never raises. `decoded` is ignored."""
        return pair_refs(text, self._compiled, self._boxes_of)

    def to_slots(self, text: str, first: int = 0, *, output: bool = True) -> tuple[str, list[BoxNorm]]:
        """`<ref>cat</ref><box>(..),(..)</box><box>…</box>` → `<p>cat</p><box:0><box:1>`, and a `<ref>`
        without a box → `<p>words</p>` (the inverse of `render`, see `ref_slots`). Never raises."""
        return ref_slots(text, self._compiled, self._boxes_of, first)

    def strip(self, text: str) -> str:
        """The answer for people: phrase words kept, tags and box spans removed, whitespace normalised."""
        return tidy(text, self._compiled.markup) if isinstance(text, str) else ""

    def special_tokens(self) -> list[str]:
        """The four tags, and for a word-level tokenizer the punctuation and the numbers 0..999 of a box."""
        return [*self.added_tokens(), "(", ")", ",", *number_words(999)]

    def added_tokens(self) -> list[str]:
        """The four tags: Qwen-VL's tokenizer has them as special tokens, so a pretrained one must gain them."""
        return [self.ref_open, self.ref_close, self.box_open, self.box_close]

    def coordinate_tokens(self) -> list[str] | None:
        """None: the coordinates are plain digits."""
        return None


__all__ = ["QwenVLLocationCodec", "RefBoxScan", "pair_refs", "ref_slots", "render_slots", "round_half_up"]

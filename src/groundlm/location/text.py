"""The text location codec of MiniGPT-v2: boxes written as plain text, `{<x1><y1><x2><y2>}`.

Coordinates are integers in 0..bins (100 in MiniGPT-v2) of the model's input frame, made by truncation
as MiniGPT-v2 does (`int(x / W * 100)`), with one deliberate difference: a value within 1e-9 below a grid
line counts as on it. Float rounding puts some exact grid values a hair below (`0.29 * 100` is
28.999999999999996), where plain truncation loses a whole bin and `quantize(dequantize(q)) != q` for
q = 29, 57, 58. On the 229,828 RefCOCO/+/g evaluation coordinates this changes 46 (0.02%), each by one bin,
all of them coordinates that lie exactly on a grid line. A phrase is tied to its boxes as `<p>phrase</p> {...}`
(one space after `</p>`), and several boxes of one phrase are joined by `<delim>`: `{...}<delim>{...}`.

Rendering replaces the record slots `<box:i>` (see `records.BOX_SLOT`) by box text. Parsing turns a
generated answer back into `GroundedObject`s and never raises, whatever the model wrote. It is tolerant
where real decoders differ:
- whitespace anywhere between the tokens (`{ <12> <34> <56> <78> }`, as word-level tokenizers decode);
- several boxes inside one brace pair, `{<..><..><..><..><delim><..><..><..><..>}`, which some MiniGPT-v2
  derivatives write instead of `{...}<delim>{...}`;
- `<unk>` anywhere, even inside a box or between `</p>` and its box: every `<unk>` is dropped before
  parsing, as MiniGPT-v2's evaluation does (a literal replace, linear in the text).
It drops a box with fewer or more than 4 numbers or with a number above `bins`, and **swaps** corners given
in the wrong order (x1 > x2 or y1 > y2): the two corners still span one box, and an evaluation should score
that box rather than call the answer unparsable. A phrase applies to the boxes that follow its `</p>` with
only whitespace or `<delim>` in between; other boxes are bare (phrase None). A phrase without a box gives no
object.
"""

from __future__ import annotations

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

# Far below one bin for any practical `bins`, far above float rounding error (~1e-13 at v * bins <= 1e4).
_SNAP = 1e-9

# At most 9 digits, so a runaway number never reaches int()'s digit limit (which raises).
_NUM = r"<\s*(\d{1,9})\s*>"
_DELIM = r"<\s*delim\s*>"
# One brace pair holding numbers and <delim>s; the contents are split into boxes afterwards.
_BRACE = rf"\{{(?:\s*(?:{_NUM}|{_DELIM}))*\s*\}}"
# A phrase, or a chain of brace pairs joined by <delim> (whitespace allowed everywhere).
_SCAN = scanner(r"[{}]", rf"{_BRACE}(?:\s*{_DELIM}\s*{_BRACE})*")
_NUM_OR_DELIM = re.compile(rf"{_NUM}|(?P<delim>{_DELIM})")
# What a tokenizer decodes for an id it has no text for. A literal: an anchored regex for "trailing <unk>s"
# retried at every <unk> of a long run was quadratic.
_UNK = "<unk>"
_SLOT_RUN = re.compile(rf"(?P<after_p></p>)?(?P<run>(?:{BOX_SLOT.pattern})+)")
_MARKUP = markup(_DELIM)


@dataclass(frozen=True)
class TextLocationCodec(WrittenLocations):
    """Boxes as text `{<x1><y1><x2><y2>}` with integers 0..`bins` (MiniGPT-v2)."""

    bins: int = 100

    def __post_init__(self) -> None:
        check_bins(self.bins, 1)

    def quantize(self, box_norm: Sequence[float]) -> tuple[int, int, int, int]:
        """[0, 1] coordinates → integers 0..bins by truncation (`int(v * bins)`), clamped to the range."""
        values = checked_box(box_norm)
        # _SNAP keeps exact grid values that float rounding put a hair below on their bin (module docstring).
        q = [min(max(int(v * self.bins + _SNAP), 0), self.bins) for v in values]
        return (q[0], q[1], q[2], q[3])

    def dequantize(self, q: Sequence[int]) -> BoxNorm:
        """Integers 0..bins → [0, 1] coordinates (`q / bins`)."""
        check_four(q)
        return (q[0] / self.bins, q[1] / self.bins, q[2] / self.bins, q[3] / self.bins)

    def render_box(self, box_norm: Sequence[float]) -> str:
        """One box as text: `{<x1><y1><x2><y2>}`."""
        x1, y1, x2, y2 = self.quantize(box_norm)
        return f"{{<{x1}><{y1}><{x2}><{y2}>}}"

    def render(self, content: str, boxes_norm: Sequence[Sequence[float]], *, output: bool = True) -> str:
        """Replace the `<box:i>` slots of `content` by the text of `boxes_norm[i]`.

        `output` (assistant turn or not) changes nothing: user and model write boxes the same way.

        Adjacent slots (`<box:0><box:1>`, several boxes of one phrase) are joined by `<delim>`, and a slot run
        directly after `</p>` gets MiniGPT-v2's single space (`<p>cat</p> {<1><2><3><4>}`).
        """

        def replace(m: re.Match[str]) -> str:
            texts = slot_texts(m.group("run"), boxes_norm, self.render_box)
            return ("</p> " if m.group("after_p") else "") + "<delim>".join(texts)

        return _SLOT_RUN.sub(replace, content)

    def _boxes_in(self, chain: str) -> list[BoxNorm]:
        """The valid boxes of a chain of brace pairs (numbers grouped by `<delim>` and by braces)."""
        boxes: list[BoxNorm] = []
        # Each brace pair, and each <delim> inside one, closes a group; only groups of 4 numbers are boxes.
        for brace in re.finditer(_BRACE, chain):
            group: list[int] = []
            for tok in [*_NUM_OR_DELIM.finditer(brace.group(0)), None]:
                if tok is None or tok.group("delim"):
                    if len(group) == 4 and max(group) <= self.bins:
                        boxes.append(self.dequantize(ordered(group)))
                    group = []
                else:
                    group.append(int(tok.group(1)))
        return boxes

    def parse(self, text: str, decoded: Sequence[Sequence[float]] = ()) -> list[GroundedObject]:
        """The grounded objects written in `text`, in order; never raises (unparsable text gives []).

        `decoded` is ignored: the boxes are in the text."""
        text = text.replace(_UNK, "") if isinstance(text, str) else text
        return pair(text, _SCAN, lambda m: self._boxes_in(m.group("loc")))

    def to_slots(self, text: str, first: int = 0, *, output: bool = True) -> tuple[str, list[BoxNorm]]:
        """`<p>cat</p> {<1><2><3><4>}<delim>{…}` → `<p>cat</p><box:0><box:1>` (the inverse of `render`; the
        phrases and boxes `parse` reads). `<unk>` is dropped first, as `parse` does; a brace pair with no valid
        box stays as written. Never raises."""
        text = text.replace(_UNK, "") if isinstance(text, str) else text
        return pair_slots(text, _SCAN, lambda m: self._boxes_in(m.group("loc")), first)

    def strip(self, text: str) -> str:
        """The human-readable answer: phrases kept, tags, boxes and `<delim>` removed, whitespace normalised."""
        if not isinstance(text, str):
            return ""
        return tidy(re.sub(_BRACE, " ", text.replace(_UNK, "")), _MARKUP)

    def special_tokens(self) -> list[str]:
        """Tokens a word-level tokenizer needs whole: `<p>`, `</p>`, `<delim>`, `{`, `}`, `<0>` … `<bins>`."""
        return [*PHRASE_TOKENS, "<delim>", "{", "}", *(self.coordinate_tokens())]

    def added_tokens(self) -> list[str]:
        """None: a pretrained tokenizer reads `{<12><34><56><78>}` as the plain text it is (MiniGPT-v2)."""
        return []

    def coordinate_tokens(self) -> list[str]:
        """`<0>` … `<bins>`, in value order."""
        return [f"<{i}>" for i in range(self.bins + 1)]


__all__ = ["TextLocationCodec"]

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
- a leading or trailing `<unk>`.
It drops a box with fewer or more than 4 numbers or with a number above `bins`, and **swaps** corners given
in the wrong order (x1 > x2 or y1 > y2): the two corners still span one box, and an evaluation should score
that box rather than call the answer unparsable. A phrase applies to the boxes that follow its `</p>` with
only whitespace or `<delim>` in between; other boxes are bare (phrase None). A phrase without a box gives no
object.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .records import BOX_SLOT

BoxNorm = tuple[float, float, float, float]

# Far below one bin for any practical `bins`, far above float rounding error (~1e-13 at v * bins <= 1e4).
_SNAP = 1e-9

# At most 9 digits, so a runaway number never reaches int()'s digit limit (which raises).
_NUM = r"<\s*(\d{1,9})\s*>"
_DELIM = r"<\s*delim\s*>"
# One brace pair holding numbers and <delim>s; the contents are split into boxes afterwards.
_BRACE = rf"\{{(?:\s*(?:{_NUM}|{_DELIM}))*\s*\}}"
# A phrase never spans a brace or another <p>, so an unclosed <p> cannot swallow the boxes after it.
_PHRASE = r"<\s*p\s*>((?:(?!<\s*p\s*>)[^{}])*?)<\s*/\s*p\s*>"
# A phrase, or a chain of brace pairs joined by <delim> (whitespace allowed everywhere).
_SCAN = re.compile(rf"(?P<phrase>{_PHRASE})|(?P<boxes>{_BRACE}(?:\s*{_DELIM}\s*{_BRACE})*)", re.DOTALL)
_NUM_OR_DELIM = re.compile(rf"{_NUM}|(?P<delim>{_DELIM})")
_UNK_EDGES = re.compile(r"^(?:\s*<unk>)+|(?:<unk>\s*)+$")
_SLOT_RUN = re.compile(rf"(?P<after_p></p>)?(?P<run>(?:{BOX_SLOT.pattern})+)")
_TAGS = re.compile(rf"<\s*/?\s*p\s*>|{_DELIM}")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,!?;:])")


@dataclass
class GroundedObject:
    """One object an answer grounds: its phrase (None for a bare box) and its box.

    `box_norm` is xyxy in [0, 1] of the model's input frame; `box` is the same box in pixels of the
    original image once the caller maps it back (`geometry.Frame.denormalize`); `mask` is optional.
    """

    phrase: str | None
    box_norm: BoxNorm
    box: tuple[float, ...] | None = None
    mask: object | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (boxes as lists; a tensor or array mask as nested lists)."""
        mask = self.mask
        if mask is not None and not isinstance(mask, dict | list | str) and hasattr(mask, "tolist"):
            mask = mask.tolist()
        return {
            "phrase": self.phrase,
            "box_norm": [float(v) for v in self.box_norm],
            "box": None if self.box is None else [float(v) for v in self.box],
            "mask": mask,
        }


@dataclass(frozen=True)
class TextLocationCodec:
    """Boxes as text `{<x1><y1><x2><y2>}` with integers 0..`bins` (MiniGPT-v2)."""

    bins: int = 100

    def __post_init__(self) -> None:
        if isinstance(self.bins, bool) or not isinstance(self.bins, int) or self.bins < 1:
            raise ValueError(f"bins must be a positive integer, got {self.bins!r}")

    def quantize(self, box_norm: Sequence[float]) -> tuple[int, int, int, int]:
        """[0, 1] coordinates → integers 0..bins by truncation (`int(v * bins)`), clamped to the range."""
        if len(box_norm) != 4:
            raise ValueError(f"a box needs 4 numbers, got {len(box_norm)}: {box_norm!r}")
        values = [float(v) for v in box_norm]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"a box coordinate is not finite: {box_norm!r}")
        # _SNAP keeps exact grid values that float rounding put a hair below on their bin (module docstring).
        q = [min(max(int(v * self.bins + _SNAP), 0), self.bins) for v in values]
        return (q[0], q[1], q[2], q[3])

    def dequantize(self, q: Sequence[int]) -> BoxNorm:
        """Integers 0..bins → [0, 1] coordinates (`q / bins`)."""
        if len(q) != 4:
            raise ValueError(f"a box needs 4 numbers, got {len(q)}: {q!r}")
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
            texts = []
            for slot in BOX_SLOT.finditer(m.group("run")):
                i = int(slot.group(1))
                if i >= len(boxes_norm):
                    raise ValueError(
                        f"slot {slot.group(0)} has no box: only {len(boxes_norm)} boxes are given"
                    )
                texts.append(self.render_box(boxes_norm[i]))
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
                    box = self._valid(group)
                    if box is not None:
                        boxes.append(box)
                    group = []
                else:
                    group.append(int(tok.group(1)))
        return boxes

    def _valid(self, q: list[int]) -> BoxNorm | None:
        if len(q) != 4 or max(q) > self.bins:
            return None
        x1, x2 = sorted((q[0], q[2]))
        y1, y2 = sorted((q[1], q[3]))
        return self.dequantize((x1, y1, x2, y2))

    def parse(self, text: str) -> list[GroundedObject]:
        """The grounded objects written in `text`, in order; never raises (unparsable text gives [])."""
        try:
            return self._parse(text)
        except Exception:  # a parser for model output must not crash the caller; garbage means no objects
            return []

    def _parse(self, text: str) -> list[GroundedObject]:
        if not isinstance(text, str):
            return []
        text = _UNK_EDGES.sub("", text)
        objects: list[GroundedObject] = []
        phrase: str | None = None
        phrase_end = -1
        for m in _SCAN.finditer(text):
            if m.group("phrase") is not None:
                phrase = " ".join(m.group(2).split()) or None
                phrase_end = m.end()
                continue
            # The phrase only owns boxes that follow it with nothing but whitespace in between.
            owner = phrase if phrase_end >= 0 and not text[phrase_end : m.start()].strip() else None
            objects += [GroundedObject(owner, box) for box in self._boxes_in(m.group("boxes"))]
            phrase, phrase_end = None, -1
        return objects

    def strip(self, text: str) -> str:
        """The human-readable answer: phrases kept, tags, boxes and `<delim>` removed, whitespace normalised."""
        if not isinstance(text, str):
            return ""
        text = _UNK_EDGES.sub("", text)
        text = re.sub(_BRACE, " ", text)
        text = _TAGS.sub(" ", text)
        text = " ".join(text.split())
        return _SPACE_BEFORE_PUNCT.sub(r"\1", text)

    def special_tokens(self) -> list[str]:
        """Tokens a word-level tokenizer needs whole: `<p>`, `</p>`, `<delim>`, `{`, `}`, `<0>` … `<bins>`."""
        return ["<p>", "</p>", "<delim>", "{", "}", *(f"<{i}>" for i in range(self.bins + 1))]

"""Bracket location codecs: boxes written as plain numbers in square brackets right after the words they ground.

Four published formats share this shape, so they share one scanner, renderer and phrase rule here and differ
only in their fields (one frozen dataclass per published name, each with that format's defaults):

- `ShikraLocationCodec` (Shikra, `mllm/dataset/process_function/box_process_function.py`): floats in [0, 1]
  with 3 decimals and no spaces, `[0.123,0.456,0.789,0.999]`; several boxes `;`-joined in one bracket pair,
  `[a,b,c,d;e,f,g,h]`. Shikra clamps to [0, 1], then `round(v, 3)` and `f"{v:.3f}"`; its parser reads floats.
  Frame "pad": Shikra expands images to a white-padded square (`Expand2square`) before normalising.
- `LlavaLocationCodec` (LLaVA-1.5, llava_v1_5_mix665k): floats with 2 decimals and ", " separators,
  `[0.39, 0.12, 0.59, 0.87]`. The number of decimals is UNCONFIRMED in the published material (reportedly 2),
  and so is how LLaVA writes several boxes of one phrase; Shikra's `;` is used. Frame "pad" (LLaVA-1.5 trains
  with `image_aspect_ratio: pad`, a mean-colour square; from a user report, not maintainer-confirmed).
- `FerretLocationCodec` (Ferret, `ferret/train/train.py`): integers 0..999, `int(v * 1000)` truncation
  (clamped to 999), written `[302, 257, 582, 671]`; its evaluation reads `\\[(\\d+), (\\d+), (\\d+), (\\d+)\\]`
  and divides by 1000. How Ferret joins several boxes of one phrase is not in the reference; they are written
  as separate brackets, `[a, b, c, d], [e, f, g, h]`, which Ferret's own regex still reads box by box.
  Frame "resize": Ferret resizes the image without padding.
- `CogVLMLocationCodec` (CogVLM grounding, README "Format of coordination", `utils/utils/grounding_parser.py`):
  `[[086,540,400,760]]`, integers 000..999 zero-padded to 3 digits; several boxes `[[a,b,c,d;e,f,g,h]]`
  (maintainer, CogVLM issue #25); its parser divides by 1000. CogVLM's quantisation is UNCONFIRMED ("relative
  coordinates multiplied by 1000"); Ferret's truncation clamped to 999 is used, matching the 000-999 range.
  Frame "resize": the original image.

`frame` is a class attribute naming which image the numbers refer to in the published format; the processor's
frame decides the actual normalisation (a recipe whose `model.frame` differs gets a warning, train/recipe.py).

Points. Shikra (location_formats.md: "points `[x,y]`") and Ferret (published_models.md: "inputs may use points
`[x, y]`") write a point as a bracket of two numbers on the same grid as their boxes; `points` (a class
attribute) says a format has them. Records have no point slot: an object whose box is degenerate, (x, y, x, y),
is a point (`objects.point_of`) and its slot is written `[x, y]` (`[0.500,0.250]` for Shikra, `[500, 250]` for
Ferret; how either joins several points is not in the reference, so a run of point slots is written like a run
of boxes). The scanner then also reads a bracket of exactly two numbers, as a point object
(`GroundedObject.at`). LLaVA and CogVLM have no published point form and read `[x, y]` as text.

Phrases. These formats have no phrase tags: a box follows the words it grounds. `render` therefore writes
`<p>the cat</p><box:0>` as `the cat [..]` (Shikra's grounded captions: phrase, one space, box) and drops the
`<p>` tags of a phrase without a box; a slot run without a phrase is a bare box. `parse` reads a box's phrase
as the words since the previous box or sentence boundary (`.`, `!`, `?`, `;`, `:`, newline), with surrounding
punctuation trimmed, or None when there are none. That is a guess about the phrase's start: in
`the cat [..] and two dogs [..]` the second phrase is `and two dogs`. A box that follows another with only
commas, semicolons or whitespace in between (`[..]; [..]`) belongs to the same phrase. The rule looks at each
gap between boxes once, so parsing stays linear.

Several boxes of one location are joined by `joint`, either `;` inside one bracket pair or `], [` between
pairs (Ferret); the scanner reads both in every codec, so `[a, b, c, d], [e, f, g, h]` is one location.

Parsing is tolerant where writers differ: whitespace between any two tokens (`,`, `;`, `.`, each bracket;
a word-level tokenizer decodes `[[086,540` as `[ [ 086 , 540`), up to 20 decimals for the float formats and
plain integers `0`/`1` for them too. A box with a number out of range (above 1, or above 999) is dropped,
swapped corners are put in order, and parsing never raises. Linear time: numbers are bounded runs (at most 9
integer digits), no two optional whitespace runs stand side by side, and a location starts only at its opening
bracket. A failed attempt stops at the next opening bracket, except one over a chain of `], [`-joined boxes;
with single brackets such a chain always matches (every box closes), and with `[[` it holds no other `[[`,
so no text is scanned by two long attempts (the 1 MB adversarial tests check this).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from ..records import BOX_SLOT
from .codec import WrittenLocations
from .objects import BoxNorm, GroundedObject, point_of
from .scan import (
    PHRASE_TOKENS,
    SlotText,
    check_bins,
    check_four,
    checked_box,
    markup,
    never_raising,
    slot_box,
    slot_texts,
    slots_never_raising,
    tidy,
)

# Far below one bin, far above float rounding error: exact grid values a hair below stay on their bin
# (`0.29 * 1000` style rounding), as the text codec does.
_SNAP = 1e-9

_SLOT_RUN = re.compile(r"(?P<after_p></p>)?(?P<run>(?:<box:\d+>)+)")
_TAGS = re.compile(r"</?p>")
# Tags a model may still write around a phrase; they are not part of its words.
_LOOSE_TAGS = re.compile(r"<\s*/?\s*p\s*>")
_BOUNDARIES = ".!?;:\n"
_TRIM = " \t\r\n,;:.!?\"'()[]-"
# What may stand between two boxes of one phrase.
_SAME_PHRASE = re.compile(r"[\s,;]*")
_NUMBER = re.compile(r"[\d.]+")
# Inside a location: between the numbers of a box, and between two boxes (no nested overlap: `,` vs `;`/`]`).
_COMMA = r"\s*,\s*"
_JOINT = r"\s*(?:;|\]\s*,\s*\[)\s*"


class _BracketCodec(WrittenLocations):
    """What the bracket formats share; subclasses give the numbers (`_coords`, `_box`) and the brackets."""

    frame: ClassVar[str]
    points: ClassVar[bool]  # whether the format writes points as `[x, y]` (see the module docstring)
    separator: str  # between the 4 numbers of a box
    joint: str  # between the numbers of two boxes of one phrase
    _scan: re.Pattern[str]
    _run: re.Pattern[str]

    def _coords(self, box_norm: Sequence[float]) -> list[str]:
        raise NotImplementedError

    def _box(self, numbers: list[str]) -> BoxNorm | None:
        """The box of 4 numbers as written, corners in order, or None when one is out of range."""
        raise NotImplementedError

    def _point_box(self, x: str, y: str) -> BoxNorm | None:
        """The degenerate box (x, y, x, y) of a point as written, or None when out of range."""
        raise NotImplementedError

    def _brackets(self) -> tuple[str, str]:
        raise NotImplementedError

    def _compile(self, number: str) -> None:
        """Build the scanner: one bracket pair holding boxes of 4 `number`s, joined by `;` inside the pair
        (Shikra, CogVLM) or by `], [` between pairs (Ferret's separate brackets), so every `joint` this
        accepts reads back as one location."""
        if not re.fullmatch(_COMMA, self.separator):
            raise ValueError(f"separator must be a comma with optional spaces, got {self.separator!r}")
        if not re.fullmatch(_JOINT, self.joint):
            raise ValueError(f"joint must be ';' or '], [' with optional spaces, got {self.joint!r}")
        # whitespace may stand between any two tokens: a word-level tokenizer decodes `[[1,2` as `[ [ 1 , 2`
        opener, closer = (r"\s*".join(map(re.escape, b)) for b in self._brackets())
        box = rf"{number}(?:{_COMMA}{number}){{3}}"
        location = rf"{opener}\s*{box}(?:{_JOINT}{box})*\s*{closer}"
        if self.points:
            # a point is the first two numbers of a box: the bracket may close after them, one attempt for both
            location = rf"{opener}\s*{number}{_COMMA}{number}(?:(?:{_COMMA}{number}){{2}}(?:{_JOINT}{box})*)?\s*{closer}"
        # The common cases are tried first at each opening bracket, their numbers as groups, so they are read
        # without a second match or splitting the text: one box with no whitespace (groups 1-4), or one point
        # (groups 5-6) when the format has points. Their attempt is bounded, so the scan stays linear.
        ng = f"({number})"
        tight = rf"{ng}{_COMMA}{ng}{_COMMA}{ng}{_COMMA}{ng}"
        if self.points:
            tight += rf"|\s*{ng}{_COMMA}{ng}\s*"
        # frozen dataclass: set the derived regexes once, after the fields are known
        object.__setattr__(self, "_scan", re.compile(rf"{opener}(?:{tight}){closer}|{location}"))
        # a run of locations of one phrase, removed as a whole by strip (with the `,`/`;` between them)
        object.__setattr__(self, "_run", markup(rf"{location}(?:\s*[,;]\s*{location})*"))

    def render_box(self, box_norm: Sequence[float]) -> str:
        """The numbers of one box, `separator`-joined (no brackets); a point's two when the format has points."""
        coords = self._coords(box_norm)
        if self.points and point_of(box_norm) is not None:
            return self.separator.join(coords[:2])  # the degenerate box's x1, y1 on the boxes' grid
        return self.separator.join(coords)

    def render(self, content: str, boxes_norm: Sequence[Sequence[float]], *, output: bool = True) -> str:
        """`content` with every `<box:i>` slot run written as one bracketed location, phrase tags dropped.

        `output` changes nothing: user and model write boxes the same way. A slot run right after `</p>`
        gets one space (`the cat [..]`); the boxes of one run are joined by `joint`.
        """
        opener, closer = self._brackets()

        def replace(m: re.Match[str]) -> str:
            texts = slot_texts(m.group("run"), boxes_norm, self.render_box)
            # a point has no place inside a `;`-joined bracket: a run holding one gives each its own bracket
            joint = self.joint
            if self.points and any(point_of(slot_box(s, boxes_norm)) for s in BOX_SLOT.finditer(m.group("run"))):
                joint = f"{closer}, {opener}"
            text = opener + joint.join(texts) + closer
            return (" " if m.group("after_p") else "") + text

        return _TAGS.sub("", _SLOT_RUN.sub(replace, content))

    def _boxes(self, location: str) -> list[BoxNorm]:
        # the location matched the scanner, so its numbers are its runs of digits and dots, 4 per box
        numbers = _NUMBER.findall("".join(location.split()))  # `0 . 5` (word-level decoding) is 0.5
        boxes = [self._box(numbers[i : i + 4]) for i in range(0, len(numbers), 4)]
        return [box for box in boxes if box is not None]

    def parse(self, text: str, decoded: Sequence[Sequence[float]] = ()) -> list[GroundedObject]:
        """The grounded objects of `text` in reading order; never raises (unparsable text gives []).

        `decoded` is ignored: the boxes are in the text."""
        return never_raising(self._parse, text)

    def _parse(self, text: str) -> list[GroundedObject]:
        objects: list[GroundedObject] = []
        append = objects.append
        box_of, point_of = self._box, self._point_box
        end = 0
        phrase: str | None = None
        same_phrase = _SAME_PHRASE.fullmatch
        for m in self._scan.finditer(text):
            start = m.start()
            if not (end and same_phrase(text, end, start)):  # in place: no copy of the gap per box
                phrase = _phrase(text[end:start])
            end = m.end()
            # `_locations` inlined, objects built with positional fields: dense output parses many boxes
            if m.group(1) is not None:
                box = box_of(m.group(1, 2, 3, 4))
                if box is not None:
                    append(GroundedObject(phrase, box, None, None, False))
            elif m.lastindex is not None:
                box = point_of(*m.group(5, 6))
                if box is not None:
                    append(GroundedObject(phrase, box, None, None, True))
            else:
                for box in self._boxes(m.group(0)):
                    append(GroundedObject(phrase, box, None, None, False))
        return objects

    def _locations(self, m: re.Match[str]) -> tuple[list[BoxNorm], bool]:
        """The boxes of a location the scanner matched, and whether it is a point (then its one degenerate box,
        read as a box is: range check, grid)."""
        if m.group(1) is not None:
            box = self._box(m.group(1, 2, 3, 4))
            return ([] if box is None else [box]), False
        if m.lastindex is None:  # the general form: several boxes, or whitespace inside
            return self._boxes(m.group(0)), False
        box = self._point_box(*m.group(5, 6))
        return ([] if box is None else [box]), True

    def to_slots(self, text: str, first: int = 0, *, output: bool = True) -> tuple[str, list[BoxNorm]]:
        """`A man [..] rides a horse [..].` → `<p>A man</p><box:0> <p>rides a horse</p><box:1>.` (the inverse of
        `render`). The phrase is the one `parse` reads (the words since the previous box or sentence boundary),
        so the same guess applies: a box gets `<p>…</p>` only when nothing but spaces stands between those
        words and it (`the cat, [..]` keeps its words and a bare slot). Boxes of one phrase (`[a;b]`,
        `[..], [..]`) become adjacent slots. A location without a valid box stays as written. Never raises."""
        return slots_never_raising(self._to_slots, text, first)

    def _to_slots(self, text: str, first: int) -> tuple[str, list[BoxNorm]]:
        out = SlotText(text, first)
        start = end = 0  # the current group: where its replacement starts, the end of its last location
        phrase: str | None = None
        boxes: list[BoxNorm] = []
        same_phrase = _SAME_PHRASE.fullmatch

        def flush() -> None:
            if boxes:
                out.replace(start, end, ("" if phrase is None else f"<p>{phrase}</p>") + out.slots(boxes))

        for m in self._scan.finditer(text):
            if not (end and same_phrase(text, end, m.start())):
                flush()
                gap = text[end : m.start()]
                phrase, start, boxes = _phrase(gap), m.start(), []
                if phrase is not None:
                    region = gap[max(gap.rfind(c) for c in _BOUNDARIES) + 1 :]
                    if region.rstrip()[-1:] in tuple(_TRIM):  # punctuation between words and box: no tie
                        phrase = None
                    else:  # the replacement starts at the words, after the punctuation and space before them
                        start = end + len(gap) - len(region.lstrip(_TRIM))
            boxes += self._locations(m)[0]  # a point's slot holds its degenerate box, as records keep points
            end = m.end()
        flush()
        return out.result()

    def strip(self, text: str) -> str:
        """The answer for people: locations (with the commas joining them) and phrase tags removed."""
        if not isinstance(text, str):
            return ""
        return tidy(text, self._run)

    def special_tokens(self) -> list[str]:
        """What a word-level tokenizer needs as entries: `<p>`, `</p>` (record markup), the punctuation of
        the format, and every digit string it writes (that tokenizer splits `0.123` into `0`, `.`, `123`)."""
        return list(dict.fromkeys([*PHRASE_TOKENS, "[", "]", ",", ";", ".", *self._digit_strings()]))

    def _digit_strings(self) -> list[str]:
        raise NotImplementedError

    def added_tokens(self) -> list[str]:
        """None: the boxes are plain text a pretrained tokenizer already reads."""
        return []

    def coordinate_tokens(self) -> list[str] | None:
        """None: a coordinate is several characters, not one token."""
        return None


def _check_count(name: str, value: object, least: int, most: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        raise ValueError(f"{name} must be an integer in {least}..{most}, got {value!r}")


def _phrase(gap: str) -> str | None:
    """The words of `gap` after its last sentence boundary, trimmed of punctuation; None when empty."""
    if not gap.strip(_TRIM):  # only punctuation and space (the common case between boxes): no words
        return None
    start = max(gap.rfind(c) for c in _BOUNDARIES) + 1
    words = " ".join(_LOOSE_TAGS.sub(" ", gap[start:]).split()).strip(_TRIM)
    return words or None


@dataclass(frozen=True)
class ShikraLocationCodec(_BracketCodec):
    """Floats in [0, 1] with `decimals` decimals, `[x1,y1,x2,y2]`, boxes `;`-joined (Shikra)."""

    decimals: int = 3
    separator: str = ","
    joint: str = ";"
    frame: ClassVar[str] = "pad"
    points: ClassVar[bool] = True
    _scan: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _run: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_count("decimals", self.decimals, 1, 6)  # 10**decimals digit strings are tokenizer entries
        # a digit must follow the spaces after `.`: two optional space runs side by side could split one
        # whitespace run in many ways, which backtracking would try one by one
        self._compile(r"\d{1,9}(?:\s*\.(?:\s*\d{1,20})?)?")

    def _brackets(self) -> tuple[str, str]:
        return "[", "]"

    def _digit_strings(self) -> list[str]:
        # integer parts 0 and 1, then every fraction of `decimals` digits
        return ["0", "1", *(f"{i:0{self.decimals}d}" for i in range(10**self.decimals))]

    def quantize(self, box_norm: Sequence[float]) -> tuple[float, float, float, float]:
        """Clamp to [0, 1] and round to `decimals` (Shikra's `norm_box_xyxy` then `round(v, 3)`)."""
        q = [round(min(max(v, 0.0), 1.0), self.decimals) for v in checked_box(box_norm)]
        return (q[0], q[1], q[2], q[3])

    def _coords(self, box_norm: Sequence[float]) -> list[str]:
        return [f"{v:.{self.decimals}f}" for v in self.quantize(box_norm)]

    def _box(self, numbers: list[str]) -> BoxNorm | None:
        x1, y1, x2, y2 = map(float, numbers)
        if max(x1, y1, x2, y2) > 1.0:
            return None
        # swapped corners still span one box (scan.ordered, inlined: dense output parses many boxes)
        return (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))

    def _point_box(self, x: str, y: str) -> BoxNorm | None:
        """The degenerate box (x, y, x, y) of a point as written, or None when out of range."""
        fx, fy = float(x), float(y)
        return None if fx > 1.0 or fy > 1.0 else (fx, fy, fx, fy)


@dataclass(frozen=True)
class LlavaLocationCodec(ShikraLocationCodec):
    """Floats in [0, 1] with 2 decimals, `[x1, y1, x2, y2]` (LLaVA-1.5; decimals UNCONFIRMED)."""

    decimals: int = 2
    separator: str = ", "
    joint: str = ";"
    points: ClassVar[bool] = False  # no published point form


@dataclass(frozen=True)
class FerretLocationCodec(_BracketCodec):
    """Integers 0..bins-1 by truncation, `[x1, y1, x2, y2]`, boxes as separate brackets (Ferret).

    `digits` zero-pads every number to that width (0: none); `double` writes `[[...]]`."""

    bins: int = 1000
    digits: int = 0
    separator: str = ", "
    joint: str = "], ["
    double: bool = False
    frame: ClassVar[str] = "resize"
    points: ClassVar[bool] = True
    _scan: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _run: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_bins(self.bins, 2)
        _check_count("digits", self.digits, 0, 9)
        self._compile(r"\d{1,9}")

    def _brackets(self) -> tuple[str, str]:
        return ("[[", "]]") if self.double else ("[", "]")

    def _digit_strings(self) -> list[str]:
        return [f"{q:0{self.digits}d}" if self.digits else str(q) for q in range(self.bins)]

    def quantize(self, box_norm: Sequence[float]) -> tuple[int, int, int, int]:
        """[0, 1] → integers 0..bins-1 by truncation, `int(v * 1000)` as Ferret does, clamped to the range."""
        # _SNAP keeps exact grid values that float rounding put a hair below on their bin (module constant)
        q = [min(max(int(v * self.bins + _SNAP), 0), self.bins - 1) for v in checked_box(box_norm)]
        return (q[0], q[1], q[2], q[3])

    def dequantize(self, q: Sequence[int]) -> BoxNorm:
        """Integers → [0, 1] as the formats' own parsers do (`q / 1000`)."""
        check_four(q)
        return (q[0] / self.bins, q[1] / self.bins, q[2] / self.bins, q[3] / self.bins)

    def _coords(self, box_norm: Sequence[float]) -> list[str]:
        return [f"{q:0{self.digits}d}" if self.digits else str(q) for q in self.quantize(box_norm)]

    def _box(self, numbers: list[str]) -> BoxNorm | None:
        x1, y1, x2, y2 = map(int, numbers)
        bins = self.bins
        if max(x1, y1, x2, y2) >= bins:
            return None
        # swapped corners still span one box; `dequantize` inlined: dense output parses many boxes
        return (min(x1, x2) / bins, min(y1, y2) / bins, max(x1, x2) / bins, max(y1, y2) / bins)

    def _point_box(self, x: str, y: str) -> BoxNorm | None:
        """The degenerate box (x, y, x, y) of a point as written, or None when out of range."""
        ix, iy, bins = int(x), int(y), self.bins
        if ix >= bins or iy >= bins:
            return None
        fx, fy = ix / bins, iy / bins
        return (fx, fy, fx, fy)


@dataclass(frozen=True)
class CogVLMLocationCodec(FerretLocationCodec):
    """Integers 000..999 zero-padded, `[[x1,y1,x2,y2]]`, boxes `;`-joined inside (CogVLM grounding)."""

    digits: int = 3
    separator: str = ","
    joint: str = ";"
    double: bool = True
    points: ClassVar[bool] = False  # no published point form


__all__ = ["CogVLMLocationCodec", "FerretLocationCodec", "LlavaLocationCodec", "ShikraLocationCodec"]

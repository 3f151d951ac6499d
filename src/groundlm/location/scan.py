"""What the three codecs share when reading model output: phrase→boxes pairing, stripping, box checks.

Every codec writes a phrase as `<p>phrase</p>` directly before its location(s); they differ only in what a
location looks like (text `{...}`, `<loc_k>` tokens, or an `<at>` trigger). `scanner` builds one regex that
finds phrases and locations in reading order, and `pair` ties each location to the phrase right before it.
The regexes take no nested quantifiers over the same characters, so parsing stays linear in the text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from ..records import BOX_SLOT
from .objects import BoxNorm, GroundedObject

PHRASE_TOKENS = ["<p>", "</p>"]
_PHRASE_TAGS = r"<\s*/?\s*p\s*>"
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,!?;:])")


def scanner(barrier: str, location: str) -> re.Pattern[str]:
    """A regex with groups `phrase` (its words in `words`) and `loc` (one location run), in reading order.

    A phrase never spans another `<p>` or a match of `barrier` (the start of a location), so an unclosed `<p>`
    cannot swallow the locations after it.
    """
    phrase = rf"<\s*p\s*>(?P<words>(?:(?!<\s*p\s*>|{barrier}).)*?)<\s*/\s*p\s*>"
    return re.compile(rf"(?P<phrase>{phrase})|(?P<loc>{location})", re.DOTALL)


def pair(
    text: str,
    pattern: re.Pattern[str],
    boxes_of: Callable[[re.Match[str]], list[BoxNorm]],
    keeps_phrase_until: Callable[[str, int], int] | None = None,
) -> list[GroundedObject]:
    """The objects of `text`: each location match's boxes (`boxes_of`), owned by the phrase before it.

    A phrase owns the location that follows its `</p>` with only whitespace in between. With
    `keeps_phrase_until` the phrase also owns the next location when it follows, after whitespace, the
    position that function gives (the embedding codec's `<at><boxes> <at>` runs of one phrase). Never raises:
    text that is not a string, or a failure inside, gives [] (garbage from a model means no objects).
    """
    return never_raising(lambda t: _pair(t, pattern, boxes_of, keeps_phrase_until), text)


def never_raising(read: Callable[[str], list[GroundedObject]], text: object) -> list[GroundedObject]:
    """`read(text)`, or [] when `text` is not a string or reading it fails: a parser of model output must not
    crash its caller, and garbage from a model means no objects."""
    if not isinstance(text, str):
        return []
    try:
        return read(text)
    except Exception:  # any failure inside a parser means the text holds no readable objects
        return []


def _pair(text, pattern, boxes_of, keeps_phrase_until) -> list[GroundedObject]:
    objects: list[GroundedObject] = []
    phrase: str | None = None
    phrase_end = -1
    for m in pattern.finditer(text):
        if m.group("phrase") is not None:
            phrase = " ".join(m.group("words").split()) or None
            phrase_end = m.end()
            continue
        owner = phrase if phrase_end >= 0 and not text[phrase_end : m.start()].strip() else None
        boxes = boxes_of(m)
        objects += [GroundedObject(owner, box) for box in boxes]
        if owner is not None and boxes and keeps_phrase_until is not None:
            phrase_end = keeps_phrase_until(text, m.end())
        else:
            phrase, phrase_end = None, -1
    return objects


def markup(location: str) -> re.Pattern[str]:
    """The phrase tags or `location`: what `tidy` removes from an answer in one pass."""
    return re.compile(rf"{_PHRASE_TAGS}|{location}")


def tidy(text: str, pattern: re.Pattern[str]) -> str:
    """`text` with `pattern` (a `markup`) removed, whitespace collapsed, no space before punctuation."""
    return _SPACE_BEFORE_PUNCT.sub(r"\1", " ".join(pattern.sub(" ", text).split()))


def ordered(q: Sequence[float]) -> tuple:
    """Corners in order (x1 <= x2, y1 <= y2): swapped corners still span one box, which is worth scoring."""
    x1, x2 = sorted((q[0], q[2]))
    y1, y2 = sorted((q[1], q[3]))
    return (x1, y1, x2, y2)


def number_words(top: int, width: int = 0) -> list[str]:
    """`0` … `top` as words (zero-padded to `width` digits): what a word-level tokenizer built from scratch
    (tokenizer.py) needs in its vocabulary to write a format's coordinates as numbers."""
    return [str(i).zfill(width) for i in range(top + 1)]


def check_bins(bins: object, least: int) -> None:
    """Raise unless `bins` is an integer (not a bool) of at least `least`."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < least:
        raise ValueError(f"bins must be an integer >= {least}, got {bins!r}")


def check_four(q: Sequence) -> None:
    """Raise unless `q` holds the 4 numbers of a box."""
    if len(q) != 4:
        raise ValueError(f"a box needs 4 numbers, got {len(q)}: {q!r}")


def checked_box(box_norm: Sequence[float]) -> list[float]:
    """The 4 coordinates of a box as floats; raises on another length or a non-finite value."""
    check_four(box_norm)
    values = [float(v) for v in box_norm]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"a box coordinate is not finite: {box_norm!r}")
    return values


def slot_box(slot: re.Match[str], boxes_norm: Sequence[Sequence[float]]) -> Sequence[float]:
    """The box a `<box:i>` slot points at; raises when there is no such box."""
    i = int(slot.group(1))
    if i >= len(boxes_norm):
        raise ValueError(f"slot {slot.group(0)} has no box: only {len(boxes_norm)} boxes are given")
    return boxes_norm[i]


def slot_texts(
    slots: str, boxes_norm: Sequence[Sequence[float]], box_text: Callable[[Sequence[float]], str]
) -> list[str]:
    """`box_text` of the box of each `<box:i>` slot in `slots`, in order."""
    return [box_text(slot_box(s, boxes_norm)) for s in BOX_SLOT.finditer(slots)]


__all__ = ["PHRASE_TOKENS", "check_bins", "number_words", "check_four", "checked_box", "markup", "never_raising", "ordered", "pair", "scanner", "slot_box", "slot_texts", "tidy"]

"""What the three codecs share when reading model output: phrase→boxes pairing, stripping, box checks.

Every codec writes a phrase as `<p>phrase</p>` directly before its location(s); they differ only in what a
location looks like (text `{...}`, `<loc_k>` tokens, or an `<at>` trigger). `scanner` builds one regex that
finds phrases and locations in reading order, and `pair` ties each location to the phrase right before it.
The regexes take no nested quantifiers over the same characters, so parsing stays linear in the text.

`to_slots` (every codec's inverse of `render`) writes a text back as record content: `SlotText` copies the text
through and replaces spans in reading order, `pair_slots` is `pair`'s walk writing `<p>phrase</p><box:k>`
instead of objects, and `slots_never_raising` is `never_raising` for it.
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


def pair_slots(
    text: str,
    pattern: re.Pattern[str],
    boxes_of: Callable[[re.Match[str]], list[BoxNorm]],
    first: int = 0,
    keeps_phrase_until: Callable[[str, int], int] | None = None,
) -> tuple[str, list[BoxNorm]]:
    """`text` as record content (`to_slots`), by the ownership rule of `pair` over the same `pattern`.

    A location with boxes becomes one `<box:k>` slot per box; a phrase that owns it is written
    `<p>phrase</p>` right before its slots (the whitespace in between dropped), and locations it keeps owning
    follow with the whitespace between them dropped too. Every other phrase is written `<p>words</p>` (a
    format's phrase tag turned into the record's; empty words stay as they were), and a location without a
    valid box stays as it was written. Never raises: a failure gives `text` unchanged and no boxes.
    """
    return slots_never_raising(
        lambda t, k: _pair_slots(t, pattern, boxes_of, k, keeps_phrase_until), text, first
    )


def _pair_slots(text, pattern, boxes_of, first, keeps_phrase_until) -> tuple[str, list[BoxNorm]]:
    out = SlotText(text, first)
    pending: re.Match[str] | None = None  # a phrase not written yet
    words: str | None = None
    phrase_end = -1

    def write_pending() -> None:
        nonlocal pending
        if pending is not None:
            out.replace(pending.start(), pending.end(), tagged(pending.group("words")))
            pending = None

    for m in pattern.finditer(text):
        if m.group("phrase") is not None:
            write_pending()
            pending, words, phrase_end = m, " ".join(m.group("words").split()) or None, m.end()
            continue
        owned = words is not None and phrase_end >= 0 and not text[phrase_end : m.start()].strip()
        boxes = boxes_of(m)
        if not boxes:  # not a readable location: its text stays, and it ends the phrase's claim
            write_pending()
            words, phrase_end = None, -1
            continue
        if owned:
            if pending is not None:
                out.replace(pending.start(), pending.end(), f"<p>{words}</p>")
                pending = None
            out.replace(phrase_end, m.end(), out.slots(boxes), phrase=True)
        else:
            write_pending()
            out.bare(m.start(), m.end(), boxes)
        if owned and keeps_phrase_until is not None:
            phrase_end = keeps_phrase_until(text, m.end())
        else:
            words, phrase_end = None, -1
    write_pending()
    return out.result()


class SlotText:
    """`to_slots` output being built: `text` copied through in reading order, spans replaced by record markup,
    and the boxes of the `<box:k>` slots (numbered from `first`) collected in slot order."""

    def __init__(self, text: str, first: int = 0):
        self.text, self.next = text, first
        self.boxes: list[BoxNorm] = []
        self._parts: list[str] = []
        self._pos = 0
        self._phrase_end = -1  # where the last slots written for a phrase end in `text`

    def replace(self, start: int, end: int, new: str, *, phrase: bool = False) -> None:
        """Copy the text up to `start`, then write `new` instead of `text[start:end]` (spans in reading order);
        `phrase`: `new` ends with a phrase's slots."""
        if start > self._pos:
            self._parts.append(self.text[self._pos : start])
        self._parts.append(new)
        self._pos = max(self._pos, end)
        self._phrase_end = end if phrase else -1

    def bare(self, start: int, end: int, boxes: Sequence[BoxNorm]) -> None:
        """Write slots without a phrase instead of `text[start:end]`; right after a phrase's slots they get a
        space before them, since `<p>a</p><box:0><box:1>` would make them the phrase's."""
        space = " " if self._phrase_end == start else ""
        self.replace(start, end, space + self.slots(boxes))

    def slots(self, boxes: Sequence[BoxNorm]) -> str:
        """The next slots, one per box, with their boxes kept."""
        k = self.next
        self.next += len(boxes)
        self.boxes.extend(boxes)
        return "".join(f"<box:{i}>" for i in range(k, self.next))

    def result(self) -> tuple[str, list[BoxNorm]]:
        """The content and its slots' boxes."""
        return "".join(self._parts) + self.text[self._pos :], self.boxes


def tagged(words: str) -> str:
    """A phrase as records write it, `<p>words</p>` (whitespace collapsed); blank words stay as they are."""
    phrase = " ".join(words.split())
    return f"<p>{phrase}</p>" if phrase else words


def slots_never_raising(
    write: Callable[[str, int], tuple[str, list[BoxNorm]]], text: object, first: int
) -> tuple[str, list[BoxNorm]]:
    """`write(text, first)`, or the text unchanged with no boxes when reading it fails ("" for a non-string):
    importing a row must not crash on a text a format cannot read."""
    if not isinstance(text, str):
        return "", []
    try:
        return write(text, first)
    except Exception:  # unreadable text holds no locations to convert
        return text, []


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


__all__ = [
    "PHRASE_TOKENS",
    "SlotText",
    "check_bins",
    "check_four",
    "checked_box",
    "markup",
    "never_raising",
    "number_words",
    "ordered",
    "pair",
    "pair_slots",
    "scanner",
    "slot_box",
    "slot_texts",
    "slots_never_raising",
    "tagged",
    "tidy",
]

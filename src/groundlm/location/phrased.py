"""Rendering helper shared by the published-format codecs whose phrase syntax is not `<p>…</p>` (Kosmos-2,
Florence-2, PaliGemma): it finds each `<p>phrase</p>` with the `<box:i>` slots right after it (or a bare slot
run) in record content and lets the codec write the group in its own syntax.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from .scan import slot_box

# `<p>words</p>` followed by zero or more slots, or a bare slot run. `[^<]*` stops at the next `<`, so a failed
# attempt never rescans text another attempt has read: linear in the content.
_GROUP = re.compile(r"<p>(?P<words>[^<]*)</p>(?P<slots>(?:<box:\d+>)*)|(?P<bare>(?:<box:\d+>)+)")
_SLOT = re.compile(r"<box:(\d+)>")

# (phrase words or None for a bare run, the run's boxes, the text before the group since the previous group
# ended) -> (the new text before the group, the group written in the format)
GroupWriter = Callable[[str | None, list[Sequence[float]], str, bool], tuple[str, str]]


def render_groups(content: str, boxes_norm: Sequence[Sequence[float]], write: GroupWriter) -> str:
    """`content` with every phrase group and bare slot run replaced through `write`.

    `write(words, boxes, before, follows_group)` gets the text between the previous group and this one
    (`follows_group`: whether a written group came before), so a format can move a space into its phrase
    (Kosmos-2) or put a separator between adjacent detections (PaliGemma). A phrase without slots keeps only
    its words: the format has no way to write a phrase without a location.
    """
    out: list[str] = []
    last = 0
    follows = False
    for m in _GROUP.finditer(content):
        before = content[last : m.start()]
        slots = m.group("bare") if m.group("bare") is not None else m.group("slots")
        if not slots:
            out += [before, m.group("words")]
            follows = False
        else:
            words = None if m.group("bare") is not None else m.group("words")
            boxes = [slot_box(s, boxes_norm) for s in _SLOT.finditer(slots)]
            before, written = write(words, boxes, before, follows)
            out += [before, written]
            follows = True
        last = m.end()
    out.append(content[last:])
    return "".join(out)


def phrase_of(words: str) -> str | None:
    """Phrase words with whitespace collapsed; None when nothing is left."""
    return " ".join(words.split()) or None


__all__ = ["GroupWriter", "phrase_of", "render_groups"]

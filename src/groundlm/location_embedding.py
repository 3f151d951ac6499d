"""The `embedding` location codec: NExT-Chat's pix2emb, a box as one continuous embedding instead of text.

Text form (NExT-Chat's code names; its paper calls them `<trigger>` and `<loc>`):
- a location the model **outputs** (assistant turn) is `<at><boxes>`: the language model learns to emit the
  trigger `<at>` (a normal LM target); the box decoder reads the last hidden state *at* the `<at>` position and
  turns it into a box. `<boxes>` follows it and is never a target: its input embedding is the box encoder's
  embedding of the box (the ground truth in training, the decoded box in generation), so what the model says
  next can depend on where it pointed.
- a location the model **reads** (user turn, a visual prompt) is `<boxes>` alone, its embedding made by the box
  encoder from the user's box. (NExT-Chat writes `<at> <boxes>` in user turns too; without the `<at>` every
  `<at>` in a training sequence is a supervised trigger, so the model needs no label mask to find them.)

The processor hands the model the boxes as tensors, both normalised to the model's input frame, xyxy in [0, 1]:
- `slot_boxes` [N_slot, 4]: one row per `<boxes>` token of the batch, in reading order (row by row through the
  batch, left to right), user and assistant slots alike;
- `trigger_boxes` [N_trigger, 4]: one row per `<at>` token of the batch, in the same order: the targets of the
  box decoder (the same boxes as the assistant slots).

Parsing needs the boxes the decoder produced while generating (`generation.py` returns them in order):
`parse(text, boxes)` pairs the i-th `<at>` of the text with `boxes[i]` (corners put in order and clamped to
[0, 1]: the decoder is unconstrained); a phrase `<p>…</p>` directly before a trigger names it. Without boxes (plain text from somewhere else) there is nothing to return. Never raises.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .location import BoxNorm, GroundedObject
from .records import BOX_SLOT

TRIGGER_TOKEN = "<at>"
SLOT_TOKEN = "<boxes>"

_PHRASE = r"<\s*p\s*>((?:(?!<\s*p\s*>|<\s*at\s*>).)*?)<\s*/\s*p\s*>"
_SCAN = re.compile(rf"(?P<phrase>{_PHRASE})|(?P<trigger><\s*at\s*>)", re.DOTALL)
_TAGS = re.compile(r"<\s*/?\s*p\s*>|<\s*at\s*>|<\s*boxes\s*>")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([.,!?;:])")


@dataclass(frozen=True)
class EmbeddingLocationCodec:
    """Boxes as a trigger token (output) and a slot token whose embedding encodes the box (input)."""

    trigger: str = TRIGGER_TOKEN
    slot: str = SLOT_TOKEN

    def render(self, content: str, boxes_norm: Sequence[Sequence[float]], *, output: bool = True) -> str:
        """Replace each `<box:i>` slot by `<at><boxes>` (`output`, an assistant turn) or `<boxes>` (a user turn).

        The text carries no coordinates; `slot_boxes(content, boxes_norm)` gives the boxes in slot order.
        """
        mark = self.trigger + self.slot if output else self.slot
        self.slot_boxes(content, boxes_norm)  # raises on a slot without a box
        return BOX_SLOT.sub(mark, content)

    def slot_boxes(self, content: str, boxes_norm: Sequence[Sequence[float]]) -> list[BoxNorm]:
        """The boxes of the `<box:i>` slots of `content`, in the order the slots appear."""
        out: list[BoxNorm] = []
        for slot in BOX_SLOT.finditer(content):
            i = int(slot.group(1))
            if i >= len(boxes_norm):
                raise ValueError(f"slot {slot.group(0)} has no box: only {len(boxes_norm)} boxes are given")
            b = boxes_norm[i]
            out.append((float(b[0]), float(b[1]), float(b[2]), float(b[3])))
        return out

    def parse(self, text: str, boxes: Sequence[Sequence[float]] | None = None) -> list[GroundedObject]:
        """The grounded objects of a generated answer: the i-th `<at>` with `boxes[i]` (decoded, [0, 1]).

        A trigger without a box (none given, or fewer boxes than triggers) gives no object. Never raises.
        """
        if not isinstance(text, str) or not boxes:
            return []
        try:
            objects: list[GroundedObject] = []
            phrase: str | None = None
            phrase_end = -1
            n = 0
            for m in _SCAN.finditer(text):
                if m.group("phrase") is not None:
                    phrase = " ".join(m.group(2).split()) or None
                    phrase_end = m.end()
                    continue
                if n < len(boxes):
                    owner = phrase if phrase_end >= 0 and not text[phrase_end : m.start()].strip() else None
                    objects.append(GroundedObject(owner, _valid_box(boxes[n])))
                    # Several boxes of one phrase: the next trigger after `<boxes>` keeps the phrase.
                    phrase_end = _after_slot(text, m.end()) if owner is not None else -1
                    phrase = owner
                n += 1
            return objects
        except Exception:  # a parser of model output must not crash the caller
            return []

    def strip(self, text: str) -> str:
        """The human-readable answer: phrases kept, `<p>` tags, `<at>` and `<boxes>` removed."""
        if not isinstance(text, str):
            return ""
        text = " ".join(_TAGS.sub(" ", text).split())
        return _SPACE_BEFORE_PUNCT.sub(r"\1", text)

    def special_tokens(self) -> list[str]:
        """Tokens the tokenizer must keep whole: `<p>`, `</p>`, the trigger and the slot."""
        return ["<p>", "</p>", self.trigger, self.slot]


def _valid_box(b: Sequence[float]) -> BoxNorm:
    """A decoded box as a valid box of the frame: corners ordered (the decoder has no such constraint) and
    clamped to [0, 1], like the text codec's swapped corners and bounded bins."""
    x1, x2 = sorted((min(max(float(b[0]), 0.0), 1.0), min(max(float(b[2]), 0.0), 1.0)))
    y1, y2 = sorted((min(max(float(b[1]), 0.0), 1.0), min(max(float(b[3]), 0.0), 1.0)))
    return (x1, y1, x2, y2)


def _after_slot(text: str, pos: int) -> int:
    """The position after an optional `<boxes>` (and whitespace) starting at `pos`."""
    m = re.compile(r"\s*<\s*boxes\s*>").match(text, pos)
    return m.end() if m else pos

"""The `kosmos2` location codec: Kosmos-2's patch-index grounding (Peng et al. 2023, "Kosmos-2: Grounding
Multimodal Large Language Models to the World"; format as in the `transformers` Kosmos-2 processor).

Format: `<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object>`. The image is cut
into `num_patches_per_side`² cells (32 × 32); a box is the cell of its upper-left corner and the cell of its
lower-right corner, each written `<patch_index_{y * n + x:04d}>`. Several boxes of one phrase share one
`<object>`, separated by `</delimiter_of_multi_objects/>`. Kosmos-2 writes the space before the phrase's words
inside `<phrase>` (`An image of<phrase> a snowman</phrase>`), so `render` moves it there.

Quantisation (the processor's `coordinate_to_patch_index`): `ul = floor(x1 * n), floor(y1 * n)`,
`lr = ceil(x2 * n - 1), ceil(y2 * n - 1)`, clamped to the grid; a box thinner than a cell (lr before ul) is
written as ul's cell. Dequantisation (`patch_index_to_coordinate`): with cell c = 1 / n, cell edges
(`ul * c`, `lr * c + c`) when both corners fall in the same cell, row or column, otherwise cell centres
(`+ c / 2`). A round trip is therefore off by less than one cell.

Frame: "resize" — Kosmos-2 squashes the image to 224 × 224 without padding, so the numbers refer to the
original image.

Parsing never raises, tolerates whitespace between tokens, keeps the complete corner pairs of an object cut
short (no `</object>`, e.g. by `max_new_tokens`), drops a patch index outside the grid, and ties an object to
the `<phrase>` right before it (whitespace allowed in between). `coordinate_tokens()` is None: the two tokens
of a box are cell ids, not one value per coordinate.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .codec import WrittenLocations
from .objects import BoxNorm, GroundedObject
from .phrased import phrase_of, render_groups
from .scan import SlotText, check_bins, checked_box, never_raising, ordered, slots_never_raising, tagged, tidy

_PHRASE_OPEN, _PHRASE_CLOSE = "<phrase>", "</phrase>"
_OBJECT_OPEN, _OBJECT_CLOSE = "<object>", "</object>"
_DELIMITER = "</delimiter_of_multi_objects/>"
_GROUNDING = "<grounding>"  # Kosmos-2's prompt prefix asking for grounded output; never written by render

# One token per match, each of bounded length except a phrase's words, which stop at the next `<`: a failed
# attempt never reads past text another attempt reads, so scanning is linear in the text.
_TOKEN = re.compile(
    r"<phrase>(?P<words>[^<]*)</phrase>|(?P<open><object>)|(?P<close></object>)"
    r"|<patch_index_(?P<patch>\d{1,9})>|(?P<delim></delimiter_of_multi_objects/>)"
)
_MARKUP = re.compile(r"</?phrase>|</?object>|<patch_index_\d{1,9}>|</delimiter_of_multi_objects/>|<grounding>")


@dataclass(frozen=True)
class Kosmos2LocationCodec(WrittenLocations):
    """Boxes as two `<patch_index_k>` cell tokens in `<object>`, phrases as `<phrase> words</phrase>`."""

    num_patches_per_side: int = 32
    frame = "resize"

    def __post_init__(self) -> None:
        check_bins(self.num_patches_per_side, 1)

    def token(self, k: int) -> str:
        """The token of cell `k` (row-major, `y * n + x`)."""
        return f"<patch_index_{k:04d}>"

    def quantize(self, box_norm: Sequence[float]) -> tuple[int, int]:
        """[0, 1] box → (upper-left cell, lower-right cell) indices."""
        n = self.num_patches_per_side
        x1, y1, x2, y2 = ordered(checked_box(box_norm))

        def cell(v: float, f) -> int:
            return min(max(f(v), 0), n - 1)

        ul_x, ul_y = cell(x1 * n, math.floor), cell(y1 * n, math.floor)
        lr_x, lr_y = cell(x2 * n - 1, math.ceil), cell(y2 * n - 1, math.ceil)
        # a box thinner than a cell would get lr before ul; Kosmos-2 never emits that, so keep one cell
        lr_x, lr_y = max(lr_x, ul_x), max(lr_y, ul_y)
        return ul_y * n + ul_x, lr_y * n + lr_x

    def dequantize(self, ul: int, lr: int) -> BoxNorm:
        """Cell indices → [0, 1] box, exactly as Kosmos-2's `patch_index_to_coordinate`."""
        n = self.num_patches_per_side
        c = 1.0 / n
        ul_x, ul_y = ul % n, ul // n
        lr_x, lr_y = lr % n, lr // n
        if ul_x == lr_x or ul_y == lr_y:  # same cell, row or column: the cells' outer edges
            box = (ul_x * c, ul_y * c, lr_x * c + c, lr_y * c + c)
        else:
            box = (ul_x * c + c / 2, ul_y * c + c / 2, lr_x * c + c / 2, lr_y * c + c / 2)
        return ordered(box)

    def render_boxes(self, boxes: Sequence[Sequence[float]]) -> str:
        """`<object>` with the boxes' corner tokens, separated by the multi-object delimiter."""
        pairs = ["".join(self.token(k) for k in self.quantize(b)) for b in boxes]
        return f"{_OBJECT_OPEN}{_DELIMITER.join(pairs)}{_OBJECT_CLOSE}"

    def render(self, content: str, boxes_norm: Sequence[Sequence[float]], *, output: bool = True) -> str:
        """`<p>phrase</p><box:i>…` → `<phrase> phrase</phrase><object>…</object>`; a bare slot run → `<object>…`.

        One whitespace character right before `<p>` moves inside `<phrase>` (Kosmos-2's spacing); the phrase
        always starts with a space. `output` changes nothing."""

        def write(words, boxes, before, follows):
            objects = self.render_boxes(boxes)
            if words is None:
                return before, objects
            if before[-1:].isspace():
                before = before[:-1]
            return before, f"{_PHRASE_OPEN} {' '.join(words.split())}{_PHRASE_CLOSE}{objects}"

        return render_groups(content, boxes_norm, write)

    def parse(self, text: str, decoded: Sequence[Sequence[float]] = ()) -> list[GroundedObject]:
        """The grounded objects of `text` in reading order; never raises. `decoded` is ignored."""
        return never_raising(self._parse, text)

    def _parse(self, text: str) -> list[GroundedObject]:
        n = self.num_patches_per_side
        objects: list[GroundedObject] = []
        phrase: str | None = None  # the phrase that may own the next object
        in_object = False
        owner: str | None = None
        cells: list[int] = []  # patch indices of the current box (0, 1 or 2)
        boxes: list[BoxNorm] = []

        def finish() -> None:
            nonlocal in_object, cells, boxes
            objects.extend(GroundedObject(owner, b) for b in boxes)
            in_object, cells, boxes = False, [], []

        last = 0
        for m in _TOKEN.finditer(text):
            if text[last : m.start()].strip():  # words between tokens end an object and a phrase's claim
                if in_object:
                    finish()
                phrase = None
            last = m.end()
            if m.group("words") is not None:
                if in_object:
                    finish()
                phrase = phrase_of(m.group("words"))
            elif m.group("open") is not None:
                if in_object:
                    finish()
                in_object, owner, phrase = True, phrase, None
            elif not in_object:
                phrase = None  # a stray close, delimiter or patch token outside an object
            elif m.group("close") is not None:
                finish()
            elif m.group("delim") is not None:
                cells = []  # an incomplete pair before a delimiter is dropped
            else:
                cells.append(int(m.group("patch")))
                if len(cells) == 2:
                    if max(cells) < n * n:
                        boxes.append(self.dequantize(cells[0], cells[1]))
                    cells = []
        if in_object:
            finish()
        return objects

    def to_slots(self, text: str, first: int = 0, *, output: bool = True) -> tuple[str, list[BoxNorm]]:
        """`of<phrase> a cat</phrase><object>…</object>` → `of <p>a cat</p><box:0>` (the inverse of `render`;
        the phrases and boxes `parse` reads): the space Kosmos-2 writes inside `<phrase>` goes back before `<p>`
        unless the text there already ends in whitespace or starts. A `<phrase>` owning no object becomes its
        plain words, an object without a complete box stays as written, `<grounding>` stays. Never raises."""
        return slots_never_raising(self._to_slots, text, first)

    def _to_slots(self, text: str, first: int) -> tuple[str, list[BoxNorm]]:
        n = self.num_patches_per_side
        out = SlotText(text, first)
        phrase: re.Match[str] | None = None  # the phrase that may own the next object, not written yet
        owner: re.Match[str] | None = None
        start = end = -1  # the open object's first and last token; start < 0: none open
        cells: list[int] = []
        boxes: list[BoxNorm] = []

        def plain(m: re.Match[str] | None) -> None:
            if m is not None:
                out.replace(m.start(), m.end(), m.group("words"))

        def finish() -> None:
            nonlocal start, owner, cells, boxes
            if not boxes:
                plain(owner)
            elif owner is None or not owner.group("words").strip():
                plain(owner)
                out.bare(start, end, boxes)
            else:
                words, at = owner.group("words"), owner.start()
                space = " " if words[:1].isspace() and at and not text[at - 1].isspace() else ""
                out.replace(at, end, space + tagged(words) + out.slots(boxes), phrase=True)
            start, owner, cells, boxes = -1, None, [], []

        last = 0
        for m in _TOKEN.finditer(text):
            if text[last : m.start()].strip():  # words between tokens end an object and a phrase's claim
                if start >= 0:
                    finish()
                plain(phrase)
                phrase = None
            last = m.end()
            if m.group("words") is not None:
                if start >= 0:
                    finish()
                plain(phrase)
                phrase = m
            elif m.group("open") is not None:
                if start >= 0:
                    finish()
                start, end, owner, phrase = m.start(), m.end(), phrase, None
            elif start < 0:  # a stray close, delimiter or patch token outside an object
                plain(phrase)
                phrase = None
            else:
                end = m.end()
                if m.group("close") is not None:
                    finish()
                elif m.group("delim") is not None:
                    cells = []
                else:
                    cells.append(int(m.group("patch")))
                    if len(cells) == 2:
                        if max(cells) < n * n:
                            boxes.append(self.dequantize(cells[0], cells[1]))
                        cells = []
        if start >= 0:
            finish()
        plain(phrase)
        return out.result()

    def strip(self, text: str) -> str:
        """The answer for people: phrase words kept, Kosmos-2 tags and patch tokens removed."""
        return tidy(text, _MARKUP) if isinstance(text, str) else ""

    def special_tokens(self) -> list[str]:
        """The grounding tags, the delimiter and every `<patch_index_k>`."""
        tags = [_GROUNDING, _PHRASE_OPEN, _PHRASE_CLOSE, _OBJECT_OPEN, _OBJECT_CLOSE, _DELIMITER]
        return [*tags, *(self.token(k) for k in range(self.num_patches_per_side**2))]

    def added_tokens(self) -> list[str]:
        """All of `special_tokens`: each must be one id of a pretrained tokenizer."""
        return self.special_tokens()

    def coordinate_tokens(self) -> list[str] | None:
        """None: a patch token is a cell (x and y together), not one coordinate's value."""
        return None


__all__ = ["Kosmos2LocationCodec"]

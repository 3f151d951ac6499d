"""Visual prompts: the user points at a region with a box or a click (LLaVA-Grounding's interactive input).

A box is already a location input: a `<box:i>` slot in the user turn plus its pixels in `boxes`, written by
whichever codec the model uses (text `{<x1><y1><x2><y2>}`, four `<loc_k>` tokens, or a `<boxes>` slot whose
embedding the box encoder makes). A click becomes a small box centred on it, so it takes the same path in
every codec and needs no model of its own.

Size of a click's box: a square of side `POINT_BOX_SIDE` = 0.04 of the model's input frame (2% each way), the
size the web page (`serve/web.py`) gives a clicked point (4% of the image's longer side), so a click means the
same in the API and on the page. LLaVA-Grounding's demo turns a click into a 0.006 × 0.006 box for its
Semantic-SAM prompt encoder; with the text codec's 100 bins such a box collapses into one bin (x1 == x2), while
0.04 keeps four bins per axis and is still a point for any object the model can name.

In prompts, `<point:j>` points at `points[j]` ([x, y] in original pixels); it is rewritten to a `<box:k>`
slot whose box is appended after the given boxes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .geometry import Box, Frame

POINT_BOX_SIDE = 0.04
POINT_SLOT = re.compile(r"<point:(\d+)>")


def point_to_box(point: Sequence[float], frame: Frame, side: float = POINT_BOX_SIDE) -> Box:
    """A click at `point` (original pixels) as a box of `side` (fraction of the frame), in original pixels.

    Computed in the frame, so the box is square as the model sees it; clipped to the image.
    """
    if len(point) != 2:
        raise ValueError(f"a point needs 2 numbers, got {len(point)}: {point!r}")
    cx, cy = frame.normalize_point(point)
    half = side / 2
    return frame.denormalize((cx - half, cy - half, cx + half, cy + half))


def with_points(
    prompt: str, boxes: Sequence[Sequence[float]], points: Sequence[Sequence[float]], frame: Frame | None
) -> tuple[str, list]:
    """Rewrite `<point:j>` slots of `prompt` as `<box:k>` slots; returns the prompt and boxes + point boxes."""
    boxes = [list(b) for b in boxes]
    if not points and not POINT_SLOT.search(prompt):
        return prompt, boxes
    if frame is None:
        raise ValueError("points need an image: a click is a position on it")
    first = len(boxes)
    boxes += [list(point_to_box(p, frame)) for p in points]

    def slot(m: re.Match[str]) -> str:
        j = int(m.group(1))
        if j >= len(points):
            raise ValueError(f"{m.group(0)} has no point: only {len(points)} points are given")
        return f"<box:{first + j}>"

    return POINT_SLOT.sub(slot, prompt), boxes


__all__ = ["POINT_BOX_SIDE", "POINT_SLOT", "point_to_box", "with_points"]

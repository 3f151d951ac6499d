"""What an answer grounds: `GroundedObject` (a phrase, its box or point, an optional mask) and the box type
`BoxNorm`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

BoxNorm = tuple[float, float, float, float]
PointNorm = tuple[float, float]


@dataclass(slots=True)  # no per-object dict: dense answers parse to many objects
class GroundedObject:
    """One object an answer grounds: its phrase (None for a bare box) and its box, or its point.

    `box_norm` is xyxy in [0, 1] of the model's input frame; `box` is the same box in pixels of the
    original image once the caller maps it back (`geometry.Frame.denormalize`); `mask` is optional (COCO RLE
    in original pixels from the mask decoder, or an array / tensor a caller set).

    A point (a format that writes `[x, y]` or `"point_2d"`) is `GroundedObject.at(phrase, x, y)`: its box is
    the degenerate box (x, y, x, y), so every consumer of boxes (mapping back, drawing, IoU) takes it
    unchanged, and `is_point` marks it so `point_norm`, `point` and the API keep it a point.
    """

    phrase: str | None
    box_norm: BoxNorm
    box: tuple[float, ...] | None = None
    mask: object | None = None
    is_point: bool = False

    @classmethod
    def at(cls, phrase: str | None, x: float, y: float) -> GroundedObject:
        """A point object at (x, y), [0, 1] of the model's input frame."""
        return cls(phrase, (x, y, x, y), is_point=True)

    @property
    def point_norm(self) -> PointNorm | None:
        """(x, y) in [0, 1] of the model's input frame when this is a point, else None."""
        return (self.box_norm[0], self.box_norm[1]) if self.is_point else None

    @property
    def point(self) -> tuple[float, float] | None:
        """(x, y) in pixels of the original image when this is a point mapped back (`box` set), else None."""
        return (self.box[0], self.box[1]) if self.is_point and self.box is not None else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, the one `ask` callers and the API both send.

        Boxes are lists of floats at full precision; `point_norm` / `point` are `[x, y]` for a point object
        (its box is then the degenerate `[x, y, x, y]`) and None otherwise; a mask that is a dict (COCO RLE) or a list (polygons) is
        kept, an array or tensor mask becomes uncompressed COCO RLE (`masks.rle_encode`), so the JSON stays
        small and has one mask format.
        """
        return {
            "phrase": self.phrase,
            "box_norm": [float(v) for v in self.box_norm],
            "box": None if self.box is None else [float(v) for v in self.box],
            "mask": _json_mask(self.mask),
            "point_norm": None if self.point_norm is None else [float(v) for v in self.point_norm],
            "point": None if self.point is None else [float(v) for v in self.point],
        }


def point_of(box_norm: Sequence[float]) -> PointNorm | None:
    """(x, y) when `box_norm` is the degenerate box (x, y, x, y) of a point, else None.

    Records have no point slot: a point is an object whose box has zero width and height, and a codec that
    writes points (Qwen2.5-VL `point_2d`, Ferret / Shikra `[x, y]`) renders such a slot as a point."""
    x1, y1, x2, y2 = box_norm
    return (float(x1), float(y1)) if x1 == x2 and y1 == y2 else None


def _json_mask(mask: object | None) -> object | None:
    if mask is None or isinstance(mask, dict | list | str):
        return mask
    import numpy as np

    from ..masks import rle_encode

    if hasattr(mask, "detach"):  # a torch tensor, possibly on a device
        mask = mask.detach().cpu().numpy()
    return rle_encode(np.asarray(mask).astype(bool))


__all__ = ["BoxNorm", "GroundedObject", "PointNorm", "point_of"]

"""What an answer grounds: `GroundedObject` (a phrase, its box, an optional mask) and the box type `BoxNorm`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BoxNorm = tuple[float, float, float, float]


@dataclass
class GroundedObject:
    """One object an answer grounds: its phrase (None for a bare box) and its box.

    `box_norm` is xyxy in [0, 1] of the model's input frame; `box` is the same box in pixels of the
    original image once the caller maps it back (`geometry.Frame.denormalize`); `mask` is optional (COCO RLE
    in original pixels from the mask decoder, or an array / tensor a caller set).
    """

    phrase: str | None
    box_norm: BoxNorm
    box: tuple[float, ...] | None = None
    mask: object | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, the one `ask` callers and the API both send.

        Boxes are lists of floats at full precision; a mask that is a dict (COCO RLE) or a list (polygons) is
        kept, an array or tensor mask becomes uncompressed COCO RLE (`masks.rle_encode`), so the JSON stays
        small and has one mask format.
        """
        return {
            "phrase": self.phrase,
            "box_norm": [float(v) for v in self.box_norm],
            "box": None if self.box is None else [float(v) for v in self.box],
            "mask": _json_mask(self.mask),
        }


def _json_mask(mask: object | None) -> object | None:
    if mask is None or isinstance(mask, dict | list | str):
        return mask
    import numpy as np

    from ..masks import rle_encode

    if hasattr(mask, "detach"):  # a torch tensor, possibly on a device
        mask = mask.detach().cpu().numpy()
    return rle_encode(np.asarray(mask).astype(bool))


__all__ = ["BoxNorm", "GroundedObject"]

"""Boxes, IoU/GIoU and the mapping between an original image and the model's square input frame.

Every box in groundlm is four floats. Unless a function name says otherwise the layout is ``xyxy``
(x1, y1, x2, y2) in pixels of the original image, which is what records store (docs/data-format.md).

Two IoU conventions exist in the wild (docs/evaluation.md, "REC: Acc@0.5 and the IoU conventions"): the
continuous one (torchvision, lmms-eval, VLMEvalKit, Shikra) and MiniGPT-v2's "+1 pixel" one, where a box from
x1 to x2 covers x2 - x1 + 1 pixels. ``plus_one`` switches between them; the default is the continuous
convention.

A location codec writes coordinates normalised to the *model's* input frame, not to the original image.
``Frame`` owns that mapping for the two image transforms we support: a plain square resize (MiniGPT-v2)
and LLaVA's pad-to-square (``expand2square``), which shifts the origin by the padding offset.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

Box = tuple[float, float, float, float]
Point = tuple[float, float]

# The two ways an image fits the model's square input (`Frame.mode`): stretched, or letterboxed (LLaVA).
FRAMES = ("resize", "pad")

# Keeps tensor IoU/GIoU finite (and their gradients) when a box has zero area.
_EPS = 1e-7


def _as_box(b: Sequence[float]) -> Box:
    if len(b) != 4:
        raise ValueError(f"a box needs 4 numbers, got {len(b)}: {b!r}")
    return (float(b[0]), float(b[1]), float(b[2]), float(b[3]))


# --------------------------------------------------------------------------------------------------------
# Layout conversions


def xywh_to_xyxy(b: Sequence[float]) -> Box:
    """Convert ``(x, y, w, h)`` (COCO / RefCOCO layout) to ``(x1, y1, x2, y2)``."""
    x, y, w, h = _as_box(b)
    return (x, y, x + w, y + h)


def xyxy_to_xywh(b: Sequence[float]) -> Box:
    """Convert ``(x1, y1, x2, y2)`` to ``(x, y, w, h)``."""
    x1, y1, x2, y2 = _as_box(b)
    return (x1, y1, x2 - x1, y2 - y1)


def cxcywh_to_xyxy(b: Sequence[float]) -> Box:
    """Convert ``(cx, cy, w, h)`` (centre + size, as box decoders predict) to ``(x1, y1, x2, y2)``."""
    cx, cy, w, h = _as_box(b)
    return (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)


def xyxy_to_cxcywh(b: Sequence[float]) -> Box:
    """Convert ``(x1, y1, x2, y2)`` to ``(cx, cy, w, h)``."""
    x1, y1, x2, y2 = _as_box(b)
    return ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)


# --------------------------------------------------------------------------------------------------------
# Validity and clipping


def box_is_valid(b: Sequence[float]) -> bool:
    """True when ``b`` is 4 finite numbers with ``x1 <= x2`` and ``y1 <= y2`` (zero width/height allowed)."""
    try:
        x1, y1, x2, y2 = _as_box(b)
    except (TypeError, ValueError):
        return False
    return all(math.isfinite(v) for v in (x1, y1, x2, y2)) and x1 <= x2 and y1 <= y2


def clip_box(b: Sequence[float], width: float, height: float) -> Box:
    """Clamp an xyxy box into the image ``[0, width] x [0, height]``."""
    x1, y1, x2, y2 = _as_box(b)
    return (
        min(max(x1, 0.0), width),
        min(max(y1, 0.0), height),
        min(max(x2, 0.0), width),
        min(max(y2, 0.0), height),
    )


# --------------------------------------------------------------------------------------------------------
# Scalar IoU / GIoU (metrics, data checks)


def box_area(b: Sequence[float], plus_one: bool = False) -> float:
    """Area of an xyxy box; an inverted box has area 0. ``plus_one`` counts pixels inclusively (x2-x1+1)."""
    x1, y1, x2, y2 = _as_box(b)
    extra = 1.0 if plus_one else 0.0
    return max(0.0, x2 - x1 + extra) * max(0.0, y2 - y1 + extra)


def _intersection(a: Box, b: Box, extra: float) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0]) + extra
    ih = min(a[3], b[3]) - max(a[1], b[1]) + extra
    return max(0.0, iw) * max(0.0, ih)


def box_iou(a: Sequence[float], b: Sequence[float], plus_one: bool = False) -> float:
    """Intersection over union of two xyxy boxes, in [0, 1].

    ``plus_one=True`` reproduces MiniGPT-v2's ``computeIoU`` (and the refer toolkit): widths, heights and
    the intersection are all ``x2 - x1 + 1``. An empty or non-finite union gives 0.0 instead of raising.
    """
    a, b = _as_box(a), _as_box(b)
    extra = 1.0 if plus_one else 0.0
    inter = _intersection(a, b, extra)
    union = box_area(a, plus_one) + box_area(b, plus_one) - inter
    # `not union > 0` is also true for NaN, so non-finite input lands here rather than propagating.
    if not union > 0 or not math.isfinite(union):
        return 0.0
    # Rounding can push the ratio a hair above 1 for (almost) identical boxes.
    return min(1.0, inter / union)


def generalized_box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Generalised IoU (Rezatofighi et al. 2019) of two xyxy boxes, in [-1, 1].

    GIoU = IoU - (hull - union) / hull, where hull is the smallest box enclosing both. It equals IoU when
    one box contains the other and goes negative as disjoint boxes move apart, which is why it is used as a
    loss. Zero-area boxes have IoU 0 but still get the hull penalty (two separate points score -1, like the
    tensor version); an empty hull (identical points) or non-finite input gives 0.0.
    """
    a, b = _as_box(a), _as_box(b)
    inter = _intersection(a, b, 0.0)
    union = box_area(a) + box_area(b) - inter
    iou = min(1.0, inter / union) if union > 0 and math.isfinite(union) else 0.0
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    if not hull > 0 or not math.isfinite(hull):
        return iou
    # The hull always covers the union for valid boxes; max() guards inverted boxes and rounding.
    return max(-1.0, min(iou, iou - (hull - union) / hull))


# --------------------------------------------------------------------------------------------------------
# Tensor IoU / GIoU (losses, batched metrics). Row i of `a` is compared with row i of `b`.


def _check_pairs(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.dim() != 2 or a.shape[-1] != 4:
        raise ValueError(
            f"expected two [N, 4] tensors of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def _tensor_iou_parts(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Clamping widths at 0 makes inverted predictions (x2 < x1 early in training) count as empty boxes.
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)  # [N]
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)  # [N]
    lt = torch.maximum(a[:, :2], b[:, :2])  # [N, 2]
    rb = torch.minimum(a[:, 2:], b[:, 2:])  # [N, 2]
    wh = (rb - lt).clamp(min=0)  # [N, 2]
    inter = wh[:, 0] * wh[:, 1]  # [N]
    union = area_a + area_b - inter  # [N]
    return inter, union


def box_iou_tensor(a: torch.Tensor, b: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """Row-wise IoU of two ``[N, 4]`` xyxy tensors, returning ``[N]``; zero-area pairs give 0, not NaN."""
    _check_pairs(a, b)
    inter, union = _tensor_iou_parts(a, b)
    return inter / (union + eps)


def generalized_box_iou_tensor(a: torch.Tensor, b: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """Row-wise GIoU of two ``[N, 4]`` xyxy tensors, returning ``[N]`` in [-1, 1].

    Differentiable (the GIoU loss is ``1 - generalized_box_iou_tensor(pred, target)``); ``eps`` keeps the
    value and its gradient finite for identical, degenerate or zero-area boxes.
    """
    _check_pairs(a, b)
    inter, union = _tensor_iou_parts(a, b)
    iou = inter / (union + eps)  # [N]
    lt = torch.minimum(a[:, :2], b[:, :2])  # [N, 2]
    rb = torch.maximum(a[:, 2:], b[:, 2:])  # [N, 2]
    wh = (rb - lt).clamp(min=0)  # [N, 2]
    hull = wh[:, 0] * wh[:, 1]  # [N]
    return iou - (hull - union) / (hull + eps)


# --------------------------------------------------------------------------------------------------------
# Original image <-> model input frame


@dataclass(frozen=True)
class Frame:
    """How an original ``width x height`` image maps onto the model's square input.

    ``mode="resize"``: the image is stretched to a square (MiniGPT-v2), so normalised coordinates are
    relative to the original width and height per axis.
    ``mode="pad"``: LLaVA's ``expand2square`` pastes the image onto a ``max(w, h)`` square at offset
    ``((S - w) // 2, (S - h) // 2)``; normalised coordinates are relative to that padded square.
    """

    width: int
    height: int
    mode: Literal["resize", "pad"]

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise ValueError(f"Frame {name} must be a positive integer, got {value!r}")
            # Store a plain int so numpy integers (e.g. from array shapes) don't leak into arithmetic.
            object.__setattr__(self, name, int(value))
        if self.mode not in FRAMES:
            raise ValueError(f"Frame mode must be one of {', '.join(FRAMES)}, got {self.mode!r}")

    @property
    def side(self) -> int:
        """Side of the square canvas in original pixels, ``max(width, height)``.

        In resize mode no canvas exists (each axis is scaled on its own); the value is the same for
        symmetry, but use ``scale`` to map coordinates.
        """
        return max(self.width, self.height)

    @property
    def offset(self) -> tuple[int, int]:
        """Where the image's top-left corner lands on the canvas: floor-centred when padding, else (0, 0)."""
        if self.mode == "resize":
            return (0, 0)
        s = self.side
        # Integer floor division, exactly as expand2square computes the paste position.
        return ((s - self.width) // 2, (s - self.height) // 2)

    @property
    def scale(self) -> tuple[int, int]:
        """Original pixels per unit of normalised coordinate, along x and y."""
        if self.mode == "resize":
            return (self.width, self.height)
        return (self.side, self.side)

    def normalize_point(self, p: Sequence[float]) -> Point:
        """Map a point in original pixels to [0, 1] coordinates of the frame (not clipped)."""
        (ox, oy), (sx, sy) = self.offset, self.scale
        return ((float(p[0]) + ox) / sx, (float(p[1]) + oy) / sy)

    def denormalize_point(self, p: Sequence[float]) -> Point:
        """Map a [0, 1] frame point (e.g. a click on the model's view) back to original pixels, clipped."""
        (ox, oy), (sx, sy) = self.offset, self.scale
        x = float(p[0]) * sx - ox
        y = float(p[1]) * sy - oy
        # A click on the padding band is outside the image; the nearest image pixel is the useful answer.
        return (min(max(x, 0.0), float(self.width)), min(max(y, 0.0), float(self.height)))

    def normalize(self, box_px: Sequence[float]) -> Box:
        """Map an xyxy box in original pixels to [0, 1] coordinates of the frame (not clipped)."""
        x1, y1, x2, y2 = _as_box(box_px)
        nx1, ny1 = self.normalize_point((x1, y1))
        nx2, ny2 = self.normalize_point((x2, y2))
        return (nx1, ny1, nx2, ny2)

    def denormalize(self, box_norm: Sequence[float]) -> Box:
        """Map an xyxy box in [0, 1] frame coordinates back to original pixels, clipped to the image."""
        x1, y1, x2, y2 = _as_box(box_norm)
        px1, py1 = self.denormalize_point((x1, y1))
        px2, py2 = self.denormalize_point((x2, y2))
        return (px1, py1, px2, py2)

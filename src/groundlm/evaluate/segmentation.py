"""Referring segmentation (RES): cIoU and mIoU of predicted masks, and COCO mask decoding.

Conventions (docs/evaluation.md, "Referring segmentation"):
- cIoU ("overall IoU", LISA's and NExT-Chat's headline) = Σ_i |P_i ∩ G_i| / Σ_i |P_i ∪ G_i| over the split,
  so large objects dominate;
- mIoU (LISA calls it gIoU) = mean over samples of |P_i ∩ G_i| / |P_i ∪ G_i|, every expression weighted
  equally. A sample whose prediction and target are both empty scores 1.0, as LISA counts an empty union;
- Prec@t = fraction of samples with IoU >= t (t = 0.5 … 0.9), reported alongside.
Masks are numpy arrays of the ORIGINAL image size (resize predictions back before scoring); any non-zero
value is foreground, because the refer toolkit sums overlapping polygons into values above 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..masks import decode_mask  # noqa: F401  (re-exported: segmentation callers decode COCO masks)

PREC_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def _binary(mask: Any) -> np.ndarray:
    return np.asarray(mask) != 0


def mask_intersection_union(pred: Any, target: Any) -> tuple[int, int]:
    """Pixel counts |P ∩ G| and |P ∪ G| of two same-shaped masks (non-zero = foreground)."""
    p, g = _binary(pred), _binary(target)
    if p.shape != g.shape:
        raise ValueError(f"mask shapes differ: {p.shape} vs {g.shape} (resize the prediction to the image)")
    return int(np.logical_and(p, g).sum()), int(np.logical_or(p, g).sum())


def mask_iou(pred: Any, target: Any) -> float:
    """IoU of two same-shaped masks; 1.0 when both are empty (LISA's convention for no-object targets)."""
    inter, union = mask_intersection_union(pred, target)
    return inter / union if union else 1.0


@dataclass(frozen=True)
class SegmentationResult:
    """RES scores: `ciou` = total intersection / total union, `miou` = mean per-sample IoU, `prec_at[t]`."""

    ciou: float
    miou: float
    prec_at: dict[float, float]
    intersection: int
    union: int
    total: int
    ious: tuple[float, ...]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary (per-sample IoUs left out)."""
        return {
            "ciou": self.ciou,
            "miou": self.miou,
            **{f"prec@{t:g}": v for t, v in self.prec_at.items()},
            "intersection": self.intersection,
            "union": self.union,
            "total": self.total,
        }


def segmentation_scores(
    predictions: Sequence[Any | None],
    targets: Sequence[Any],
    thresholds: Sequence[float] = PREC_THRESHOLDS,
) -> SegmentationResult:
    """cIoU, mIoU and Prec@t of predicted masks against one target mask per expression.

    `predictions[i]` is a mask the shape of `targets[i]`, or None for a missing prediction, which counts as
    an empty mask (IoU 0 against a non-empty target; its target pixels still enter the cIoU union).
    Convention: module docstring. cIoU is 1.0 when every union is empty.
    """
    if len(predictions) != len(targets):
        raise ValueError(f"{len(predictions)} predictions for {len(targets)} targets")
    inter_total = union_total = 0
    ious: list[float] = []
    for pred, target in zip(predictions, targets, strict=True):
        if pred is None:
            pred = np.zeros(np.shape(target), dtype=bool)
        inter, union = mask_intersection_union(pred, target)
        inter_total += inter
        union_total += union
        ious.append(inter / union if union else 1.0)
    n = len(ious)
    return SegmentationResult(
        ciou=inter_total / union_total if union_total else 1.0,
        miou=sum(ious) / n if n else 0.0,
        prec_at={float(t): (sum(iou >= t for iou in ious) / n if n else 0.0) for t in thresholds},
        intersection=inter_total,
        union=union_total,
        total=n,
        ious=tuple(ious),
    )



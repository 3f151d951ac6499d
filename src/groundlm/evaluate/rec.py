"""Referring expression comprehension (REC): Acc@0.5 over predicted boxes.

Tools disagree on two details (docs/evaluation.md, "REC: Acc@0.5 and the IoU conventions"), so both are
switches of `IoUConvention`:
- `plus_one`: MiniGPT-v2 (and the refer toolkit) count a box from x1 to x2 as x2 - x1 + 1 pixels, for both
  areas and the intersection; lmms-eval, VLMEvalKit, Shikra and torchvision use continuous coordinates.
- `strict`: a hit needs IoU > threshold (MiniGPT-v2, Shikra) instead of IoU >= threshold (lmms-eval,
  VLMEvalKit).

The default, `LMMS_EVAL`, is no +1 and `>=`. `MINIGPT_V2` is +1 and `>`; `SHIKRA` is no +1 and `>`.

The denominator is the number of sentences (UNC/UMD protocol): a prediction that could not be parsed is
passed as None and counts as a miss; it is never skipped. All boxes are xyxy in pixels of the original image
(convert RefCOCO's `[x, y, w, h]` with `geometry.xywh_to_xyxy`).

One deliberate difference from every tool: an IoU within 1e-9 of the threshold is treated as equal to it.
Float rounding decides exact ties arbitrarily (a box shifted by a third of its width has IoU 0.5 on paper
and 0.49999999999999994 or 0.5000000000000001 in floats); with the snap a tie is always a hit under `>=`
and always a miss under `>`. Real predictions essentially never tie (none did in the REC-Eval predictions,
docs/evaluation.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from ..geometry import Box, Frame, box_iou
from ..location import TextLocationCodec

# How close to the threshold an IoU must be to count as a tie (see the module docstring).
_TIE = 1e-9


@dataclass(frozen=True)
class IoUConvention:
    """How an IoU is computed and compared with the threshold.

    `plus_one`: inclusive pixel counting (x2 - x1 + 1). `strict`: hit iff IoU > threshold, else IoU >= threshold.
    """

    plus_one: bool = False
    strict: bool = False
    threshold: float = 0.5


# lmms-eval `refcoco_bbox_rec` and VLMEvalKit `RefCOCODataset`: continuous IoU, hit when IoU >= 0.5.
LMMS_EVAL = IoUConvention(plus_one=False, strict=False)
# MiniGPT-v2 `eval_ref.py`: +1 pixel IoU, hit when IoU > 0.5.
MINIGPT_V2 = IoUConvention(plus_one=True, strict=True)
# Shikra `RECComputeMetrics`: torchvision IoU (no +1), hit when IoU > 0.5.
SHIKRA = IoUConvention(plus_one=False, strict=True)
DEFAULT = LMMS_EVAL


@dataclass(frozen=True)
class RecResult:
    """REC scores: `accuracy = hits / total`, where `total` counts every sentence (unparsed ones included).

    `mean_iou` averages the IoU over all sentences, an unparsed answer contributing 0 (as lmms-eval, which
    substitutes [0, 0, 0, 0]). `ious` holds the per-sentence IoU (0.0 for unparsed answers).
    """

    accuracy: float
    hits: int
    total: int
    unparsed: int
    mean_iou: float
    ious: tuple[float, ...]
    convention: IoUConvention

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary (per-sentence IoUs left out)."""
        return {
            "accuracy": self.accuracy,
            "hits": self.hits,
            "total": self.total,
            "unparsed": self.unparsed,
            "mean_iou": self.mean_iou,
            "plus_one": self.convention.plus_one,
            "strict": self.convention.strict,
            "threshold": self.convention.threshold,
        }


def is_hit(iou: float, convention: IoUConvention = DEFAULT) -> bool:
    """Whether an IoU counts as a correct localisation under `convention` (ties within 1e-9 snap to equal)."""
    t = convention.threshold
    if convention.strict:
        return iou > t + _TIE
    return iou >= t - _TIE


def rec_accuracy(
    predictions: Sequence[Sequence[float] | None],
    targets: Sequence[Sequence[float]],
    convention: IoUConvention = DEFAULT,
) -> RecResult:
    """Acc@threshold of predicted boxes against one target box per sentence.

    `predictions[i]` is an xyxy pixel box or None (unparsable answer, a miss); `targets[i]` is the xyxy pixel
    ground truth of sentence i. Convention: `convention` (default no +1 pixel, IoU >= 0.5 — lmms-eval,
    VLMEvalKit); pass `MINIGPT_V2` for +1 pixel and IoU > 0.5. The denominator is `len(targets)`.
    """
    if len(predictions) != len(targets):
        raise ValueError(
            f"{len(predictions)} predictions for {len(targets)} targets: one per sentence needed"
        )
    ious: list[float] = []
    hits = unparsed = 0
    for pred, target in zip(predictions, targets, strict=True):
        if pred is None:
            unparsed += 1
            ious.append(0.0)
            continue
        iou = box_iou(pred, target, plus_one=convention.plus_one)
        ious.append(iou)
        hits += is_hit(iou, convention)
    total = len(targets)
    return RecResult(
        accuracy=hits / total if total else 0.0,
        hits=hits,
        total=total,
        unparsed=unparsed,
        mean_iou=sum(ious) / total if total else 0.0,
        ious=tuple(ious),
        convention=convention,
    )


def text_to_box(
    text: str,
    width: int,
    height: int,
    mode: Literal["resize", "pad"] = "resize",
    codec: TextLocationCodec | None = None,
) -> Box | None:
    """The first box written anywhere in a generated answer, as xyxy pixels of the original `width x height`
    image (groundlm's lenient reading; `minigptv2_answer_box` is MiniGPT-v2's strict one).

    The answer is parsed with the text location codec (`{<x1><y1><x2><y2>}`, default 100 bins; swapped corners
    put in order) and mapped back through `geometry.Frame(width, height, mode)`: "resize" for MiniGPT-v2's
    stretched square input, "pad" for LLaVA's pad-to-square. Returns None when no box can be read (a miss for
    `rec_accuracy`). If the answer holds several boxes only the first is scored.
    """
    objects = (codec or TextLocationCodec()).parse(text)
    if not objects:
        return None
    return Frame(width, height, mode).denormalize(objects[0].box_norm)


def minigptv2_answer_box(text: str, width: int, height: int, res: int = 100) -> Box | None:
    """The box MiniGPT-v2's own REC evaluation reads from an answer, in pixels of the original image, or None.

    Its rule (`readings.py`, docs/evaluation.md): remove every `<unk>` and every space; the answer must *start*
    with `{<a><b><c><d>}` (1-3 digits each), and the whole answer must hold exactly 4 numbers, else it is a
    miss; the numbers are divided by `res` (100) and scaled by the original width and height, corners as
    written (not reordered). Stricter than `text_to_box`, which takes the first box anywhere.
    """
    from .readings import reader

    objects = reader("minigptv2", "text", TextLocationCodec(bins=res))(text)
    if not objects:
        return None
    x1, y1, x2, y2 = objects[0].box_norm
    return (x1 * width, y1 * height, x2 * width, y2 * height)

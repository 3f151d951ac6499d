"""Metrics of the standard grounded-VLM benchmarks, as plain functions over plain data.

Every metric states in its docstring which tool's convention it follows (docs/evaluation.md); inputs
are lists of xyxy pixel boxes, strings and numpy masks, so predictions from any model can be scored.

- `rec`: REC Acc@0.5 with switchable IoU conventions (lmms-eval default, MiniGPT-v2, Shikra).
- `vqa`: VQAv2 soft accuracy with the official normalisation, GQA exact match, VizWiz accuracy.
- `captions`: BLEU-1..4, METEOR, ROUGE-L, CIDEr via pycocoevalcap (needs Java; reported unavailable without).
- `hallucination`: CHAIR-i/-s with the COCO synonym list, POPE accuracy/precision/recall/F1/yes-ratio.
- `segmentation`: RES cIoU, mIoU, Prec@t, COCO polygon/RLE decoding.
- `grounding`: Grounding-Bench-style precision/recall/F1 of (phrase, box) pairs.
"""

from .captions import CaptionScores, MetricUnavailable, caption_scores
from .grounding import GroundingResult, grounding_scores, match_pairs, normalize_phrase, text_to_pairs
from .hallucination import (
    ChairResult,
    PopeResult,
    caption_objects,
    chair,
    image_objects,
    pope_answer,
    pope_metrics,
)
from .rec import (
    DEFAULT,
    LMMS_EVAL,
    MINIGPT_V2,
    SHIKRA,
    IoUConvention,
    RecResult,
    is_hit,
    minigptv2_answer_box,
    rec_accuracy,
    text_to_box,
)
from .segmentation import SegmentationResult, decode_mask, mask_iou, segmentation_scores
from .vqa import exact_match, exact_match_accuracy, normalize_answer, vizwiz_accuracy, vqa_accuracy, vqa_score

__all__ = [
    "DEFAULT",
    "LMMS_EVAL",
    "MINIGPT_V2",
    "SHIKRA",
    "CaptionScores",
    "ChairResult",
    "GroundingResult",
    "IoUConvention",
    "MetricUnavailable",
    "PopeResult",
    "RecResult",
    "SegmentationResult",
    "caption_objects",
    "caption_scores",
    "chair",
    "decode_mask",
    "exact_match",
    "exact_match_accuracy",
    "grounding_scores",
    "image_objects",
    "is_hit",
    "mask_iou",
    "match_pairs",
    "normalize_answer",
    "normalize_phrase",
    "pope_answer",
    "pope_metrics",
    "rec_accuracy",
    "segmentation_scores",
    "minigptv2_answer_box",
    "text_to_box",
    "text_to_pairs",
    "vizwiz_accuracy",
    "vqa_accuracy",
    "vqa_score",
]

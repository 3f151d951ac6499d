"""Grounded captioning (Grounding-Bench style): precision, recall and F1 of (phrase, box) pairs.

Convention: a predicted pair is correct when it can be matched ONE-TO-ONE to a ground-truth pair whose
phrase agrees and whose box overlaps it with IoU >= 0.5 (the `rec.IoUConvention` default; pass
`rec.MINIGPT_V2` or a custom convention to change +1 pixel / strictness / threshold). Among all one-to-one
assignments the one with the most matches is used (maximum bipartite matching), so the order of boxes never
changes the score. precision = matched / predicted pairs, recall = matched / ground-truth pairs,
F1 = their harmonic mean; over a dataset the counts are summed first (micro average).

Phrase agreement: Grounding-Bench (LLaVA-Grounding, Zhang et al. 2023) asks GPT-4 to decide which predicted
phrase refers to which ground-truth phrase. No language model is used here; by default two phrases agree when
`normalize_phrase` makes them equal (lower-cased, punctuation removed, articles dropped, whitespace collapsed),
which is stricter than GPT-4 ("a man" = "the man", but "man" != "person"). Pass `same_phrase` to plug in
another judge. A bare box (phrase None) agrees with nothing. Boxes are xyxy pixels of the original image.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from ..geometry import Box, Frame, box_iou
from ..location import TextLocationCodec
from .rec import DEFAULT, IoUConvention, is_hit

Pair = tuple[str | None, Sequence[float]]
PhraseJudge = Callable[[str, str], bool]

_ARTICLES = frozenset({"a", "an", "the"})
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize_phrase(phrase: str) -> str:
    """Lower-case, punctuation → space, articles dropped, whitespace collapsed: "The Red-Car." → "red car"."""
    words = _PUNCT.sub(" ", phrase.lower()).split()
    return " ".join(w for w in words if w not in _ARTICLES)


def _same_normalized(a: str, b: str) -> bool:
    return normalize_phrase(a) == normalize_phrase(b)


def match_pairs(
    predicted: Sequence[Pair],
    ground_truth: Sequence[Pair],
    *,
    convention: IoUConvention = DEFAULT,
    same_phrase: PhraseJudge | None = None,
) -> list[tuple[int, int]]:
    """The one-to-one matching (predicted index, ground-truth index) with the most matches.

    Two pairs may match when their phrases agree (`same_phrase`, default `normalize_phrase` equality) and
    their boxes are a hit under `convention` (default IoU >= 0.5, no +1 pixel).
    """
    judge = same_phrase or _same_normalized
    allowed: list[list[int]] = []
    for p_phrase, p_box in predicted:
        row = []
        for j, (g_phrase, g_box) in enumerate(ground_truth):
            if p_phrase is None or g_phrase is None or not judge(p_phrase, g_phrase):
                continue
            if is_hit(box_iou(p_box, g_box, plus_one=convention.plus_one), convention):
                row.append(j)
        allowed.append(row)

    # Kuhn's augmenting paths: lists are tiny (a caption grounds a handful of phrases).
    owner: dict[int, int] = {}  # ground-truth index -> predicted index

    def augment(i: int, seen: set[int]) -> bool:
        for j in allowed[i]:
            if j in seen:
                continue
            seen.add(j)
            if j not in owner or augment(owner[j], seen):
                owner[j] = i
                return True
        return False

    for i in range(len(predicted)):
        augment(i, set())
    return sorted((i, j) for j, i in owner.items())


@dataclass(frozen=True)
class GroundingResult:
    """Grounding precision/recall/F1 with the counts they come from (micro-averaged over samples)."""

    precision: float
    recall: float
    f1: float
    matched: int
    predicted: int
    ground_truth: int

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready form."""
        return dict(self.__dict__)


def grounding_scores(
    predictions: Sequence[Sequence[Pair]],
    ground_truth: Sequence[Sequence[Pair]],
    *,
    convention: IoUConvention = DEFAULT,
    same_phrase: PhraseJudge | None = None,
) -> GroundingResult:
    """Precision, recall and F1 of predicted (phrase, box) pairs, one list of pairs per sample.

    Convention: module docstring (one-to-one matching, phrase agreement, IoU >= 0.5; counts summed over
    samples). A phrase grounded by several boxes is several pairs. Undefined ratios are 0.0.
    """
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} predictions for {len(ground_truth)} samples")
    matched = n_pred = n_gt = 0
    for pred, gt in zip(predictions, ground_truth, strict=True):
        matched += len(match_pairs(pred, gt, convention=convention, same_phrase=same_phrase))
        n_pred += len(pred)
        n_gt += len(gt)
    precision = matched / n_pred if n_pred else 0.0
    recall = matched / n_gt if n_gt else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return GroundingResult(precision, recall, f1, matched, n_pred, n_gt)


def text_to_pairs(
    text: str,
    width: int,
    height: int,
    mode: Literal["resize", "pad"] = "resize",
    codec: TextLocationCodec | None = None,
) -> list[tuple[str | None, Box]]:
    """Every (phrase, box) a generated answer grounds, boxes as xyxy pixels of the original image.

    Parsed with the text location codec (`<p>phrase</p> {<x1><y1><x2><y2>}`), mapped back through
    `geometry.Frame(width, height, mode)`. Bare boxes come with phrase None.
    """
    frame = Frame(width, height, mode)
    return [(o.phrase, frame.denormalize(o.box_norm)) for o in (codec or TextLocationCodec()).parse(text)]

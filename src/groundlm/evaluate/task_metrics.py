"""How each kind of task is scored: a `TaskMetric` per kind, built from this package's metric functions.

A prediction row (written by `runner.py`) holds everything scoring needs, so a run can be re-scored without
the model: the task, the reference answer with its `<box:i>` slots, the ground-truth objects (pixels), the
record's meta (VQA's ten answers, POPE's label, reference captions), the image size and frame mode, and the
model's text and parsed objects. Which task uses which metric is declared once, in `groundlm.tasks`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ..geometry import box_iou
from ..records import BOX_SLOT
from .captions import MetricUnavailable, caption_scores
from .grounding import grounding_scores
from .hallucination import pope_answer, pope_metrics
from .rec import IoUConvention, rec_accuracy
from .vqa import normalize_answer, vqa_accuracy

_PHRASE_SLOTS = re.compile(r"<p>(.*?)</p>\s*((?:<box:\d+>)+)")


class TaskMetric(Protocol):
    """Scores the prediction rows of one task."""

    def row_score(self, row: dict) -> float:
        """A per-sample score in [0, 1] used to pick best and worst examples (IoU, F1 or correctness)."""
        ...

    def summary(self, rows: Sequence[dict], convention: IoUConvention, captions: bool) -> dict:
        """The task's metrics: `metric` (its name), `score` (the headline number) and the details."""
        ...


def reference_pairs(row: dict) -> list[tuple[str | None, list[float]]]:
    """The ground-truth (phrase, box) pairs of a reference answer: `<p>phrase</p><box:0><box:2>` → 2 pairs."""
    boxes = [o["box"] for o in row["objects"]]
    pairs = []
    for m in _PHRASE_SLOTS.finditer(row["reference"]):
        for slot in BOX_SLOT.finditer(m.group(2)):
            pairs.append((m.group(1), boxes[int(slot.group(1))]))
    return pairs


def predicted_pairs(row: dict) -> list[tuple[str | None, list[float]]]:
    """The (phrase, box) pairs a prediction grounded, boxes in original pixels."""
    return [(o.get("phrase"), o["box"]) for o in row["prediction_objects"] if o.get("box") is not None]


def target_box(row: dict) -> list[float]:
    """The box of the object a `[refer]` reference answer points at (its first slot)."""
    slot = BOX_SLOT.search(row["reference"])
    if slot is None:
        raise ValueError(f"prediction {row['id']!r}: reference {row['reference']!r} has no <box:i>")
    return row["objects"][int(slot.group(1))]["box"]


def _mean_of_row_scores(metric: TaskMetric, rows: Sequence[dict]) -> dict:
    scores = [metric.row_score(r) for r in rows]
    return {"metric": "accuracy", "score": sum(scores) / len(scores), "total": len(rows)}


@dataclass(frozen=True)
class ReferringAccuracy:
    """REC Acc@0.5: the first predicted box against the referred object; an unparsable answer is a miss. Where
    the records' meta says each expression's `kind`, also the accuracy per kind (`by_kind`)."""

    def row_score(self, row: dict) -> float:
        boxes = [o["box"] for o in row["prediction_objects"]]
        return box_iou(boxes[0], target_box(row)) if boxes else 0.0

    def summary(self, rows: Sequence[dict], convention: IoUConvention, captions: bool) -> dict:
        result = self._accuracy(rows, convention)
        out = {"metric": "Acc@0.5", "score": result.accuracy, **result.to_dict()}
        kinds = sorted({r["meta"]["kind"] for r in rows if isinstance(r.get("meta", {}).get("kind"), str)})
        if kinds:  # ShapesWorld's expressions say their kind: attribute, relation or superlative
            out["by_kind"] = {}
            for kind in kinds:
                part = self._accuracy([r for r in rows if r["meta"].get("kind") == kind], convention)
                out["by_kind"][kind] = {"score": part.accuracy, "hits": part.hits, "total": part.total}
        return out

    def _accuracy(self, rows: Sequence[dict], convention: IoUConvention):
        preds = [r["prediction_objects"][0]["box"] if r["prediction_objects"] else None for r in rows]
        return rec_accuracy(preds, [target_box(r) for r in rows], convention)


def _any_phrase(a: str, b: str) -> bool:
    return True


@dataclass(frozen=True)
class BoxF1:
    """(phrase, box) precision / recall / F1 at IoU >= 0.5; with `boxes_only` the phrases are not compared
    (detection: the phrase is given in the prompt)."""

    boxes_only: bool = False

    def _judge(self):
        return _any_phrase if self.boxes_only else None

    def row_score(self, row: dict) -> float:
        return grounding_scores([predicted_pairs(row)], [reference_pairs(row)], same_phrase=self._judge()).f1

    def summary(self, rows: Sequence[dict], convention: IoUConvention, captions: bool) -> dict:
        result = grounding_scores(
            [predicted_pairs(r) for r in rows], [reference_pairs(r) for r in rows],
            convention=convention, same_phrase=self._judge(),
        )
        return {"metric": "F1", "score": result.f1, **result.to_dict()}


@dataclass(frozen=True)
class PopeScores:
    """POPE: accuracy, precision, recall, F1 and yes-ratio of yes/no answers against `meta.label`."""

    def row_score(self, row: dict) -> float:
        return float(pope_answer(row["prediction"]) == bool(row["meta"].get("label") in (True, "yes")))

    def summary(self, rows: Sequence[dict], convention: IoUConvention, captions: bool) -> dict:
        result = pope_metrics([r["prediction"] for r in rows], [r["meta"]["label"] for r in rows])
        return {"metric": "accuracy", "score": result.accuracy, **result.to_dict()}


@dataclass(frozen=True)
class ExactMatch:
    """Exact match after the VQA normalisation. With `soft_vqa`, VQAv2's soft accuracy where meta holds ten
    `answers`; with `caption_metrics`, BLEU/METEOR/ROUGE-L/CIDEr too when Java is present (else reported
    unavailable)."""

    soft_vqa: bool = False
    caption_metrics: bool = False

    def row_score(self, row: dict) -> float:
        if self.soft_vqa and len(row["meta"].get("answers", [])) >= 2:
            return vqa_accuracy(row["prediction_text"], row["meta"]["answers"])
        return float(normalize_answer(row["prediction_text"]) == normalize_answer(row["reference"]))

    def summary(self, rows: Sequence[dict], convention: IoUConvention, captions: bool) -> dict:
        out = _mean_of_row_scores(self, rows)
        if self.caption_metrics and captions:
            refs = {r["id"]: r["meta"].get("captions") or [r["reference"]] for r in rows}
            cands = {r["id"]: r["prediction_text"] for r in rows}
            scored = caption_scores(cands, refs, meteor=False)
            for name, value in scored.scores.items():
                out[name] = value.reason if isinstance(value, MetricUnavailable) else value
        return out

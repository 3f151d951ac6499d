"""Scoring a predictions file, task by task, with the metric functions of this package.

A prediction row (written by `runner.py`) holds everything scoring needs, so a run can be re-scored without
the model: the task, the reference answer with its `<box:i>` slots, the ground-truth objects (pixels), the
record's meta (VQA's ten answers, POPE's label, reference captions), the image size and frame mode, and the
model's text and parsed objects. Per task:

| task | metric |
|---|---|
| `refer`, `segmentation` | REC Acc@0.5 (first predicted box vs. the referred object; unparsable = miss) |
| `vqa` | VQAv2 soft accuracy when meta has ten `answers`, else exact match after the official normalisation |
| `identify`, `region_chat`, `chat` | exact match after normalisation |
| `caption` | exact match, plus BLEU/METEOR/ROUGE-L/CIDEr when Java is present (else reported unavailable) |
| `grounding` | (phrase, box) precision / recall / F1 at IoU ≥ 0.5 with phrase agreement |
| `detection` | box precision / recall / F1 at IoU ≥ 0.5 (the phrase is given in the prompt, so boxes only) |
| `pope` | accuracy, precision, recall, F1, yes-ratio |
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Sequence

from ..geometry import box_iou
from ..records import BOX_SLOT
from .captions import MetricUnavailable, caption_scores
from .grounding import grounding_scores
from .hallucination import pope_answer, pope_metrics
from .rec import DEFAULT, IoUConvention, rec_accuracy
from .vqa import normalize_answer, vqa_accuracy

_PHRASE_SLOTS = re.compile(r"<p>(.*?)</p>\s*((?:<box:\d+>)+)")


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


def row_score(row: dict) -> float:
    """A per-sample score in [0, 1] used to pick best and worst examples (IoU, F1 or correctness)."""
    task = row["task"]
    if task in ("refer", "segmentation"):
        boxes = [o["box"] for o in row["prediction_objects"]]
        return box_iou(boxes[0], target_box(row)) if boxes else 0.0
    if task in ("grounding", "detection"):
        judge = (lambda a, b: True) if task == "detection" else None  # noqa: E731
        return grounding_scores([predicted_pairs(row)], [reference_pairs(row)], same_phrase=judge).f1
    if task == "pope":
        return float(pope_answer(row["prediction"]) == bool(row["meta"].get("label") in (True, "yes")))
    if task == "vqa" and len(row["meta"].get("answers", [])) >= 2:
        return vqa_accuracy(row["prediction_text"], row["meta"]["answers"])
    return float(normalize_answer(row["prediction_text"]) == normalize_answer(row["reference"]))


def _summaries(task: str, rows: Sequence[dict], convention: IoUConvention, captions: bool) -> dict:
    if task in ("refer", "segmentation"):
        preds = [r["prediction_objects"][0]["box"] if r["prediction_objects"] else None for r in rows]
        result = rec_accuracy(preds, [target_box(r) for r in rows], convention)
        return {"metric": "Acc@0.5", "score": result.accuracy, **result.to_dict()}
    if task in ("grounding", "detection"):
        judge = (lambda a, b: True) if task == "detection" else None  # noqa: E731
        result = grounding_scores(
            [predicted_pairs(r) for r in rows], [reference_pairs(r) for r in rows],
            convention=convention, same_phrase=judge,
        )
        return {"metric": "F1", "score": result.f1, **result.to_dict()}
    if task == "pope":
        labels = [r["meta"]["label"] for r in rows]
        result = pope_metrics([r["prediction"] for r in rows], labels)
        return {"metric": "accuracy", "score": result.accuracy, **result.to_dict()}
    scores = [row_score(r) for r in rows]
    out = {"metric": "accuracy", "score": sum(scores) / len(scores), "total": len(rows)}
    if task == "caption" and captions:
        refs = {r["id"]: r["meta"].get("captions") or [r["reference"]] for r in rows}
        cands = {r["id"]: r["prediction_text"] for r in rows}
        scored = caption_scores(cands, refs, meteor=False)
        for name, value in scored.scores.items():
            out[name] = value.reason if isinstance(value, MetricUnavailable) else value
    return out


def score_predictions(
    rows: Sequence[dict], *, convention: IoUConvention = DEFAULT, captions: bool = True
) -> dict[str, dict]:
    """Metrics per task (and `overall`: the mean of the per-task headline scores) of prediction rows."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(r)
    metrics = {task: _summaries(task, by_task[task], convention, captions) for task in sorted(by_task)}
    if metrics:
        metrics["overall"] = {
            "metric": "mean of task scores",
            "score": sum(m["score"] for m in metrics.values()) / len(metrics),
            "total": len(rows),
        }
    return metrics

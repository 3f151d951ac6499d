"""Scoring a predictions file, task by task, with the metric each task declares in `groundlm.tasks`.

| task | metric |
|---|---|
| `refer`, `segmentation` | REC Acc@0.5 (first predicted box vs. the referred object; unparsable = miss) |
| `vqa` | VQAv2 soft accuracy when meta has ten `answers`, else exact match after the official normalisation |
| `identify`, `region_chat`, `chat` | exact match after normalisation |
| `caption` | exact match, plus BLEU/METEOR/ROUGE-L/CIDEr when Java is present (else reported unavailable) |
| `grounding` | (phrase, box) precision / recall / F1 at IoU ≥ 0.5 with phrase agreement |
| `detection` | box precision / recall / F1 at IoU ≥ 0.5 (the phrase is given in the prompt, so boxes only) |
| `pope` | accuracy, precision, recall, F1, yes-ratio |

A task that `groundlm.tasks` does not declare (a records file may name its own) is scored as `chat`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from ..tasks import get_task
from .rec import DEFAULT, IoUConvention
from .task_metrics import predicted_pairs, reference_pairs, target_box

__all__ = ["predicted_pairs", "reference_pairs", "row_score", "score_predictions", "target_box"]


def row_score(row: dict) -> float:
    """A per-sample score in [0, 1] used to pick best and worst examples (IoU, F1 or correctness)."""
    return get_task(row["task"]).metric.row_score(row)


def score_predictions(
    rows: Sequence[dict], *, convention: IoUConvention = DEFAULT, captions: bool = True
) -> dict[str, dict]:
    """Metrics per task (and `overall`: the mean of the per-task headline scores) of prediction rows."""
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_task[r["task"]].append(r)
    metrics = {
        task: get_task(task).metric.summary(by_task[task], convention, captions) for task in sorted(by_task)
    }
    if metrics:
        metrics["overall"] = {
            "metric": "mean of task scores",
            "score": sum(m["score"] for m in metrics.values()) / len(metrics),
            "total": len(rows),
        }
    return metrics

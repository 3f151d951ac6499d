"""The demo report's section on the web page's ShapesWorld examples: the trained model asked each of them
(`serve/examples.py` declares them), its answer beside the expected one, and whether it is right.

Right is the task's own measure on that one answer (`evaluate/task_metrics.py`): for `refer` a first box with
IoU >= 0.5 on the referred object; for grounding and detection every (phrase,) box found at IoU >= 0.5 and
none extra (F1 = 1); for the text tasks an exact match after the VQA normalisation.
"""

from __future__ import annotations

from ..evaluate.rec import is_hit
from ..evaluate.runner import prediction_row, record_question
from ..evaluate.task_metrics import ReferringAccuracy
from ..inference import GroundLM
from ..records import BOX_SLOT
from ..serve.examples import PAGE_EXAMPLES, PageExample, example_record
from ..tasks import get_task


def is_right(row: dict) -> bool:
    """Whether one prediction row answers its question right, by its task's measure (see the module doc)."""
    metric = get_task(row["task"]).metric
    score = metric.row_score(row)
    return is_hit(score) if isinstance(metric, ReferringAccuracy) else score >= 1.0 - 1e-9


def expected_text(row: dict) -> str:
    """The reference answer with each `<box:i>` slot written as the object's pixel box."""
    return BOX_SLOT.sub(lambda m: str([round(v) for v in row["objects"][int(m.group(1))]["box"]]), row["reference"])


def ask_examples(lm: GroundLM, examples: tuple[PageExample, ...] = PAGE_EXAMPLES) -> list[dict]:
    """The model's answer to every page example, as prediction rows with `right` and `expected` added."""
    rows = []
    for example in examples:
        image, record = example_record(example)
        prompt, boxes = record_question(record)
        answer = lm.ask(image, prompt, boxes=boxes)
        row = prediction_row(record, image, answer, lm.processor.config.frame)
        rows.append({**row, "scene": example.scene, "expected": expected_text(row), "right": is_right(row)})
    return rows


def _cell(text: str) -> str:
    return "`" + text.replace("`", "'").replace("|", "\\|") + "`" if text else "(empty)"


def examples_section(rows: list[dict], model_dir) -> str:
    """The report's Markdown section: one line per example, and how many the model answered right."""
    right = sum(r["right"] for r in rows)
    lines = [
        "## The web page's examples",
        "",
        f"`groundlm serve {model_dir}` offers these ShapesWorld test scenes as examples; the model answered "
        f"**{right} of {len(rows)}** right (boxes in pixels of the 64 x 64 scene).",
        "",
        "| scene | task | prompt | answer | expected | right |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['scene']} | {r['task']} | {_cell(r['prompt'])} | {_cell(r['prediction'])} | "
                     f"{_cell(r['expected'])} | {'yes' if r['right'] else 'no'} |")
    return "\n".join(lines)

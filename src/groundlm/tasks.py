"""Every task groundlm knows, declared once: its name, whether prompts carry its tag, and how it is scored.

A task is what a record trains or tests. MiniGPT-v2's six task identifiers are written at the start of the
user turn (`[refer] the red cat`, docs/published-systems.md); `segmentation` and `region_chat` (ShapesWorld),
`pope` (POPE's plain yes/no questions) and `chat` (anything else) have no tag. The conversations of each
task are built in `data/tasks.py`; the metrics behind each scorer are in `evaluate/`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .evaluate.task_metrics import BoxF1, ExactMatch, PopeScores, ReferringAccuracy, TaskMetric


@dataclass(frozen=True)
class Task:
    """One task: whether its prompts start with `[name]`, its metric, and whether a report draws all of a
    record's objects as the ground truth (tasks whose reference answer names no phrase)."""

    tagged: bool
    metric: TaskMetric
    draws_objects: bool = False


# The tagged tasks come first, in this order: a new model's tokenizer adds their tags in it (train/build.py),
# so the order fixes those tokens' ids.
TASKS: dict[str, Task] = {
    "vqa": Task(tagged=True, metric=ExactMatch(soft_vqa=True)),
    "caption": Task(tagged=True, metric=ExactMatch(caption_metrics=True)),
    "grounding": Task(tagged=True, metric=BoxF1()),
    "refer": Task(tagged=True, metric=ReferringAccuracy(), draws_objects=True),
    "identify": Task(tagged=True, metric=ExactMatch(), draws_objects=True),
    "detection": Task(tagged=True, metric=BoxF1(boxes_only=True)),
    "segmentation": Task(tagged=False, metric=ReferringAccuracy(), draws_objects=True),
    "region_chat": Task(tagged=False, metric=ExactMatch(), draws_objects=True),
    "pope": Task(tagged=False, metric=PopeScores()),
    "chat": Task(tagged=False, metric=ExactMatch()),
}
CHAT = "chat"  # the task of a record that names none
TAGGED: tuple[str, ...] = tuple(name for name, task in TASKS.items() if task.tagged)

_TASK_TAG = re.compile(r"\s*\[([a-z]+)\]")


def task_of(text: str) -> str | None:
    """The MiniGPT-v2 task identifier a user text starts with (`"[refer] the cat"` → `"refer"`), else None."""
    m = _TASK_TAG.match(text)
    if m and m.group(1) in TAGGED:
        return m.group(1)
    return None


def record_task(record) -> str:
    """A record's task: `meta.task`, else the tag its first user turn starts with, else `pope` for a record
    with a POPE `label` in meta, else `chat`. `record` is a `records.Record`."""
    if record.meta.get("task"):
        return str(record.meta["task"])
    first_user = next((m.content for m in record.messages if m.role == "user"), "")
    return task_of(first_user) or ("pope" if "label" in record.meta else CHAT)


def get_task(name: str) -> Task:
    """The declaration of task `name`; a task this module does not declare is scored as `chat`."""
    return TASKS.get(name, TASKS[CHAT])

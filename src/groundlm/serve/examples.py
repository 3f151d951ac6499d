"""The ShapesWorld examples of the web page, declared once: the page offers them (`web.py`), and the demo's
report asks its model each of them and says whether it answered right (`demo/page_examples.py`).

Each is a scene of the ShapesWorld test split and a task; its question and expected answer are that scene's
evaluation record for the task (`data/shapes/records.py`), so the page asks what the evaluation asks. Only tasks
whose question needs no box from the user are on the page (an example fills the image and the question only).
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from ..records import Record


@dataclass(frozen=True)
class PageExample:
    """Scene `scene` of the ShapesWorld test split, asked its `task` evaluation question."""

    scene: int
    task: str


# Three referring expressions of each kind (attribute, superlative, relation), then grounding, detection, VQA.
PAGE_EXAMPLES: tuple[PageExample, ...] = (
    PageExample(1, "refer"),  # the medium blue triangle
    PageExample(4, "refer"),  # the rightmost shape
    PageExample(8, "refer"),  # the shape left of the yellow triangle
    PageExample(5, "grounding"),
    PageExample(7, "detection"),
    PageExample(0, "vqa"),  # what shape is the purple object?
)


def example_record(example: PageExample) -> tuple[Image.Image, Record]:
    """The example's scene image and its evaluation record (question, expected answer, objects)."""
    from ..data.shapes import scene_at
    from ..data.shapes.records import scene_records

    scene = scene_at("test", example.scene)
    records = scene_records(scene, "test", example.scene, [example.task])
    if not records:
        raise ValueError(f"ShapesWorld test scene {example.scene} has no {example.task!r} question")
    return scene.image, records[0]


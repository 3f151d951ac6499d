"""Qwen2.5-VL JSON for QwenLM/Qwen2.5-VL ``qwen-vl-finetune``: LLaVA's layout, boxes as JSON ``bbox_2d`` pixels.

``qwen-vl-finetune/qwenvl/data/data_processor.py`` reads a JSON list (or JSON lines) of ``{"image": path,
"conversations": [{"from": "human" | "gpt", "value"}]}`` and replaces each ``<image>`` of a human turn with
the image, so rows are written as ``llava.LlavaExporter`` writes them, with an ``id`` kept for reference.
Boxes use the ``qwen2_5_vl`` codec: an answer's boxes become ```` ```json [{"bbox_2d": [x1, y1, x2, y2],
"label": "phrase"}] ``` ````, a question's become ``[x1, y1, x2, y2]`` inline (src/groundlm/location/
qwen2_5_vl.py).

Which pixels: Qwen2.5-VL answers in pixels of the image its processor actually sees (``smart_resize``, sides
multiples of 28 between ``min_pixels`` and ``max_pixels``), and the trainer does not rescale boxes. By default
the numbers are pixels of the ORIGINAL image (what the published cookbook converts back to and what the
record stores), which is exact when the trainer's ``max_pixels`` leaves the image at (about) its size; with
``smart_resize=True`` they are pixels of the smart-resized image, for the ``min_pixels``/``max_pixels`` the
trainer is run with (defaults: Qwen's ``4*28*28`` and ``16384*28*28``). ``locations.smart_resize`` holds the rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from ...records import Record
from .base import IMAGE_TAG, rendered, tagged
from .llava import FROM
from .locations import MAX_PIXELS, MIN_PIXELS, Locations


class Qwen25VLExporter:
    """Records → qwen-vl-finetune rows with ``bbox_2d`` boxes in pixels (original or smart-resized image)."""

    file_name: ClassVar[str] = "data.json"
    options: ClassVar[tuple[str, ...]] = ("smart_resize", "min_pixels", "max_pixels")

    def __init__(self, *, smart_resize: bool = False, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS):
        self.locations = Locations(
            "qwen2_5_vl", smart_resize=smart_resize, min_pixels=min_pixels, max_pixels=max_pixels
        )

    def row(self, record: Record, image_root: Path | None) -> dict:
        """The qwen-vl-finetune row of ``record``."""
        turns = tagged(record, rendered(record, self.locations, image_root), IMAGE_TAG + "\n")
        row: dict[str, Any] = {"id": record.id}
        if record.image is not None:
            row["image"] = record.image
        row["conversations"] = [{"from": FROM[role], "value": content} for role, content in turns]
        return row

    def extra_files(self) -> dict[str, Any]:
        """None: the trainer's dataset list names the JSON file."""
        return {}

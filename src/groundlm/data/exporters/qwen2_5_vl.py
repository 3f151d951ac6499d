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

from typing import ClassVar

from .llava import LlavaExporter
from .locations import MAX_PIXELS, MIN_PIXELS


class Qwen25VLExporter(LlavaExporter):
    """Records → qwen-vl-finetune rows (LLaVA's) with ``bbox_2d`` boxes in pixels (original or smart-resized)."""

    options: ClassVar[tuple[str, ...]] = ("smart_resize", "min_pixels", "max_pixels")

    def __init__(self, *, smart_resize: bool = False, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS):
        super().__init__(codec="qwen2_5_vl", smart_resize=smart_resize, min_pixels=min_pixels, max_pixels=max_pixels)

"""LLaVA JSON: ``[{"id", "image", "conversations": [{"from": "human" | "gpt", "value"}]}]``.

The layout of LLaVA's instruction data (llava_v1_5_mix665k; /work/shared/reference/llava_hf_and_style.md
§4.1): a JSON list, ``<image>\\n`` in front of the first human turn, image paths relative to the trainer's
``--image_folder``; a record without an image gets no ``image`` key (LLaVA's text-only rows). A ``system``
message is written ``"from": "system"`` (LLaVA has none of its own; ``from_llava`` reads it back).

Boxes are written into the text by a location codec (default ``llava``: ``[0.39, 0.12, 0.59, 0.87]`` relative
to the padded square, as LLaVA-1.5 trains with ``image_aspect_ratio: pad``); any codec that writes text
coordinates may be chosen, with its published frame unless ``frame`` says otherwise (``locations``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from ...records import Record
from .base import IMAGE_TAG, rendered, tagged
from .locations import MAX_PIXELS, MIN_PIXELS, Locations

FROM = {"user": "human", "assistant": "gpt", "system": "system"}


class LlavaExporter:
    """Records → LLaVA ``conversations`` rows, boxes written by ``codec``."""

    file_name: ClassVar[str] = "data.json"
    options: ClassVar[tuple[str, ...]] = ("codec", "frame", "smart_resize", "min_pixels", "max_pixels")

    def __init__(
        self,
        *,
        codec: str = "llava",
        frame: str | None = None,
        smart_resize: bool = False,
        min_pixels: int = MIN_PIXELS,
        max_pixels: int = MAX_PIXELS,
    ):
        self.locations = Locations(
            codec, frame=frame, smart_resize=smart_resize, min_pixels=min_pixels, max_pixels=max_pixels
        )

    def row(self, record: Record, image_root: Path | None) -> dict:
        """The LLaVA row of ``record``."""
        turns = tagged(record, rendered(record, self.locations, image_root), IMAGE_TAG + "\n")
        row: dict[str, Any] = {"id": record.id}
        if record.image is not None:
            row["image"] = record.image
        row["conversations"] = [{"from": FROM[role], "value": content} for role, content in turns]
        return row

    def extra_files(self) -> dict[str, Any]:
        """None: LLaVA reads the JSON list alone."""
        return {}

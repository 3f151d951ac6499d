"""LLaMA-Factory ShareGPT-style JSON: ``[{"messages": [{"role", "content"}], "images": [path]}]`` + ``dataset_info.json``.

The layout of LLaMA-Factory's multimodal demo data (``data/mllm_demo.json``; ``data/README.md``, summarised in
/work/shared/reference/llava_hf_and_style.md §4.1): ``formatting: "sharegpt"`` with ``messages``/``images``
columns and role/content tags, one ``<image>`` tag per image in a user turn (here in front of the first user
turn). ``dataset_info.json`` declares the file as the dataset ``groundlm`` (``dataset_name``) with those columns
and tags, so ``--dataset groundlm --dataset_dir <out>`` finds it; a leading system message is a ``system`` turn.

LLaMA-Factory has no grounding field: boxes are written into the text by a location codec, by default
``qwen2_5_vl`` (JSON ``bbox_2d`` in pixels, for the Qwen2.5-VL models most often tuned with it; pixels of the
original image unless ``smart_resize``, see ``qwen2_5_vl``; LLaMA-Factory also shrinks images above its
``image_max_pixels`` first, so pass that as ``max_pixels`` with ``smart_resize``). Any text codec can be chosen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from ...records import Record
from .base import IMAGE_TAG, rendered, tagged
from .locations import MAX_PIXELS, MIN_PIXELS, Locations


class LlamaFactoryExporter:
    """Records → LLaMA-Factory ShareGPT rows, boxes written by ``codec``, and the ``dataset_info.json`` entry."""

    file_name: ClassVar[str] = "data.json"
    options: ClassVar[tuple[str, ...]] = (
        "codec", "frame", "smart_resize", "min_pixels", "max_pixels", "dataset_name",
    )  # fmt: skip

    def __init__(
        self,
        *,
        codec: str = "qwen2_5_vl",
        frame: str | None = None,
        smart_resize: bool = False,
        min_pixels: int = MIN_PIXELS,
        max_pixels: int = MAX_PIXELS,
        dataset_name: str = "groundlm",
    ):
        self.locations = Locations(
            codec, frame=frame, smart_resize=smart_resize, min_pixels=min_pixels, max_pixels=max_pixels
        )
        self.dataset_name = dataset_name

    def row(self, record: Record, image_root: Path | None) -> dict:
        """The LLaMA-Factory row of ``record``."""
        turns = tagged(record, rendered(record, self.locations, image_root), IMAGE_TAG)
        row: dict[str, Any] = {"messages": [{"role": role, "content": content} for role, content in turns]}
        if record.image is not None:
            row["images"] = [record.image]
        return row

    def extra_files(self) -> dict[str, Any]:
        """``dataset_info.json`` declaring ``data.json`` as a ShareGPT dataset with role/content tags."""
        entry = {
            "file_name": self.file_name,
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
                "system_tag": "system",
            },
        }
        return {"dataset_info.json": {self.dataset_name: entry}}

"""ms-swift JSONL with grounding ``objects``: the inverse of ``importers.chat.from_swift``.

A row is ``{"messages": [{"role", "content"}], "images": [path], "objects": {"ref": [...], "bbox": [[x1, y1,
x2, y2], ...], "bbox_type": "real"}}`` (ms-swift ``docs/source_en/Customization/Custom-dataset.md``, summarised
in /work/shared/reference/llava_hf_and_style.md §4.1): the text holds ``<ref-object>`` and ``<bbox>``
placeholders that ms-swift fills in order, the i-th ``<ref-object>`` with ``ref[i]`` and the j-th ``<bbox>``
with ``bbox[j]``, rendered in whichever model's format it trains and rescaled after its own resize. So no codec
and no image size are needed here: boxes are the record's pixels (``bbox_type: "real"``).

A phrase with its boxes, ``<p>two cats</p><box:0><box:1>``, becomes ``<ref-object><bbox><bbox>`` with
``ref`` gaining ``two cats`` and ``bbox`` the two boxes; a bare ``<box:i>`` becomes ``<bbox>``; a ``<p>`` tag
without boxes leaves its words. Boxes are listed per placeholder, in the order the slots appear over the whole
conversation (a slot used twice is listed twice), so only objects a slot points at are written. ``<image>``
goes in front of the first user turn of a record with an image. Text that already holds a literal
``<ref-object>`` or ``<bbox>`` would be misread by ms-swift and is refused (``placeholder in text``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

from ...records import Record
from .base import IMAGE_TAG, RecordError, tagged

_GROUNDED = re.compile(r"<p>(?P<phrase>[^<]*)</p>(?P<run>(?:<box:\d+>)*)|<box:(?P<bare>\d+)>")
_SLOT = re.compile(r"<box:(\d+)>")
_PLACEHOLDERS = ("<ref-object>", "<bbox>")


class SwiftExporter:
    """Records → ms-swift rows with ``<ref-object>``/``<bbox>`` placeholders and real-pixel ``objects``."""

    file_name: ClassVar[str] = "data.jsonl"
    options: ClassVar[tuple[str, ...]] = ()

    def row(self, record: Record, image_root: Path | None) -> dict:
        """The ms-swift row of ``record``."""
        refs: list[str] = []
        boxes: list[list[float]] = []

        def box(i: str) -> str:
            boxes.append([float(v) for v in record.objects[int(i)].box])
            return "<bbox>"

        def place(m: re.Match) -> str:
            if m.group("bare") is not None:
                return box(m.group("bare"))
            phrase = " ".join(m.group("phrase").split())
            if not m.group("run"):
                return m.group("phrase")
            if not phrase:
                return "".join(box(i) for i in _SLOT.findall(m.group("run")))
            refs.append(phrase)
            return "<ref-object>" + "".join(box(i) for i in _SLOT.findall(m.group("run")))

        contents = []
        for k, message in enumerate(record.messages):
            for placeholder in _PLACEHOLDERS:
                if placeholder in message.content:
                    raise RecordError(
                        f"messages[{k}].content", f"holds a literal {placeholder}", "placeholder in text"
                    )
            contents.append(_GROUNDED.sub(place, message.content))
        row: dict[str, Any] = {
            "messages": [{"role": r, "content": c} for r, c in tagged(record, contents, IMAGE_TAG)]
        }
        if record.image is not None:
            row["images"] = [record.image]
        if boxes:
            row["objects"] = {"ref": refs, "bbox": boxes, "bbox_type": "real"}
        return row

    def extra_files(self) -> dict[str, Any]:
        """None: ms-swift reads the JSONL alone."""
        return {}

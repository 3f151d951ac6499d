"""What a curation pipeline starts from: per image, its objects, captions and conversations, gathered from
record files.

Any records serve (docs/data-format.md): ShapesWorld's (`groundlm data shapes`), imported COCO captions and
instances, LLaVA's caps_boxes (`groundlm data import`), or an earlier curation's output. Records of one image
(same `image` path) from every file are merged into one `Subject`, in order of first appearance:

- objects: every record's objects, each distinct (box, label) once, in order of appearance;
- captions: the answers of `caption` records and any `meta["captions"]` list, each distinct one once;
- conversations: `chat` records (any number of turns) without location slots or phrase tags, which GVC grounds;
- the image size: `meta` `width`/`height`, else the image file's header under the image root.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..records import BOX_SLOT, GroundTruthObject, Record, read_jsonl
from ..tasks import CHAT, record_task


@dataclass
class Subject:
    """One image and what the sources say about it."""

    image: str
    size: tuple[int, int] | None = None  # (width, height) in pixels
    objects: list[GroundTruthObject] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)
    conversations: list[Record] = field(default_factory=list)

    @property
    def key(self) -> str:
        """The image path without its extension: the stem of the ids of the records made from it."""
        return os.path.splitext(self.image)[0]

    def normalised(self, obj: GroundTruthObject) -> tuple[float, float, float, float]:
        """`obj`'s box as fractions of the image's width and height (the subject must have a size)."""
        assert self.size is not None
        width, height = self.size
        x1, y1, x2, y2 = obj.box
        return (x1 / width, y1 / height, x2 / width, y2 / height)


def _plain(record: Record) -> bool:
    return not any(BOX_SLOT.search(m.content) or "<p>" in m.content for m in record.messages)


def _header_size(path: Path) -> tuple[int, int] | None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError):
        return None


def read_subjects(
    paths: Sequence[str | os.PathLike], image_root: str | os.PathLike | None = None
) -> list[Subject]:
    """The subjects of the record files `paths` (read and validated by `records.read_jsonl`).

    Images are looked up under `image_root` (default: the folder of the first file) for their sizes; records
    without an image are left out (there is nothing to see)."""
    if not paths:
        raise ValueError("give at least one records file")
    root = Path(image_root) if image_root is not None else Path(paths[0]).parent
    subjects: dict[str, Subject] = {}
    seen_objects: dict[str, set] = {}
    for path in paths:
        for record in read_jsonl(path):
            if record.image is None:
                continue
            subject = subjects.setdefault(record.image, Subject(record.image))
            seen = seen_objects.setdefault(record.image, set())
            for obj in record.objects:
                identity = (tuple(round(v, 3) for v in obj.box), obj.label)
                if identity not in seen:
                    seen.add(identity)
                    subject.objects.append(GroundTruthObject(obj.box, obj.label))
            width, height = record.meta.get("width"), record.meta.get("height")
            if subject.size is None and isinstance(width, int) and isinstance(height, int):
                subject.size = (width, height)
            texts = list(record.meta.get("captions") or [])
            task = record_task(record)
            if task == "caption":
                texts += [m.content for m in record.messages if m.role == "assistant"]
            for text in texts:
                text = str(text).strip()
                if text and text not in subject.captions:
                    subject.captions.append(text)
            if task == CHAT and _plain(record) and any(m.role == "assistant" for m in record.messages):
                subject.conversations.append(record)
    for subject in subjects.values():
        if subject.size is None:
            subject.size = _header_size(root / subject.image)
    return list(subjects.values())

"""Records + images → encoded training samples, with a policy for bad samples: raise, or skip and count.

A bad sample (missing or unreadable image, a box outside the image, a conversation the template refuses)
either raises a `SampleError` that names the record, or — with `on_error="skip"` — is replaced by the next
good sample and counted in `report`, so a long run does not die on one broken row and the counts are
reported at the end instead of silently vanishing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from ..geometry import Frame
from ..images import ImageError, load_image
from ..processor import Encoded, GroundLMProcessor
from ..records import Record, read_jsonl

# Boxes may overhang the image by this many pixels (float rounding in converted annotations) before it is an error.
BOX_TOLERANCE = 1.0


class SampleError(ValueError):
    """One record could not be turned into a training sample."""

    def __init__(self, where: str, reason: str, message: str):
        super().__init__(f"{where}: {message}")
        self.reason = reason


@dataclass
class LoadReport:
    """How many samples loaded and how many were skipped, per reason, with the first few messages."""

    loaded: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add_skip(self, err: SampleError) -> None:
        self.skipped[err.reason] += 1
        if len(self.examples) < 10:
            self.examples.append(str(err))

    def summary(self) -> str:
        """One line for logs: loaded and skipped counts per reason."""
        skipped = ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())) or "none"
        return f"{self.loaded} loaded, skipped: {skipped}"


def check_boxes(record: Record, width: int, height: int, where: str) -> None:
    """Raise `SampleError` when an object's box leaves the image or has a negative size."""
    for j, obj in enumerate(record.objects):
        x1, y1, x2, y2 = obj.box
        if x2 < x1 or y2 < y1:
            raise SampleError(where, "bad box", f"objects[{j}].box {list(obj.box)} has a negative size")
        t = BOX_TOLERANCE
        if x1 < -t or y1 < -t or x2 > width + t or y2 > height + t:
            raise SampleError(
                where,
                "box outside image",
                f"objects[{j}].box {list(obj.box)} lies outside the {width}x{height} image",
            )


class RecordDataset:
    """Indexable encoded samples of a list of records (or a records.jsonl path) and their images."""

    def __init__(
        self,
        records: Sequence[Record] | str | Path,
        processor: GroundLMProcessor,
        *,
        image_root: str | Path | None = None,
        on_error: str = "raise",
        name: str | None = None,
    ):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if isinstance(records, str | Path):
            path = Path(records)
            self.name = name or str(path)
            self.image_root = Path(image_root) if image_root is not None else path.parent
            records = read_jsonl(path)
        else:
            self.name = name or "records"
            self.image_root = Path(image_root) if image_root is not None else Path(".")
        if not records:
            raise ValueError(f"{self.name}: no records")
        self.records = list(records)
        self.processor = processor
        self.on_error = on_error
        self.report = LoadReport()

    def __len__(self) -> int:
        return len(self.records)

    def image_of(self, record: Record) -> Image.Image | None:
        """The record's image, read from `image_root` (None for a text-only record)."""
        if record.image is None:
            return None
        return load_image(self.image_root / record.image)

    def encode(self, record: Record, image: Image.Image | None, *, frame: Frame | None = None) -> Encoded:
        """Encode one record with its (already loaded) image; raises `SampleError` naming the record.

        Without an image, `frame` (if given) normalises the boxes: a text-only record about an image.
        """
        where = f"{self.name}: record {record.id!r}"
        pixels = None
        if image is not None:
            check_boxes(record, image.width, image.height, where)
            pixels, frame = self.processor.transform(image)
        try:
            enc = self.processor.encode(
                record.messages, boxes=[o.box for o in record.objects], frame=frame, image=image is not None,
                masks=[o.mask for o in record.objects] if any(o.mask is not None for o in record.objects) else None,
            )
        except ValueError as err:
            raise SampleError(where, "bad conversation", str(err)) from err
        enc.pixel_values = pixels
        # kept: what a processor put there (a family processor's layout, backends/)
        enc.meta = {**enc.meta, "id": record.id, "task": record.meta.get("task"), "source": self.name}
        return enc

    def load(self, index: int) -> Encoded:
        """Sample `index`, raising `SampleError` for a bad one."""
        record = self.records[index]
        try:
            image = self.image_of(record)
        except ImageError as err:
            raise SampleError(f"{self.name}: record {record.id!r}", "bad image", str(err)) from err
        return self.encode(record, image)

    def __getitem__(self, index: int) -> Encoded:
        """Sample `index`; under `on_error="skip"` a bad sample is counted and the next good one returned."""
        for attempt in range(len(self.records)):
            try:
                sample = self.load((index + attempt) % len(self.records))
                self.report.loaded += 1
                return sample
            except SampleError as err:
                if self.on_error == "raise":
                    raise
                self.report.add_skip(err)
        raise SampleError(self.name, "no good sample", "every record failed to load; see the report")

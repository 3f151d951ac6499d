"""Locations written in a model's format inside imported conversations → record slots and objects.

A chat dataset made for one model writes its boxes the way that model does (`[0.39, 0.12, 0.59, 0.87]`,
`<ref>cat</ref><box>[[302, 257, 582, 671]]</box>`, Qwen2.5-VL's ```` ```json [{"bbox_2d": …}] ``` ````…).
`WrittenLocations` reads every user and assistant turn of a row with the codec of that format (`to_slots`, see
src/groundlm/location/codec.py), so the turn holds `<p>phrase</p><box:k>` and `objects[k]` the box in pixels of
the original image: the record can then be rendered in any other format.

The numbers of a format refer to its frame ([0, 1] of the codec's frame, `geometry.Frame`), mapped back to the
original ``width x height`` image: "resize" formats to the image itself, "pad" formats (`shikra`, `llava`) to
the padded square the model saw, which `Frame.denormalize` undoes (a box in the padding is clipped to the
image). The frame is the format's published one unless the importer is given another. The image size is the
row's ``width``/``height``, else the image file's header (``image_root / image``); a row with boxes and
neither is an error naming the field.

`qwen2_5_vl` numbers are absolute pixels of the model's resized input. Give that size per row as
``input_width``/``input_height`` (Qwen2.5-VL's fine-tuning data is written in pixels of the ``smart_resize``d
image, multiples of 28: compute them with `qwen_vl_utils.smart_resize` and add them to the rows); without
them the numbers are taken as pixels of the original image.

An object's label is the phrase its slot belongs to (None for a bare slot). System turns are left as they are
(they describe a format, e.g. Ferret's "A bounding box is marked by [x1, y1, x2, y2]").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ...geometry import FRAMES, Frame
from ...location import CODEC_NAMES, LocationCodec, make_codec
from ...records import BOX_SLOT, GroundTruthObject, Message
from .base import PathLike, RowError, image_size
from .fields import positive_int

_PHRASE_SLOTS = re.compile(r"<p>(?P<words>[^<]*)</p>(?P<slots>(?:<box:\d+>)+)")


@dataclass(frozen=True)
class _Settings:
    """What `make_codec` reads from a model config."""

    location_codec: str
    location_bins: int
    image_size: int


class WrittenLocations:
    """Reads the locations of a row's turns in the format of the codec named `codec` (see the module docstring).

    `bins` is the grid of the `text` / `tokens` codecs (the published formats have their own); `frame`
    overrides the format's published frame ("resize" or "pad").
    """

    def __init__(self, codec: str, *, frame: str | None = None, bins: int = 100):
        if codec not in CODEC_NAMES:
            raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(CODEC_NAMES)}")
        if frame is not None and frame not in FRAMES:
            raise ValueError(f"frame must be one of {', '.join(FRAMES)}, got {frame!r}")
        self.name, self.bins = codec, bins
        self.codec = self._codec(1)
        self.pixels = self.codec.pixels
        # groundlm's own formats have no published frame (None): they follow the model's, by default resize
        self.frame = frame or self.codec.frame or "resize"

    def _codec(self, size: int) -> LocationCodec:
        return make_codec(_Settings(self.name, self.bins, size))

    def read(
        self, row: dict, messages: list[Message], key: str, image: str | None, image_root: PathLike | None
    ) -> list[GroundTruthObject]:
        """Rewrite the user and assistant `messages` (from `row[key]`) in place with slots; their objects."""
        size = _Lazy(lambda: _image_size(row, image, image_root))
        codec, scale = self.codec, None
        if self.pixels:  # the codec's square must hold every pixel of the input
            scale = _input_size(row, size)
            codec = self._codec(max(scale))
        boxes, labels = [], []
        for k, message in enumerate(messages):
            if message.role == "system":
                continue
            content, found = codec.to_slots(message.content, len(boxes), output=message.role == "assistant")
            if found and image is None:
                raise RowError(f"{key}[{k}]", "holds a location but the row has no image", "missing")
            message.content = content
            boxes += found
            labels += _labels(content, len(found), len(labels))
        if not boxes:
            return []
        width, height = size()
        frame = Frame(width, height, "resize" if self.pixels else self.frame)
        objects = []
        for box, label in zip(boxes, labels, strict=True):
            if scale is not None:  # input pixels → [0, 1] of the input, a resize of the original image
                side = max(scale)
                box = (
                    box[0] * side / scale[0],
                    box[1] * side / scale[1],
                    box[2] * side / scale[0],
                    box[3] * side / scale[1],
                )
            objects.append(GroundTruthObject(box=frame.denormalize(box), label=label))
        return objects


class _Lazy:
    """A value computed on first use (the image header is read only when a row has boxes)."""

    def __init__(self, compute):
        self._compute, self._done, self._value = compute, False, None

    def __call__(self):
        if not self._done:
            self._value, self._done = self._compute(), True
        return self._value


def _image_size(row: dict, image: str | None, image_root: PathLike | None) -> tuple[int, int]:
    if row.get("width") is not None or row.get("height") is not None:
        return positive_int(row, "width"), positive_int(row, "height")
    path = Path(image_root) / image if image_root is not None and image else Path(image or "")
    if image and path.is_file():
        return image_size(path)
    raise RowError(
        "width",
        f"the boxes need the image size: add width/height to the row, or pass image_root so {image!r} can be read",
        "no image size",
    )


def _input_size(row: dict, size: _Lazy) -> tuple[int, int]:
    """The model input's size the pixel numbers refer to: the row's ``input_width``/``input_height``, else the
    original image's."""
    if row.get("input_width") is not None or row.get("input_height") is not None:
        return positive_int(row, "input_width"), positive_int(row, "input_height")
    return size()


def _labels(content: str, n: int, first: int) -> list[str | None]:
    """The phrase of each of the `n` slots numbered from `first` in `content` (None for a bare slot)."""
    labels: list[str | None] = [None] * n
    for m in _PHRASE_SLOTS.finditer(content):
        for s in BOX_SLOT.finditer(m.group("slots")):
            k = int(s.group(1)) - first
            if 0 <= k < n:
                labels[k] = m.group("words")
    return labels


__all__ = ["WrittenLocations"]

"""How an exporter writes a record's ``<box:i>`` slots: a location codec by name, and the frame its numbers refer to.

Every message goes through ``codec.render(content, boxes_norm, output=<assistant turn>)`` (the codecs in
src/groundlm/location), with the record's pixel boxes (kept inside the image) normalised to the codec's frame:

- codecs on a fixed grid (``llava``, ``shikra``, ``internvl``, ``qwen2_vl``, ``text``, …) get boxes in [0, 1] of
  the frame the published model uses (the codec's ``frame``): ``pad`` for LLaVA-1.5 and Shikra, whose images
  are padded to a square first (coordinates relative to the padded square, origin shifted by the padding,
  ``geometry.Frame``), ``resize`` for the others; groundlm's own ``text``/``tokens`` codecs have no published
  frame and use ``resize`` (MiniGPT-v2 squashes its images). ``frame`` overrides it. The ``text`` and ``tokens``
  codecs use 100 bins (MiniGPT-v2's grid).
- codecs written in pixels (``codec.pixels``: ``qwen2_5_vl``, JSON ``bbox_2d``) get the box in pixels of the
  image the model sees: by default the original image (``round(x)`` of the record's box), or with
  ``smart_resize`` the size Qwen2.5-VL's processor resizes it to (``smart_resize`` below), the box scaled along
  each axis. The codec quantises ``round(v * size)`` of a square ``size``, so it is built per image with
  ``size`` = the longer side and given ``pixel / size`` on both axes, which makes it write the pixel itself.

Codecs whose boxes live in the model's heads (``embedding``: ``<at><boxes>``, no numbers) cannot be written
to a file and are refused.

``smart_resize`` follows the rule published in QwenLM/Qwen2.5-VL ``qwen-vl-utils/src/qwen_vl_utils/
vision_process.py`` (facts in /work/shared/reference/published_models.md §2, written here from that rule): both
sides rounded to multiples of 28 (at least 28); if the area exceeds ``max_pixels`` both sides shrink by
``sqrt(h * w / max_pixels)`` and are floored to multiples of 28, if it is below ``min_pixels`` they grow by
``sqrt(min_pixels / (h * w))`` and are ceiled; an aspect ratio above 200 is refused.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ...geometry import FRAMES, Frame, clip_box
from ...location import CODECS
from ...records import BOX_SLOT, Record

FACTOR = 28
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 16384 * 28 * 28
MAX_RATIO = 200

def smart_resize(
    height: int, width: int, *, factor: int = FACTOR, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS
) -> tuple[int, int]:
    """``(height, width)`` Qwen2.5-VL's processor resizes an image to (see the module docstring)."""
    if min(height, width) <= 0:
        raise ValueError(f"an image size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"aspect ratio of {width}x{height} is above {MAX_RATIO}, which Qwen2.5-VL refuses")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class _Settings:
    """What ``location.CODECS`` constructors read from a config."""

    location_codec: str
    location_bins: int = 100
    image_size: int = 224


def has_slots(record: Record) -> bool:
    """Whether any message of ``record`` points at a box."""
    return any(BOX_SLOT.search(m.content) for m in record.messages)


class Locations:
    """Writes a record's messages with their slots in the codec ``codec`` (see the module docstring)."""

    def __init__(
        self,
        codec: str,
        *,
        frame: str | None = None,
        smart_resize: bool = False,
        min_pixels: int = MIN_PIXELS,
        max_pixels: int = MAX_PIXELS,
    ):
        if codec not in CODECS:
            raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
        if frame is not None and frame not in FRAMES:
            raise ValueError(f"frame must be one of {', '.join(FRAMES)}, got {frame!r}")
        self.name = codec
        self._codec = CODECS[codec](_Settings(codec))
        self._pixels = self._codec.pixels
        if self._codec.has_heads:
            raise ValueError(f"the {codec} codec writes no coordinates in text; it cannot be exported")
        if self._pixels and frame == "pad":
            raise ValueError(f"{codec} writes pixels of the image the model sees; it has no pad frame")
        self.frame = frame or self._codec.frame or "resize"
        if smart_resize and not self._pixels:
            raise ValueError(f"smart_resize applies to codecs written in pixels of the input (qwen2_5_vl), not {codec}")
        if min_pixels <= 0 or max_pixels < min_pixels:
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {min_pixels} and {max_pixels}")
        self.smart_resize, self.min_pixels, self.max_pixels = smart_resize, min_pixels, max_pixels

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        """``(width, height)`` of the image a pixel codec's numbers refer to."""
        if not self.smart_resize:
            return width, height
        h, w = smart_resize(height, width, min_pixels=self.min_pixels, max_pixels=self.max_pixels)
        return w, h

    def _codec_and_boxes(self, boxes: Sequence[Sequence[float]], width: int, height: int):
        inside = [clip_box(b, width, height) for b in boxes]
        if not self._pixels:
            frame = Frame(width, height, self.frame)  # type: ignore[arg-type]
            return self._codec, [frame.normalize(b) for b in inside]
        w, h = self.input_size(width, height)
        side = max(w, h)
        sx, sy = w / width / side, h / height / side
        return CODECS[self.name](_Settings(self.name, image_size=side)), [(x1 * sx, y1 * sy, x2 * sx, y2 * sy) for x1, y1, x2, y2 in inside]

    def render(self, record: Record, size: tuple[int, int] | None) -> list[str]:
        """Every message's content with its slots written; ``size`` (width, height) is needed when it has slots."""
        if not has_slots(record):
            return [m.content for m in record.messages]
        if size is None:
            raise ValueError("the record has boxes but no image size")
        codec, boxes_norm = self._codec_and_boxes([o.box for o in record.objects], *size)
        return [codec.render(m.content, boxes_norm, output=m.role == "assistant") for m in record.messages]

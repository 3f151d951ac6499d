"""The location format of Qwen2-VL: `<|object_ref_start|>cat<|object_ref_end|><|box_start|>(302,257),(582,671)<|box_end|>`.

Source: Qwen2-VL (the reference marks the primary text unread; the format is seen in third-party parsers and
fine-tune data). The numbers are Qwen-VL's: integers in [0, 1000) of the original image squashed to the model's
input (`frame = "resize"`), quantised and dequantised with 999 exactly as `QwenVLLocationCodec` documents; several
boxes of one phrase are consecutive `<|box_start|>…<|box_end|>` spans. Only the tags differ, and in Qwen2's
tokenizer each tag is one token, so they are `added_tokens()` too.
"""

from __future__ import annotations

from dataclasses import dataclass

from .qwen_vl import QwenVLLocationCodec


@dataclass(frozen=True)
class Qwen2VLLocationCodec(QwenVLLocationCodec):
    """`QwenVLLocationCodec` with Qwen2-VL's single-token tags."""

    ref_open: str = "<|object_ref_start|>"
    ref_close: str = "<|object_ref_end|>"
    box_open: str = "<|box_start|>"
    box_close: str = "<|box_end|>"


__all__ = ["Qwen2VLLocationCodec"]

"""Qwen2.5-VL (transformers `Qwen2_5_VLForConditionalGeneration`, model_type `qwen2_5_vl`) behind groundlm's API.

Qwen2.5-VL is a chat model: conversations go through the checkpoint's own chat template (ChatML with
`<|vision_start|><|image_pad|><|vision_end|>` before the first user text), history and system prompts included.
Grounding is asked for JSON, in the wording of lmms-eval's `refcoco_grounding` task
(/work/shared/reference/published_models.md): `[refer] X` and `[detection] X` become
`Locate every object that matches the description "X" in the image. Report bbox coordinates in JSON format.`;
`[grounding]` asks for a description with a JSON box per mentioned object (our wording: Qwen2.5-VL has no
published grounded-caption prompt); `[caption]`, `[vqa]`, `[identify]` and untagged prompts are asked in the
user's own words (a box the user points at is written inline as `[x1, y1, x2, y2]` in input pixels).

Frame: Qwen2.5-VL resizes each image to its own input size (`smart_resize`: sides multiples of 28, pixels
within the image processor's bounds), and its JSON numbers are pixels of that input. Each axis is scaled on
its own ("resize" frame), so the codec for an image (`codec_for`) is `location/qwen2_5_vl.py` on the input's
longer side, with x and y rescaled to the input's width and height. The image processor is transformers'
(its PIL backend works without torchvision); the processor class itself is not used because it requires a
video processor, which needs torchvision.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..geometry import Frame
from ..location import GroundedObject, LocationCodec, Qwen25VLLocationCodec
from ..processor import IGNORE_INDEX, Encoded
from .base import FamilyProcessor, FamilyTokens, Turn, shrink, text_batch
from .tasks import Asked

LOCATE = 'Locate every object that matches the description "{}" in the image. Report bbox coordinates in JSON format.'
PROMPTS = {
    "refer": LOCATE,
    "detection": LOCATE,
    "grounding": "Describe this image and locate every object you mention. Report bbox coordinates in JSON format.",
}
OWN_WORDS = ("caption", "vqa", "identify")
IMAGE_PAD, VISION_START, VISION_END, END = "<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|im_end|>"


@dataclass(frozen=True)
class InputPixels:
    """Qwen2.5-VL's numbers for one image: pixels of its `width` × `height` input. Wraps the square codec of
    side max(width, height), scaling x by width and y by height; everything else is the square codec's."""

    square: Qwen25VLLocationCodec
    width: int
    height: int

    def _scale(self, box: Sequence[float], sx: float, sy: float) -> tuple[float, float, float, float]:
        return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)

    def render(self, content: str, boxes_norm: Sequence[Sequence[float]], *, output: bool = True) -> str:
        side = self.square.size
        return self.square.render(content, [self._scale(b, self.width / side, self.height / side) for b in boxes_norm],
                                  output=output)

    def parse(self, text: str, decoded: Sequence[Sequence[float]] = ()) -> list[GroundedObject]:
        side = self.square.size
        objects = self.square.parse(text, decoded)
        for obj in objects:
            obj.box_norm = self._scale(obj.box_norm, side / self.width, side / self.height)
        return objects

    def __getattr__(self, name: str):
        return getattr(self.square, name)


class Qwen25VLFamily(FamilyProcessor):
    family = "Qwen2.5-VL"
    chat = True
    needs_image = False
    tasks = (*PROMPTS, *OWN_WORDS)

    def __init__(self, tokenizer, image_processor, chat_template: str | None):
        self.image_processor = image_processor
        self.chat_template = chat_template or tokenizer.chat_template
        if not self.chat_template:
            raise ValueError("Qwen2.5-VL: the checkpoint has no chat template (chat_template.jinja / .json)")
        size = image_processor.size
        self.min_pixels, self.max_pixels = int(size["shortest_edge"]), int(size["longest_edge"])
        self.patch, self.merge = int(image_processor.patch_size), int(image_processor.merge_size)
        super().__init__(tokenizer, Qwen25VLLocationCodec(size=28), image_token=IMAGE_PAD, stop=END)

    # ---- the image's input size ------------------------------------------------------------------------
    def input_size(self, frame: Frame) -> tuple[int, int]:
        """(height, width) in pixels of the model's input for an image of `frame`'s size (`smart_resize`)."""
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        return smart_resize(frame.height, frame.width, factor=self.patch * self.merge,
                            min_pixels=self.min_pixels, max_pixels=self.max_pixels)

    def grid(self, frame: Frame) -> list[int]:
        """The image's (t, h, w) patch grid, as `image_grid_thw` holds it."""
        height, width = self.input_size(frame)
        return [1, height // self.patch, width // self.patch]

    def codec_for(self, frame: Frame | None) -> LocationCodec:
        if frame is None:
            return self.codec
        height, width = self.input_size(frame)
        return InputPixels(Qwen25VLLocationCodec(size=max(height, width)), width, height)  # type: ignore[return-value]

    # ---- hooks -------------------------------------------------------------------------------------------
    def ask_text(self, asked: Asked) -> str:
        if asked.task is None or asked.task in OWN_WORDS:
            return asked.words
        if asked.task not in PROMPTS:
            raise self.unsupported(asked.task)
        return PROMPTS[asked.task].format(asked.subject)

    def pixels(self, image) -> tuple[torch.Tensor, Frame]:
        out = self.image_processor(images=[image], return_tensors="pt")
        frame = Frame(image.width, image.height, "resize")
        if out["image_grid_thw"][0].tolist() != self.grid(frame):
            raise ValueError(f"Qwen2.5-VL: the image processor's grid {out['image_grid_thw'][0].tolist()} is not "
                             f"smart_resize's {self.grid(frame)} for a {image.width}x{image.height} image")
        return out["pixel_values"], frame  # [patches, 3 * 2 * 14 * 14]

    def _text(self, turns: Sequence[Turn], image: bool, add_generation_prompt: bool) -> str:
        messages = []
        for i, t in enumerate(turns):
            content = [{"type": "text", "text": t.text}]
            if image and i == next(k for k, u in enumerate(turns) if u.role == "user"):
                content = [{"type": "image"}, *content]
            messages.append({"role": t.role, "content": content})
        return self.tokenizer.apply_chat_template(
            messages, chat_template=self.chat_template, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def tokens(self, turns: Sequence[Turn], image: Frame | None, add_generation_prompt: bool) -> FamilyTokens:
        text = self._text(turns, image is not None, add_generation_prompt)
        # spans of the answers: each assistant turn's text up to and with its end token
        spans = []
        if not add_generation_prompt:
            for k, t in enumerate(turns):
                if t.role == "assistant":
                    start = len(self._text(turns[:k], image is not None, True))
                    end = text.index(END, start) + len(END)
                    spans.append((start, end))
        expanded = IMAGE_PAD * (self.grid(image)[1] * self.grid(image)[2] // self.merge**2) if image else ""
        ids: list[int] = []
        labels: list[int] = []
        last = 0
        for start, end in [*spans, (len(text), len(text))]:
            for piece, target in ((text[last:start], False), (text[start:end], True)):
                if piece:
                    piece_ids = self.tokenizer(piece.replace(IMAGE_PAD, expanded), add_special_tokens=False)["input_ids"]
                    ids += piece_ids
                    labels += piece_ids if target else [IGNORE_INDEX] * len(piece_ids)
            last = end
        return FamilyTokens(ids, labels, {"grid": self.grid(image) if image is not None else None})

    def collate(self, batch: Sequence[Encoded], side: str) -> dict[str, torch.Tensor]:
        out = text_batch(batch, self.tokenizer.pad_token_id, side)
        pixels = [e.pixel_values for e in batch if e.pixel_values is not None]
        if pixels:
            out["pixel_values"] = torch.cat(pixels)  # [all patches, 1176]
            out["image_grid_thw"] = torch.tensor([e.meta["grid"] for e in batch if e.pixel_values is not None])
        return out

    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.tokenizer.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)
        (directory / "chat_template.jinja").write_text(self.chat_template)


def tiny_config(config):
    """A copy of a Qwen2.5-VL config at a tiny size (2 text layers 32 wide, 1 vision block), keeping what the
    processor and tokenizer depend on: vocabulary, token ids, patch, merge and window sizes."""
    config = copy.deepcopy(config)
    text = config.text_config
    shrink(text, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
           num_key_value_heads=1)
    # M-RoPE splits half the head dim (16 / 2 = 8) over time, height and width, as the published 16:24:24 does 64
    text.rope_parameters = {**text.rope_parameters, "mrope_section": [2, 3, 3]}
    shrink(config.vision_config, depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
           fullatt_block_indexes=[0])
    return config


def load(directory: Path, dtype: torch.dtype | None, *, tiny: bool = False):
    """The model and processor of a Qwen2.5-VL directory (transformers layout); `tiny`: a random model of
    `tiny_config` instead of the checkpoint's weights (what a recipe's dry run trains)."""
    from transformers import (
        AutoImageProcessor,
        AutoTokenizer,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
    )

    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    image_processor = AutoImageProcessor.from_pretrained(directory, local_files_only=True)
    processor = Qwen25VLFamily(tokenizer, image_processor, _chat_template(directory))
    if tiny:
        config = tiny_config(Qwen2_5_VLConfig.from_pretrained(directory, local_files_only=True))
        return Qwen2_5_VLForConditionalGeneration(config).to(dtype), processor
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(directory, local_files_only=True, dtype=dtype)
    return model, processor


def _chat_template(directory: Path) -> str | None:
    """The processor's chat template of a checkpoint (`chat_template.jinja`, or `chat_template.json`'s)."""
    import json

    jinja, legacy = directory / "chat_template.jinja", directory / "chat_template.json"
    if jinja.is_file():
        return jinja.read_text()
    if legacy.is_file():
        try:
            return json.loads(legacy.read_text())["chat_template"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{legacy}: no 'chat_template' string ({err})") from err
    return None


__all__ = ["InputPixels", "PROMPTS", "Qwen25VLFamily", "load", "tiny_config"]

"""Kosmos-2 (transformers `Kosmos2ForConditionalGeneration`, model_type `kosmos-2`) behind groundlm's API.

Prompts (the Kosmos-2 paper and the transformers model card): `[grounding]` is `<grounding> An image of` (the
model continues with `<phrase>…</phrase><object>…</object>` spans); `[refer]` is
`<grounding><phrase> {expression}</phrase>` (the model continues with the expression's `<object>`); `[identify]`
is `<grounding><phrase> It</phrase><object>{box}</object> is` (referring expression generation); `[caption]`
is `An image of` and `[vqa]` is `Question: {question} Answer:`. Kosmos-2 has no detection prompt, so
`[detection]` is refused. A prompt without a task tag goes as written.

Layout (the transformers processor's, tested against it): `<s>`, `<image>`, `latent_query_num` image
positions (the processor's placeholder ids, replaced by the image embeddings where `image_embeds_position_mask`
is 1), `</image>`, then the prompt. A batch is decoded one row at a time: transformers' Kosmos-2 numbers the
positions of a left-padded row wrongly after the prompt (`generation.row_by_row`). Frame: the image is squashed to 224 × 224 ("resize"); codec:
`location/kosmos2.py` (32 × 32 patch indices). Fine-tuning Kosmos-2 through a recipe is not supported.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..geometry import Frame
from ..location import Kosmos2LocationCodec
from ..processor import Encoded
from .base import FamilyProcessor, FamilyTokens, Turn, answer_labels, padded, text_batch
from .generation import row_by_row

PROMPTS = {
    "grounding": "<grounding> An image of",
    "refer": "<grounding><phrase> {}</phrase>",
    "identify": "<grounding><phrase> It</phrase>{} is",
    "caption": "An image of",
    "vqa": "Question: {} Answer:",
}
_IMAGE_AT = 2  # the first image position, after `<s>` and `<image>`


class Kosmos2Family(FamilyProcessor):
    family = "Kosmos-2"
    tasks = tuple(PROMPTS)
    prompts = PROMPTS
    loop = staticmethod(row_by_row)  # its batched generate misplaces padded rows (generation.row_by_row)

    def __init__(self, hf_processor, num_image_tokens: int):
        self.image_processor = hf_processor.image_processor
        self.num_image_tokens = num_image_tokens
        tokenizer = hf_processor.tokenizer
        self.boi, self.eoi = hf_processor.boi_token, hf_processor.eoi_token
        super().__init__(tokenizer, Kosmos2LocationCodec(), image_token=self.boi, stop=tokenizer.eos_token)
        # the processor's placeholder ids at the image positions: the ids after `<unk>`
        first = tokenizer.unk_token_id + 1
        self.image_ids = list(range(first, first + num_image_tokens))

    def tokens(self, turns: Sequence[Turn], image: Frame | None, add_generation_prompt: bool) -> FamilyTokens:
        tok = self.tokenizer
        ids = [tok.bos_token_id]
        if image is not None:
            ids += [tok.convert_tokens_to_ids(self.boi), *self.image_ids, tok.convert_tokens_to_ids(self.eoi)]
        # the processor writes the text after the image with one space (which `<grounding>` strips on its left)
        text = (" " if image is not None else "") + turns[0].text.strip()
        prompt = ids + tok(text, add_special_tokens=False)["input_ids"]
        answer = []
        if len(turns) > 1 and not add_generation_prompt:
            answer = tok(turns[1].text + tok.eos_token, add_special_tokens=False)["input_ids"]
        ids, labels = answer_labels(prompt, answer)
        return FamilyTokens(ids, labels, {"image": image is not None})

    def collate(self, batch: Sequence[Encoded], side: str) -> dict[str, torch.Tensor]:
        out = text_batch(batch, self.tokenizer.pad_token_id, side)
        n = self.num_image_tokens
        masks = [
            [0] * _IMAGE_AT + [1] * n + [0] * (len(e.input_ids) - _IMAGE_AT - n) if e.meta["image"]
            else [0] * len(e.input_ids) for e in batch
        ]
        out["image_embeds_position_mask"] = padded(masks, 0, side)
        pixels = [e.pixel_values for e in batch if e.pixel_values is not None]
        if pixels:
            out["pixel_values"] = torch.stack(pixels)  # [B, 3, S, S]
        return out


def load(directory: Path, dtype: torch.dtype | None):
    """The model and processor of a Kosmos-2 directory (transformers layout)."""
    from transformers import AutoProcessor, Kosmos2ForConditionalGeneration

    model = Kosmos2ForConditionalGeneration.from_pretrained(directory, local_files_only=True, dtype=dtype)
    processor = AutoProcessor.from_pretrained(directory, local_files_only=True)
    return model, Kosmos2Family(processor, int(model.config.latent_query_num))


__all__ = ["PROMPTS", "Kosmos2Family", "load"]

"""Florence-2 (transformers `Florence2ForConditionalGeneration`, model_type `florence2`) behind groundlm's API.

Florence-2 is asked with task tokens, which its processor turns into instructions (`<OD>` → "Locate the
objects with category name in the image.", `<CAPTION_TO_PHRASE_GROUNDING>the cat` → "Locate the phrases in the
caption: the cat", /work/shared/reference/published_models.md). groundlm's tasks map onto them:

| groundlm | Florence-2 task token |
|---|---|
| `[refer] X` | `<CAPTION_TO_PHRASE_GROUNDING>X` |
| `[detection]` (no class) / `[detection] X` | `<OD>` / `<OPEN_VOCABULARY_DETECTION>X` |
| `[grounding]` | `<DENSE_REGION_CAPTION>` (regions with their descriptions, the nearest Florence-2 task) |
| `[caption]` | `<CAPTION>` |
| `[identify] <box>` | `<REGION_TO_DESCRIPTION><loc_…>×4` |

Florence-2 has no free question answering, so `[vqa]` is refused. A prompt without a task tag goes as written
(another task token such as `<MORE_DETAILED_CAPTION>`, or plain text). Polygon tasks
(`<REFERRING_EXPRESSION_SEGMENTATION>`) answer with x, y pairs that the box codec does not read as polygons:
their answers' text is right, their objects are not (docs/other-models.md).

Layout (the transformers processor's, tested against it): the encoder reads `<image>` × image_seq_length,
`<s>`, the instruction, `</s>`; the answer is the decoder's. Frame: squashed to the square input ("resize");
codec: `location/florence2.py` (1000 bins). Fine-tuning Florence-2 through a recipe is not supported.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from ..geometry import Frame
from ..location import Florence2LocationCodec
from ..processor import Encoded
from .base import FamilyProcessor, FamilyTokens, Turn, text_batch
from .tasks import Asked

PROMPTS = {
    "refer": "<CAPTION_TO_PHRASE_GROUNDING>{}",
    "detection": "<OPEN_VOCABULARY_DETECTION>{}",
    "grounding": "<DENSE_REGION_CAPTION>",
    "caption": "<CAPTION>",
    "identify": "<REGION_TO_DESCRIPTION>{}",
}
ALL_OBJECTS = "<OD>"  # `[detection]` without a class


class Florence2Family(FamilyProcessor):
    family = "Florence-2"
    tasks = tuple(PROMPTS)
    prompts = PROMPTS
    scores_continuations = False  # encoder-decoder: a continuation is the decoder's, not the prompt's tail

    def __init__(self, hf_processor):
        self.image_processor = hf_processor.image_processor
        self.image_seq_length = int(hf_processor.num_image_tokens)
        # the processor's task tokens → instructions (public tables of transformers' Florence2Processor)
        self.without_input = dict(hf_processor.task_prompts_without_inputs)
        self.with_input = dict(hf_processor.task_prompts_with_input)
        tokenizer = hf_processor.tokenizer
        super().__init__(tokenizer, Florence2LocationCodec(), image_token=hf_processor.image_token,
                         stop=tokenizer.eos_token)

    def ask_text(self, asked: Asked) -> str:
        if asked.task == "detection" and not asked.subject:
            return ALL_OBJECTS
        return super().ask_text(asked)

    def instruction(self, text: str) -> str:
        """The words Florence-2 reads for a prompt: a task token replaced by its instruction, as its processor
        does (a task token without input must be the whole prompt)."""
        for token, words in self.without_input.items():
            if token in text:
                if text.strip() != token:
                    raise ValueError(f"Florence-2's {token} takes no input; the prompt must be {token} alone")
                return words
        for token, words in self.with_input.items():
            if token in text:
                return words.format(input=text.replace(token, "").strip())
        return text

    def tokens(self, turns: Sequence[Turn], image: Frame | None, add_generation_prompt: bool) -> FamilyTokens:
        if not add_generation_prompt:
            raise ValueError("Florence-2 is not fine-tuned through groundlm recipes (docs/other-models.md)")
        tok = self.tokenizer
        text = self.config.image_token * self.image_seq_length + tok.bos_token
        ids = tok(text + self.instruction(turns[0].text) + tok.eos_token, add_special_tokens=False)["input_ids"]
        return FamilyTokens(ids, [-100] * len(ids))

    def collate(self, batch: Sequence[Encoded], side: str) -> dict[str, torch.Tensor]:
        # The encoder's learned positions count from the first token, so its input is always padded on the
        # right (left padding would shift every position); the decoder starts fresh for every row.
        out = text_batch(batch, self.tokenizer.pad_token_id, "right")
        pixels = [e.pixel_values for e in batch if e.pixel_values is not None]
        if pixels:
            out["pixel_values"] = torch.stack(pixels)  # [B, 3, S, S]
        return out


def load(directory: Path, dtype: torch.dtype | None):
    """The model and processor of a Florence-2 directory (transformers layout)."""
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    model = Florence2ForConditionalGeneration.from_pretrained(directory, local_files_only=True, dtype=dtype)
    return model, Florence2Family(AutoProcessor.from_pretrained(directory, local_files_only=True))


__all__ = ["PROMPTS", "Florence2Family", "load"]

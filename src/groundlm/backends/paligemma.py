"""PaliGemma (transformers `PaliGemmaForConditionalGeneration`, model_type `paligemma`) behind groundlm's API.

Prompts (big_vision's PaliGemma README, /work/shared/reference/published_models.md): `detect {things}` for
`[refer]` and `[detection]`, `caption en` for `[caption]`, `answer en {question}` for `[vqa]`; a prompt without
a task tag goes as written (`segment cat`, `caption es`, ...). `[grounding]` and `[identify]` have no PaliGemma
prompt. Layout (the transformers processor's, tested against it): `<image>` × image_seq_length, `<bos>`, the
prompt, `\\n` is the prefix; the answer and `<eos>` are the suffix. The prefix attends both ways and the suffix
causally (`token_type_ids` 0 / 1, PaliGemma's prefix-LM), and only the suffix is a target.

Frame: the image is squashed to the square input without padding ("resize"). Codec: `location/paligemma.py`
(`<loc…>` y-first, 1024 bins). Segmentation answers keep their box; the 16 `<seg…>` codes need PaliGemma's
VQ-VAE decoder, which transformers does not ship, so no mask is decoded.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch

from ..geometry import Frame
from ..location import PaliGemmaLocationCodec
from ..processor import Encoded
from .base import FamilyProcessor, FamilyTokens, Turn, answer_labels, padded, shrink, text_batch

PROMPTS = {"refer": "detect {}", "detection": "detect {}", "caption": "caption en", "vqa": "answer en {}"}


class PaliGemmaFamily(FamilyProcessor):
    family = "PaliGemma"
    tasks = tuple(PROMPTS)
    prompts = PROMPTS

    def __init__(self, hf_processor):
        self.hf_processor = hf_processor
        self.image_processor = hf_processor.image_processor
        self.image_seq_length = int(hf_processor.image_seq_length)
        tokenizer = hf_processor.tokenizer
        super().__init__(tokenizer, PaliGemmaLocationCodec(), image_token=hf_processor.image_token,
                         stop=tokenizer.eos_token)

    def tokens(self, turns: Sequence[Turn], image: Frame | None, add_generation_prompt: bool) -> FamilyTokens:
        tok = self.tokenizer
        prefix_text = self.config.image_token * self.image_seq_length + tok.bos_token + turns[0].text + "\n"
        prefix = tok(prefix_text, add_special_tokens=False)["input_ids"]
        answer = []
        if len(turns) > 1 and not add_generation_prompt:
            answer = tok(turns[1].text + tok.eos_token, add_special_tokens=False)["input_ids"]
        ids, labels = answer_labels(prefix, answer)
        return FamilyTokens(ids, labels, {"prefix": len(prefix)})

    def collate(self, batch: Sequence[Encoded], side: str) -> dict[str, torch.Tensor]:
        out = text_batch(batch, self.tokenizer.pad_token_id, side)
        # 0: the prefix (image + prompt, attended both ways); 1: the answer and anything after it (causal)
        types = [[0] * e.meta["prefix"] + [1] * (len(e.input_ids) - e.meta["prefix"]) for e in batch]
        out["token_type_ids"] = padded(types, 0, side)
        pixels = [e.pixel_values for e in batch if e.pixel_values is not None]
        if pixels:
            out["pixel_values"] = torch.stack(pixels)  # [B, 3, S, S]
        return out

    def save_pretrained(self, directory: str | Path) -> None:
        self.hf_processor.save_pretrained(directory)


def tiny_config(config):
    """A copy of a PaliGemma config at a tiny size (2 Gemma layers 32 wide, 1 SigLIP layer), keeping what the
    processor and tokenizer depend on: vocabulary, token ids, image and patch size (so image_seq_length)."""
    config = copy.deepcopy(config)
    shrink(config.text_config, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
           num_key_value_heads=1, head_dim=16)
    shrink(config.vision_config, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
           projection_dim=32)
    config.projection_dim = config.hidden_size = 32  # the projector maps the tower's width to the text width
    return config


def load(directory: Path, dtype: torch.dtype | None, *, tiny: bool = False):
    """The model and processor of a PaliGemma directory (transformers layout); `tiny`: a random model of
    `tiny_config` instead of the checkpoint's weights (what a recipe's dry run trains)."""
    from transformers import AutoProcessor, PaliGemmaConfig, PaliGemmaForConditionalGeneration

    processor = PaliGemmaFamily(AutoProcessor.from_pretrained(directory, local_files_only=True))
    if tiny:
        config = tiny_config(PaliGemmaConfig.from_pretrained(directory, local_files_only=True))
        return PaliGemmaForConditionalGeneration(config).to(dtype), processor
    model = PaliGemmaForConditionalGeneration.from_pretrained(directory, local_files_only=True, dtype=dtype)
    return model, processor


__all__ = ["PROMPTS", "PaliGemmaFamily", "load", "tiny_config"]

"""Tiny checkpoints of the four transformers families groundlm serves (backends/), built here: each family's
transformers config at a tiny size with random weights, a byte-level tokenizer with the family's special
tokens, and the family's processor files, saved as the published checkpoints are laid out. No weights are
downloaded.

`forced(lm, answers)` makes the next generation write `answers[row]` (then the end token) by adding a logits
processor to the family's `generate` call, so the real decoding path runs and a scripted answer in the
family's format comes back through groundlm's parsing.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedTokenizerFast

FAMILIES = ("qwen2_5_vl", "florence2", "paligemma", "kosmos2")

# Qwen2.5-VL's chat template format (ChatML, the default system prompt, vision tokens before the user text),
# written for these tests.
QWEN_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                 "<|image_pad|>", "<|video_pad|>"]
FLORENCE_TASK_TOKENS = ["<od>", "</od>", "<ocr>", "</ocr>", "<cap>", "</cap>", "<dcap>", "</dcap>", "<grounding>",
                        "</grounding>", "<seg>", "</seg>", "<sep>", "<region_cap>", "</region_cap>",
                        "<poly>", "</poly>", "<and>"]


def byte_tokenizer(specials: list[str], added: list[str] = (), **named) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer without merges (one token per byte, decoding exact) with `specials` as
    special tokens and `added` as whole tokens."""
    vocab = {t: i for i, t in enumerate(dict.fromkeys(specials))}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    if added:
        tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in added])
    return PreTrainedTokenizerFast(tokenizer_object=tok, **named)


def _qwen(directory: Path) -> None:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    tok = byte_tokenizer(QWEN_SPECIALS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = QWEN_TEMPLATE
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"]),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56,
                           fullatt_block_indexes=[0]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(directory)
    Qwen2VLImageProcessorPil(min_pixels=28 * 28 * 2, max_pixels=28 * 28 * 16).save_pretrained(directory)
    tok.save_pretrained(directory)


def _florence(directory: Path) -> None:
    from transformers import Florence2Config, Florence2ForConditionalGeneration, Florence2Processor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    locs = [f"<loc_{k}>" for k in range(1000)]
    tok = byte_tokenizer(["<s>", "<pad>", "</s>", "<unk>", "<image>"], locs + FLORENCE_TASK_TOKENS,
                         bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                         extra_special_tokens={"image_token": "<image>"})
    side = 32  # a 32 x 32 input: 4 x 4 patches after two stages, plus the pooled token
    image_processor = CLIPImageProcessorPil(size={"height": side, "width": side}, do_center_crop=False,
                                            crop_size={"height": side, "width": side}, image_seq_length=17)
    config = Florence2Config(
        vision_config=dict(depths=[1, 1], patch_size=[7, 3], patch_stride=[4, 2], patch_padding=[3, 1],
                           patch_prenorm=[False, True], embed_dim=[16, 32], num_heads=[2, 2], num_groups=[2, 2],
                           window_size=2, projection_dim=32, drop_path_rate=0.0),
        text_config=dict(model_type="bart", vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1,
                         encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                         decoder_ffn_dim=64, max_position_embeddings=256, pad_token_id=1, bos_token_id=0,
                         eos_token_id=2, decoder_start_token_id=2, dropout=0.0),
        image_token_id=tok.image_token_id,
    )
    model = Florence2ForConditionalGeneration(config)
    # Florence-2's published generation settings (its generation_config.json): `<s>` forced first, no 3-gram twice
    model.generation_config.update(forced_bos_token_id=0, no_repeat_ngram_size=3, num_beams=3,
                                   decoder_start_token_id=2, eos_token_id=2, pad_token_id=1)
    model.save_pretrained(directory)
    Florence2Processor(image_processor=image_processor, tokenizer=tok).save_pretrained(directory)


def _paligemma(directory: Path) -> None:
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    locs = [f"<loc{k:04d}>" for k in range(1024)] + [f"<seg{k:03d}>" for k in range(128)]
    tok = byte_tokenizer(["<pad>", "<eos>", "<bos>", "<unk>", "<image>"], locs, bos_token="<bos>",
                         eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
                         extra_special_tokens={"image_token": "<image>"})
    processor = PaliGemmaProcessor(image_processor=SiglipImageProcessorPil(size={"height": 28, "width": 28},
                                                                           image_seq_length=4), tokenizer=tok)
    config = PaliGemmaConfig(
        vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14),
        text_config=dict(model_type="gemma", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, vocab_size=len(tok),
                         bos_token_id=2, eos_token_id=1, pad_token_id=0),
        image_token_index=tok.image_token_id, vocab_size=len(tok), projection_dim=32, hidden_size=32,
        pad_token_id=0, bos_token_id=2, eos_token_id=1,
    )
    PaliGemmaForConditionalGeneration(config).save_pretrained(directory)
    processor.save_pretrained(directory)


def _kosmos2(directory: Path) -> None:
    from transformers import Kosmos2Config, Kosmos2ForConditionalGeneration, Kosmos2Processor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tok = byte_tokenizer(["<s>", "<pad>", "</s>", "<unk>"], bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                         unk_token="<unk>")
    image_processor = CLIPImageProcessorPil(size={"height": 28, "width": 28}, do_center_crop=False,
                                            crop_size={"height": 28, "width": 28})
    processor = Kosmos2Processor(image_processor, tok)  # adds `<grounding>`, `<phrase>`, `<patch_index_k>`...
    config = Kosmos2Config(
        text_config=dict(vocab_size=len(processor.tokenizer), embed_dim=32, layers=1, ffn_dim=64,
                         attention_heads=2, max_position_embeddings=512, dropout=0.0, attention_dropout=0.0),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=28, patch_size=14),
        latent_query_num=4,
    )
    Kosmos2ForConditionalGeneration(config).save_pretrained(directory)
    processor.save_pretrained(directory)


BUILDERS = {"qwen2_5_vl": _qwen, "florence2": _florence, "paligemma": _paligemma, "kosmos2": _kosmos2}


def build_family(family: str, directory: Path, seed: int = 0) -> Path:
    """Save a tiny random checkpoint of `family` in `directory` (transformers layout + processor files)."""
    torch.manual_seed(seed)
    directory.mkdir(parents=True, exist_ok=True)
    BUILDERS[family](directory)
    return directory


class _Force(LogitsProcessor):
    """Puts all probability on row r's scripted token at each step (then on its last token)."""

    def __init__(self, scripts: list[list[int]]):
        self.scripts = scripts
        self.start: int | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self.start = input_ids.shape[1] if self.start is None else self.start
        step = input_ids.shape[1] - self.start
        out = torch.full_like(scores, float("-inf"))
        for row, script in enumerate(self.scripts):
            out[row, script[min(step, len(script) - 1)]] = 0.0
        return out


@contextlib.contextmanager
def forced(lm, answers: list[str]):
    """While inside, the family model's `generate` writes `answers[row]` and the end token (see module doc)."""
    tok = lm.processor.tokenizer
    scripts = [tok(a, add_special_tokens=False)["input_ids"] + [lm.processor.stop_token_id] for a in answers]
    original = lm.model.generate
    given = [0]  # scripts handed out so far: a family decoding row by row calls `generate` once per row

    def generate(*args, logits_processor=None, **kwargs):
        rows = kwargs["input_ids"].shape[0]
        mine = scripts[given[0] : given[0] + rows]
        given[0] += rows
        processors = LogitsProcessorList([*(logits_processor or []), _Force(mine)])
        return original(*args, logits_processor=processors, **kwargs)

    lm.model.generate = generate
    try:
        yield
    finally:
        del lm.model.generate

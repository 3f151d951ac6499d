"""The model a recipe starts from: a preset with random weights, or pretrained parts joined by a new connector.

Pretrained parts are a vision tower (CLIP, SigLIP or ViT) and a causal language model with its tokenizer, each
a local directory or a hub id already in the local cache; nothing is ever downloaded, and a missing part fails
with an error that says what to fetch. The connector is new (random, seeded). The tokenizer gains only what
the processor needs (the `<image>` placeholder and a pad token): a pretrained tokenizer must keep tokenising
text exactly as the language model learned it, so template markers stay plain text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from tokenizers import AddedToken
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..images import CLIP_MEAN, CLIP_STD
from ..location import add_location_tokens, make_codec
from ..modeling import GroundLMConfig, GroundLMForConditionalGeneration, build_connector, load_vision_tower
from ..modeling.location_heads import build_location_heads
from ..presets import build_model, get_preset
from ..processor import GroundLMProcessor, ProcessorConfig
from ..templates import get_template
from .recipe import ModelSpec, expand


def build_for_recipe(
    spec: ModelSpec, *, seed: int, templates: Sequence[str] = ()
) -> tuple[GroundLMForConditionalGeneration, GroundLMProcessor]:
    """The model and processor of a recipe's model spec (deterministic for a seed).

    `templates` are the other chat templates the recipe's stages use; a preset's word-level tokenizer gets
    their markers as whole tokens too (a pretrained tokenizer is left as it is).
    """
    if spec.preset is not None:
        return _from_preset(spec, seed, templates)
    if spec.coordinate_init not in (None, "random") or spec.vision_feature_norm:
        raise ValueError("model.coordinate_init and vision_feature_norm apply to presets only")
    return _from_parts(spec, seed)


def _from_preset(spec: ModelSpec, seed: int, templates: Sequence[str]):
    preset = get_preset(spec.preset)
    overrides = {
        k: getattr(spec, k)
        for k in ("connector", "template", "frame", "image_position_embedding", "coordinate_init",
                  "vision_feature_norm", "location_codec", "location_bins", "location_head")
        if getattr(spec, k) is not None
    }
    model, processor = build_model(replace(preset, **overrides), seed=seed)
    tokenizer = processor.tokenizer
    # Markers of the stages' other templates (e.g. plain's "\n" end token) must be whole tokens as well, or
    # a word-level tokenizer drops them and the model never learns where an answer ends.
    extra = []
    for name in templates:
        t = get_template(name)
        extra += [s for s in (*t.special_tokens, t.stop) if s and s not in tokenizer.get_vocab()]
    if extra:
        tokenizer.add_special_tokens(
            {
                "additional_special_tokens": [
                    AddedToken(s, special=True, normalized=False) for s in dict.fromkeys(extra)
                ]
            }
        )
        torch.manual_seed(seed)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # random model: plain init
    return model, processor


def _image_stats(path: str) -> tuple[tuple, tuple]:
    """The tower's normalisation (mean, std) from its preprocessor_config.json, else CLIP's."""
    config = Path(path) / "preprocessor_config.json"
    if config.is_file():
        values = json.loads(config.read_text())
        if "image_mean" in values and "image_std" in values:
            return tuple(values["image_mean"]), tuple(values["image_std"])
    return CLIP_MEAN, CLIP_STD


def _load_language_model(path: str, dtype: torch.dtype):
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    except OSError as err:
        raise FileNotFoundError(
            f"cannot load the language model {path!r}: groundlm needs its files (weights and tokenizer) "
            "locally and never downloads. Pass a local checkpoint directory, or fetch it first on a machine "
            f"with network (e.g. `hf download {path} --local-dir <dir>`). ({err})"
        ) from err
    return model, tokenizer


def _from_parts(spec: ModelSpec, seed: int):
    dtype = getattr(torch, spec.dtype)
    tower_path, lm_path = expand(spec.vision_tower), expand(spec.language_model)
    tower = load_vision_tower(tower_path, dtype=dtype)
    lm, tokenizer = _load_language_model(lm_path, dtype)

    # The processor needs one whole token for the image placeholder and a pad token for batching.
    added = {}
    if "<image>" not in tokenizer.get_vocab():
        added["additional_special_tokens"] = [AddedToken("<image>", special=True, normalized=False)]
    if tokenizer.pad_token is None:
        if tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token  # LLaVA's choice for LLaMA tokenizers
        else:
            added["pad_token"] = "<pad>"
    if added:
        tokenizer.add_special_tokens(added)
    if len(tokenizer) > lm.get_input_embeddings().weight.shape[0]:
        torch.manual_seed(seed)
        lm.resize_token_embeddings(len(tokenizer))
    # tokens / embedding codecs: their tokens join the vocabulary, new rows at the mean (location_setup.py).
    codec = ProcessorConfig(location_codec=spec.location_codec or "text", location_bins=spec.location_bins or 100)
    if codec.location_codec != "text":
        add_location_tokens(lm, tokenizer, make_codec(codec))

    template = spec.template or "llama2"
    config = GroundLMConfig(
        vision_config=tower.config,
        text_config=lm.config,
        connector=spec.connector or "mlp2x_gelu",
        vision_feature_layer=spec.vision_feature_layer,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        frame=spec.frame or "resize",
        image_position_embedding=spec.image_position_embedding or "none",
        pad_token_id=tokenizer.pad_token_id,
        location_codec=codec.location_codec,
        location_bins=codec.location_bins,
        location_head=_head_settings(tokenizer, codec, spec.location_head),
    )
    # Build the skeleton on the meta device (no memory, no random init of billions of weights), then put the
    # loaded parts and a freshly initialised connector in place.
    with torch.device("meta"):
        model = GroundLMForConditionalGeneration(config)
    model.vision_tower = tower
    model.language_model = lm
    torch.manual_seed(seed)
    model.connector = build_connector(config).to(dtype)
    if model.location_heads is not None:
        model.location_heads = build_location_heads(config).to(dtype)
    left = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if left:
        raise RuntimeError(f"parameters left uninitialised after assembling the model: {left[:5]}")

    mean, std = _image_stats(tower_path)
    processor_config = ProcessorConfig(
        template=template,
        image_size=config.image_size,
        frame=config.frame,
        num_image_tokens=config.num_image_tokens,
        mean=mean,
        std=std,
        location_codec=codec.location_codec,
        location_bins=codec.location_bins,
    )
    processor = GroundLMProcessor(tokenizer, processor_config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.stop_token_id or tokenizer.eos_token_id
    return model, processor


def _head_settings(tokenizer, codec: ProcessorConfig, overrides: dict | None) -> dict | None:
    """`GroundLMConfig.location_head` for the embedding codec (its token ids + the recipe's overrides)."""
    if codec.location_codec != "embedding":
        return None
    found = make_codec(codec)
    ids = {"trigger_token_id": found.trigger, "slot_token_id": found.slot}
    return {**{k: tokenizer.convert_tokens_to_ids(t) for k, t in ids.items()}, **(overrides or {})}


def stage_processor(processor: GroundLMProcessor, template: str | None) -> GroundLMProcessor:
    """The processor a stage encodes with: the same tokenizer, with the stage's template if it has one."""
    if template is None or template == processor.config.template:
        return processor
    return GroundLMProcessor(processor.tokenizer, replace(processor.config, template=template))

"""`llava-hf`: transformers' `LlavaForConditionalGeneration` directories (llava-hf/llava-1.5-7b-hf and kin).

Both key layouts are read: the hub files' (`language_model.model.*`, `language_model.lm_head`, `vision_tower.*`,
`multi_modal_projector.linear_1/2`) and the in-memory one since transformers 4.52 (`model.language_model.*`,
`lm_head`, `model.vision_tower.*`, `model.multi_modal_projector.*`); the tower may carry CLIP's old
`vision_model.` level or not (transformers 5 saves it without). Hub names become in-memory names by
transformers' own four renaming rules, and in-memory names become groundlm's by the inverse of
`export.llava_key`, so the mapping is written once, in export.py.

What maps: a CLIP tower (SigLIP only with nothing dropped, see `_check`), LLaVA's projector as the
`mlp2x_gelu` connector (`linear_1`, GELU, `linear_2`), the causal LM, `vision_feature_layer`, the select
strategy and `image_token_index`. What LLaVA's config does not say is an option: the chat template
(`llava_v1`: LLaVA-1.5's `USER: <image>\\n... ASSISTANT:`), the frame (`pad`: LLaVA-1.5 trained on images
padded to a square with the mean colour) and the location codec (`llava`: boxes as `[x1, y1, x2, y2]`
fractions, as LLaVA-1.5 writes them).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from transformers import AutoTokenizer, LlavaConfig

from ..export import llava_key
from ..location import make_codec
from ..modeling import GroundLMConfig
from .directory import make_processor, write_model
from .keys import WeightsError, WrongKind, expected_weights, match_weights, read_json, read_state_dict

# transformers' renaming of the hub layout into the in-memory one (its conversion mapping for "llava").
HUB_TO_MEMORY = (
    ("language_model.lm_head.", "lm_head."),
    ("language_model.model.", "model.language_model."),
    ("vision_tower.", "model.vision_tower."),
    ("multi_modal_projector.", "model.multi_modal_projector."),
)
# CLIP checkpoints written before transformers 5 keep the tower one level down.
OLD_TOWER_LEVEL = "vision_model."


def looks_like(src: Path) -> bool:
    """A directory whose config.json says `model_type: llava`."""
    config = src / "config.json"
    return config.is_file() and _model_type(config) == "llava"


def _model_type(config: Path) -> str | None:
    try:
        return read_json(config).get("model_type")
    except WeightsError:
        return None


def tower_key(key: str, expected) -> str:
    """`key` (a groundlm `vision_tower.*` name) without CLIP's old `vision_model.` level when the model has
    no such level."""
    prefix = "vision_tower." + OLD_TOWER_LEVEL
    if key not in expected and key.startswith(prefix):
        return "vision_tower." + key.removeprefix(prefix)
    return key


def llava_rename(expected) -> Callable[[str], str | None]:
    """source key (hub or in-memory layout) -> groundlm key, or None for a key with no place."""
    from_memory = {llava_key(k): k for k in expected}

    def rename(key: str) -> str | None:
        memory = key
        if not key.startswith("model.") and key != "lm_head.weight":
            rule = next(((old, new) for old, new in HUB_TO_MEMORY if key.startswith(old)), None)
            if rule is None:
                return None
            memory = rule[1] + key.removeprefix(rule[0])
        if memory.startswith("model.vision_tower."):
            return tower_key(memory.removeprefix("model."), expected)
        return from_memory.get(memory)

    return rename


def _check(config: LlavaConfig, src: Path) -> None:
    """Refuse what groundlm cannot compute with the same logits, with the reason."""
    where = src / "config.json"
    if not isinstance(config.vision_feature_layer, int):
        raise WeightsError(
            f"{where}: vision_feature_layer {config.vision_feature_layer!r} concatenates several layers; "
            "groundlm's connector reads one layer"
        )
    if config.projector_hidden_act != "gelu":
        raise WeightsError(
            f"{where}: projector_hidden_act {config.projector_hidden_act!r}; groundlm's mlp2x_gelu uses exact GELU"
        )
    tower = config.vision_config.model_type
    if tower not in ("clip_vision_model", "siglip_vision_model"):
        raise WeightsError(f"{where}: vision_config.model_type {tower!r}; groundlm reads CLIP and SigLIP towers")
    if tower == "siglip_vision_model" and config.vision_feature_select_strategy == "default":
        raise WeightsError(
            f"{where}: a SigLIP tower with strategy 'default': transformers drops its first patch token (SigLIP "
            "has no CLS token), groundlm keeps every patch, so the logits would differ"
        )


def import_llava_hf(
    src: Path, out: Path, *, template: str = "llava_v1", frame: str = "pad", location_codec: str = "llava",
    location_bins: int = 100,
) -> None:
    """Write the groundlm model of the llava-hf directory `src` to `out`."""
    src, out = Path(src), Path(out)
    if not looks_like(src):
        raise WrongKind(f"{src}: not a llava-hf directory (expected config.json with model_type 'llava')")
    config = LlavaConfig.from_pretrained(src, local_files_only=True)
    _check(config, src)
    tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    if image_id != config.image_token_id:
        raise WeightsError(
            f"{src}: config.json's image_token_index is {config.image_token_id}, the tokenizer's '<image>' is "
            f"{image_id}"
        )
    if tokenizer.pad_token is None:
        if tokenizer.unk_token is None:
            raise WeightsError(f"{src}: the tokenizer has neither a pad nor an unk token to pad batches with")
        tokenizer.pad_token = tokenizer.unk_token  # LLaVA's choice for LLaMA tokenizers; no new row
    ours = GroundLMConfig(
        vision_config=config.vision_config.to_dict(),
        text_config=config.text_config.to_dict(),
        connector="mlp2x_gelu",
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        image_token_id=config.image_token_id,
        frame=frame,
        location_codec=location_codec,
        location_bins=location_bins,
        projector_bias=config.multimodal_projector_bias,
        pad_token_id=tokenizer.pad_token_id,
    )
    check_plain_codec(ours, src)
    shapes, tied = expected_weights(ours)
    weights = match_weights(
        read_state_dict(src), llava_rename(shapes), shapes, where=str(src), optional=tied
    )
    mean, std = image_stats(src)
    processor = make_processor(
        tokenizer, ours, template=template, mean=mean, std=std, location_codec=location_codec,
        location_bins=location_bins,
    )
    write_model(out, ours, weights, processor)


def check_plain_codec(config: GroundLMConfig, src: Path) -> None:
    """An import maps weights only: a codec that needs new tokens or heads is added by a recipe's
    `init_from` (which initialises and then trains them), not here."""
    codec = make_codec(config)
    if codec.has_heads or codec.added_tokens():
        raise WeightsError(
            f"{src}: location_codec {config.location_codec!r} needs new tokens or heads the checkpoint has not "
            "learned; import with a plain-text codec and let a recipe's init_from add it"
        )


def image_stats(directory: Path) -> tuple[tuple, tuple]:
    """The normalisation in `directory`'s preprocessor_config.json, else CLIP's (what LLaVA uses)."""
    from ..train.build import image_stats as read

    return read(str(directory))


__all__ = ["import_llava_hf", "llava_rename", "looks_like", "tower_key"]

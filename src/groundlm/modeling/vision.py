"""The vision tower: build it from a config or load it from a local checkpoint, and select its features.

Towers are plain transformers vision models: `CLIPVisionModel`, `SiglipVisionModel`, `ViTModel` (without its
pooler, which groundlm never uses) or `Blip2VisionModel` (BLIP-2's EVA-CLIP ViT-g, MiniGPT-4 and MiniGPT-v2's
tower). Features are one hidden state of the tower (LLaVA's `mm_vision_select_layer`), with or without the CLS
token: hidden states come before a tower's final norm (SigLIP's and BLIP-2's `post_layernorm`), so MiniGPT's
`ln_vision` is groundlm's own norm after the tower (`vision_feature_norm`, or the Q-Former connector's).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from transformers import (
    AutoConfig,
    Blip2VisionModel,
    CLIPVisionModel,
    PreTrainedConfig,
    PreTrainedModel,
    SiglipVisionModel,
    ViTModel,
)


@dataclass(frozen=True)
class _Tower:
    """A kind of vision tower groundlm reads (keyed by its config's `model_type`)."""

    model_class: type[PreTrainedModel]
    has_cls_token: bool  # prepends a CLS token to its patch tokens
    kwargs: dict = field(default_factory=dict)  # for from_config / from_pretrained


_TOWERS = {
    "clip_vision_model": _Tower(CLIPVisionModel, has_cls_token=True),
    "siglip_vision_model": _Tower(SiglipVisionModel, has_cls_token=False),
    # ViT's pooler (a dense layer on CLS) would never get gradients: groundlm reads hidden states only.
    "vit": _Tower(ViTModel, has_cls_token=True, kwargs={"add_pooling_layer": False}),
    # EVA-CLIP ViT-g as BLIP-2 uses it (fused qkv with q/v biases); AutoModel does not map its config.
    "blip_2_vision_model": _Tower(Blip2VisionModel, has_cls_token=True),
}
VISION_TOWERS = tuple(_TOWERS)
# `default` drops the CLS token when the tower has one; `full` keeps every token.
SELECT_STRATEGIES = ("default", "full")


def _tower(model_type: str) -> _Tower:
    if model_type not in _TOWERS:
        raise ValueError(f"unsupported vision tower {model_type!r}; choose one of {', '.join(VISION_TOWERS)}")
    return _TOWERS[model_type]


def tower_has_cls_token(vision_config: PreTrainedConfig) -> bool:
    """Whether the tower prepends a CLS token to its patch tokens (CLIP and ViT do, SigLIP does not)."""
    return _tower(vision_config.model_type).has_cls_token


def build_vision_tower(vision_config: PreTrainedConfig) -> PreTrainedModel:
    """A randomly initialised vision tower for `vision_config` (CLIP, SigLIP, ViT or BLIP-2's EVA ViT)."""
    tower = _tower(vision_config.model_type)
    return tower.model_class._from_config(vision_config, **tower.kwargs)


def load_vision_tower(path_or_id: str | os.PathLike, *, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """Load a pretrained vision tower from a local checkpoint directory (or the local hub cache).

    Accepts a vision-only checkpoint or a dual-encoder one (a full CLIP or SigLIP model, whose vision half is
    taken, as LLaVA does with `openai/clip-vit-large-patch14-336`). groundlm never downloads: a hub id that is
    not already in the local cache fails with an error saying the files are needed locally.
    """
    try:
        config = AutoConfig.from_pretrained(path_or_id, local_files_only=True)
    except OSError as err:
        raise FileNotFoundError(
            f"cannot load the vision tower {str(path_or_id)!r}: groundlm needs its files locally and never "
            "downloads. Pass a local checkpoint directory, or fetch it first on a machine with network "
            f"(e.g. `hf download {path_or_id} --local-dir <dir>`). ({err})"
        ) from err
    # Dual encoders ("clip", "siglip") nest the tower's config; a vision-only checkpoint is the tower.
    vision_config = getattr(config, "vision_config", None) or config
    model_type = vision_config.model_type
    if model_type not in _TOWERS:
        raise ValueError(
            f"{str(path_or_id)!r} holds a {model_type!r} model, not a supported vision tower "
            f"({', '.join(VISION_TOWERS)})"
        )
    tower = _TOWERS[model_type]
    # The vision classes read their half of a dual-encoder checkpoint (config and weights) by themselves.
    return tower.model_class.from_pretrained(path_or_id, local_files_only=True, dtype=dtype, **tower.kwargs)


def select_image_features(
    tower: PreTrainedModel, pixel_values: torch.Tensor, layer: int, strategy: str
) -> torch.Tensor:
    """The tower's hidden state `layer` for `pixel_values` [B, 3, H, W], as [B, N, C].

    `strategy="default"` drops the CLS token when the tower has one (CLIP, ViT); `"full"` keeps every token.
    SigLIP has no CLS token, so both strategies give all its patch tokens.
    """
    if strategy not in SELECT_STRATEGIES:
        raise ValueError(
            f"unknown vision_feature_select_strategy {strategy!r}; choose one of {', '.join(SELECT_STRATEGIES)}"
        )
    outputs = tower(pixel_values=pixel_values, output_hidden_states=True, return_dict=True)
    # hidden_states: (embeddings, layer_1, ..., layer_L), each [B, 1 + P, C] with a CLS token, else [B, P, C].
    features = outputs.hidden_states[layer]
    if strategy == "default" and tower_has_cls_token(tower.config):
        features = features[:, 1:]  # [B, P, C]
    return features


__all__ = [
    "SELECT_STRATEGIES",
    "VISION_TOWERS",
    "build_vision_tower",
    "load_vision_tower",
    "select_image_features",
    "tower_has_cls_token",
]

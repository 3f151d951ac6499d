"""EVA-CLIP ViT-g as BLIP-2 / MiniGPT-4 build it (`eva_vit_g.pth`) -> transformers' `Blip2VisionModel` weights.

MiniGPT's tower (docs: /work/shared/reference/minigpt.md §1.1, published_models.md §1c) is EVA's
`VisionTransformer(patch 14, width 1408, depth 39, heads 1408 // 88, mlp_ratio 4.3637, qkv_bias, LayerNorm eps
1e-6)`: no layer scale (`init_values` None, so no `gamma_1/gamma_2`), no relative position bias, no final norm
or head; its output is the last block's hidden states, every token. `Blip2VisionModel` is that network (the
q/v biases become one `qkv.bias` with a zero k part, as EVA's forward builds it), so its hidden state -1 is
MiniGPT's `visual_encoder(image)`.

- The file's blocks beyond `depth` are dropped, as MiniGPT's `strict=False` load drops them (the 40-block EVA
  checkpoint loses its last block; whether LAVIS's `eva_vit_g.pth` still holds a 40th block is UNCONFIRMED,
  both are accepted and the dropped keys are reported).
- A different input size resizes the patch position embeddings bicubically (align_corners False) on their
  square grid, in float32, the CLS position kept: MiniGPT's `interpolate_pos_embed` (16x16 -> 32x32 for
  MiniGPT-v2's 448 px).
- `post_layernorm` receives `ln_vision` (so the tower alone is BLIP-2's vision model, as transformers' BLIP-2
  conversion maps it). groundlm reads hidden states before it and applies `ln_vision` with its own LayerNorm
  (eps 1e-5, torch's default, which LAVIS's `ln_vision` has; `post_layernorm` uses the tower's 1e-6).
- The head count is not in the weights: MiniGPT uses width // 88 (16 for ViT-g).
- MiniGPT runs the tower's linear and conv weights in fp16 (`vit_precision: fp16`); the import keeps the
  dtype asked for (float32 by default).
"""

from __future__ import annotations

import re

import torch
from torch.nn import functional as F
from transformers import Blip2VisionConfig

# MiniGPT's create_eva_vit_g: depth 39 (the 40-block EVA minus its last block), heads = width // 88.
EVA_DEPTH = 39
EVA_HEAD_DIM = 88
EVA_LAYER_NORM_EPS = 1e-6

# EVA block parameter -> Blip2EncoderLayer parameter (q_bias/v_bias are folded into qkv.bias separately).
_BLOCK_NAMES = {
    "norm1.weight": "layer_norm1.weight",
    "norm1.bias": "layer_norm1.bias",
    "norm2.weight": "layer_norm2.weight",
    "norm2.bias": "layer_norm2.bias",
    "attn.qkv.weight": "self_attn.qkv.weight",
    "attn.proj.weight": "self_attn.projection.weight",
    "attn.proj.bias": "self_attn.projection.bias",
    "mlp.fc1.weight": "mlp.fc1.weight",
    "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight",
    "mlp.fc2.bias": "mlp.fc2.bias",
}
_TOP_NAMES = {
    "cls_token": "embeddings.class_embedding",
    "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
    "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
}
_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")


def interpolate_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize a [1, 1 + g*g, C] position embedding to [1, 1 + grid*grid, C]: the CLS row is kept, the patch rows
    are resized bicubically (align_corners False) on their g x g grid in float32, then cast back."""
    num_patches = pos_embed.shape[1] - 1
    old = round(num_patches**0.5)
    if old * old != num_patches:
        raise ValueError(f"pos_embed has {num_patches} patch positions, not a square grid")
    if old == grid:
        return pos_embed
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:].float()
    dim = patches.shape[-1]
    patches = patches.reshape(1, old, old, dim).permute(0, 3, 1, 2)  # [1, C, g, g]
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, dim)  # row-major, as the tower's patches
    return torch.cat([cls, patches.to(pos_embed.dtype)], dim=1)


def eva_vision_config(
    weights: dict[str, torch.Tensor], *, image_size: int, depth: int = EVA_DEPTH, heads: int | None = None
) -> Blip2VisionConfig:
    """The `Blip2VisionConfig` of an EVA state dict (unprefixed names), its sizes read from the tensors."""
    for name in ("cls_token", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight"):
        if name not in weights:
            raise ValueError(
                f"the EVA weights have no {name!r}; is this an EVA ViT (eva_vit_g.pth) state dict?"
            )
    width = weights["cls_token"].shape[-1]
    patch = weights["patch_embed.proj.weight"].shape[-1]
    if heads is None:
        if width % EVA_HEAD_DIM:
            raise ValueError(
                f"EVA width {width} is not a multiple of {EVA_HEAD_DIM}; pass the head count (vision_heads)"
            )
        heads = width // EVA_HEAD_DIM
    if image_size % patch:
        raise ValueError(f"image_size {image_size} is not a multiple of the EVA patch size {patch}")
    return Blip2VisionConfig(
        hidden_size=width,
        intermediate_size=weights["blocks.0.mlp.fc1.weight"].shape[0],
        num_hidden_layers=depth,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch,
        hidden_act="gelu",  # nn.GELU, exact
        layer_norm_eps=EVA_LAYER_NORM_EPS,
        qkv_bias=True,
    )


def eva_to_blip2_vision(
    weights: dict[str, torch.Tensor], config: Blip2VisionConfig, ln_vision: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Map EVA names (unprefixed) onto `Blip2VisionModel`'s state dict for `config`.

    `ln_vision` ({"weight", "bias"}) becomes `post_layernorm`. Returns (state dict, the file's names not used,
    the names the model needs that the file lacks): blocks at or beyond `config.num_hidden_layers` are unused,
    as anything else not in EVA's layout.
    """
    state: dict[str, torch.Tensor] = {}
    unused: list[str] = []
    biases: dict[int, dict[str, torch.Tensor]] = {}
    grid = config.image_size // config.patch_size
    for name, tensor in weights.items():
        block = _BLOCK.fullmatch(name)
        if name in _TOP_NAMES:
            state[_TOP_NAMES[name]] = tensor
        elif name == "pos_embed":
            state["embeddings.position_embedding"] = interpolate_pos_embed(tensor, grid)
        elif block and int(block[1]) < config.num_hidden_layers and block[2] in _BLOCK_NAMES:
            state[f"encoder.layers.{block[1]}.{_BLOCK_NAMES[block[2]]}"] = tensor
        elif (
            block and int(block[1]) < config.num_hidden_layers and block[2] in ("attn.q_bias", "attn.v_bias")
        ):
            biases.setdefault(int(block[1]), {})[block[2]] = tensor
        else:
            unused.append(name)
    for index, pair in sorted(biases.items()):
        if len(pair) == 2:  # [3C]: q bias, no k bias, v bias, as EVA's Attention.forward concatenates them
            q, v = pair["attn.q_bias"], pair["attn.v_bias"]
            state[f"encoder.layers.{index}.self_attn.qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])
    state["post_layernorm.weight"] = ln_vision[
        "weight"
    ].clone()  # its own storage: ln_vision is used elsewhere too
    state["post_layernorm.bias"] = ln_vision["bias"].clone()
    missing = [n for n in _expected_names(config) if n not in state]
    return state, unused, missing


def _expected_names(config: Blip2VisionConfig) -> list[str]:
    names = [
        *_TOP_NAMES.values(),
        "embeddings.position_embedding",
        "post_layernorm.weight",
        "post_layernorm.bias",
    ]
    for i in range(config.num_hidden_layers):
        names += [f"encoder.layers.{i}.{n}" for n in (*_BLOCK_NAMES.values(), "self_attn.qkv.bias")]
    return names


__all__ = ["EVA_DEPTH", "eva_to_blip2_vision", "eva_vision_config", "interpolate_pos_embed"]

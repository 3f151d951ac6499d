"""The SAM mask decoder: transformers' `SamModel` prompted as NExT-Chat prompts SAM (its stage 3).

At each trigger (`<at>`), NExT-Chat turns the trigger's hidden state into SAM's sparse prompt
(its segmentation model; docs/published-systems.md):

- `seg_prompt_mlp` (Linear(D, D) → ReLU → Linear(D, 4 × 256)) gives 4 prompt tokens of SAM's prompt width;
- the decoded box, `pred_locs * 1024` (xyxy of SAM's 1024-pixel input), is SAM's box prompt (2 corner tokens);
- the sparse prompt is the 4 tokens followed by the 2 corners, the dense prompt SAM's "no mask" embedding, and
  the mask decoder runs with `multimask_output=False` (one mask per trigger).

Here `prompt` is that MLP and `sam` a transformers `SamModel`; `SAM_RENAMES` maps the original SAM names
(`image_encoder.*`, `prompt_encoder.*`, `mask_decoder.*`, as segment-anything names them and NExT-Chat saves them under `sam.model.`) onto it.

SAM's image: NExT-Chat gives SAM the original image resized (longest side 1024) and zero-padded to a centred
square after SAM's normalisation. groundlm's decode hook hands every mask decoder the model's own input (the
padded square at the tower's resolution), so this module undoes that input's normalisation
(`sam_pixel_mean/std` of the location-head settings), resizes it to SAM's size and applies SAM's normalisation.
Same frame geometry, but SAM sees the tower's resolution upsampled and the processor's padding colour.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SamConfig, SamModel

# SAM's own input normalisation (0–255 pixel scale), as segment-anything's `Sam.pixel_mean/std`.
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)

# original SAM name (without `sam.model.`) → transformers SamModel name; `{n}` stands for a layer index.
# The MLPs (`output_hypernetworks_mlps.k`, `iou_prediction_head`) are renamed by `_mlp_layer` instead.
SAM_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^image_encoder\.patch_embed\.proj\.", "vision_encoder.patch_embed.projection."),
    (r"^image_encoder\.pos_embed$", "vision_encoder.pos_embed"),
    (r"^image_encoder\.blocks\.(\d+)\.norm1\.", r"vision_encoder.layers.\1.layer_norm1."),
    (r"^image_encoder\.blocks\.(\d+)\.norm2\.", r"vision_encoder.layers.\1.layer_norm2."),
    (r"^image_encoder\.blocks\.(\d+)\.attn\.(qkv|proj)\.", r"vision_encoder.layers.\1.attn.\2."),
    (r"^image_encoder\.blocks\.(\d+)\.attn\.(rel_pos_[hw])$", r"vision_encoder.layers.\1.attn.\2"),
    (r"^image_encoder\.blocks\.(\d+)\.mlp\.(lin[12])\.", r"vision_encoder.layers.\1.mlp.\2."),
    (r"^image_encoder\.neck\.0\.", "vision_encoder.neck.conv1."),
    (r"^image_encoder\.neck\.1\.", "vision_encoder.neck.layer_norm1."),
    (r"^image_encoder\.neck\.2\.", "vision_encoder.neck.conv2."),
    (r"^image_encoder\.neck\.3\.", "vision_encoder.neck.layer_norm2."),
    (r"^prompt_encoder\.pe_layer\.positional_encoding_gaussian_matrix$", "shared_image_embedding.positional_embedding"),
    (r"^prompt_encoder\.point_embeddings\.(\d+)\.weight$", r"prompt_encoder.point_embed.\1.weight"),
    (r"^prompt_encoder\.(not_a_point_embed|no_mask_embed)\.weight$", r"prompt_encoder.\1.weight"),
    (r"^prompt_encoder\.mask_downscaling\.0\.", "prompt_encoder.mask_embed.conv1."),
    (r"^prompt_encoder\.mask_downscaling\.1\.", "prompt_encoder.mask_embed.layer_norm1."),
    (r"^prompt_encoder\.mask_downscaling\.3\.", "prompt_encoder.mask_embed.conv2."),
    (r"^prompt_encoder\.mask_downscaling\.4\.", "prompt_encoder.mask_embed.layer_norm2."),
    (r"^prompt_encoder\.mask_downscaling\.6\.", "prompt_encoder.mask_embed.conv3."),
    (r"^mask_decoder\.(iou_token|mask_tokens)\.weight$", r"mask_decoder.\1.weight"),
    (
        r"^mask_decoder\.transformer\.layers\.(\d+)\.(self_attn|cross_attn_token_to_image|cross_attn_image_to_token)\.",
        r"mask_decoder.transformer.layers.\1.\2.",
    ),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.norm([1-4])\.", r"mask_decoder.transformer.layers.\1.layer_norm\2."),
    (r"^mask_decoder\.transformer\.layers\.(\d+)\.mlp\.(lin[12])\.", r"mask_decoder.transformer.layers.\1.mlp.\2."),
    (r"^mask_decoder\.transformer\.final_attn_token_to_image\.", "mask_decoder.transformer.final_attn_token_to_image."),
    (r"^mask_decoder\.transformer\.norm_final_attn\.", "mask_decoder.transformer.layer_norm_final_attn."),
    (r"^mask_decoder\.output_upscaling\.0\.", "mask_decoder.upscale_conv1."),
    (r"^mask_decoder\.output_upscaling\.1\.", "mask_decoder.upscale_layer_norm."),
    (r"^mask_decoder\.output_upscaling\.3\.", "mask_decoder.upscale_conv2."),
)
_COMPILED = tuple((re.compile(a), b) for a, b in SAM_RENAMES)
# SAM's MLP class keeps its layers in one list; transformers' SamFeedForward splits proj_in / layers / proj_out.
_MLP = re.compile(r"^mask_decoder\.(output_hypernetworks_mlps\.\d+|iou_prediction_head)\.layers\.(\d+)\.(weight|bias)$")


def _mlp_depths(keys) -> dict[str, int]:
    """Layers per original SAM MLP (`mask_decoder.<mlp>` → count), read off the keys."""
    depth: dict[str, int] = {}
    for key in keys:
        m = _MLP.match(key)
        if m:
            depth[m.group(1)] = max(depth.get(m.group(1), 0), int(m.group(2)) + 1)
    return depth


def sam_key(key: str, mlp_depths: Mapping[str, int]) -> str | None:
    """The transformers `SamModel` name of an original SAM weight (`key` without `sam.model.`), or None."""
    m = _MLP.match(key)
    if m:
        mlp, index, kind = m.group(1), int(m.group(2)), m.group(3)
        last = mlp_depths[mlp] - 1
        where = "proj_in" if index == 0 else "proj_out" if index == last else f"layers.{index - 1}"
        return f"mask_decoder.{mlp}.{where}.{kind}"
    for pattern, target in _COMPILED:
        if pattern.search(key):
            return pattern.sub(target, key)
    return None


def sam_state_dict(original: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Original SAM tensors (names without `sam.model.`) → (SamModel state dict, names that map nowhere)."""
    depths = _mlp_depths(original)
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in original.items():
        new = sam_key(key, depths)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    if "shared_image_embedding.positional_embedding" in out:  # tied in SamModel: the prompt encoder's copy
        out["prompt_encoder.shared_embedding.positional_embedding"] = out["shared_image_embedding.positional_embedding"]
    return out, unknown


def infer_sam_config(original: Mapping[str, torch.Tensor], *, decoder_heads: int = 8) -> SamConfig:
    """The `SamConfig` of original SAM tensors (names without `sam.model.`), from their shapes.

    Everything but the mask decoder's head count is in the shapes: the image encoder's heads from the
    relative-position tables (width of one head), its window size and global-attention blocks from their lengths
    (a global block's table spans the whole grid). SAM ViT-B/L/H all use 8 decoder heads (`decoder_heads`).
    """
    def shape(key: str) -> tuple[int, ...]:
        if key not in original:
            raise ValueError(f"the SAM weights have no {key!r}; cannot tell SAM's configuration")
        return tuple(original[key].shape)

    hidden, _, patch, _ = shape("image_encoder.patch_embed.proj.weight")
    grid = shape("image_encoder.pos_embed")[1]
    blocks = sorted({int(k.split(".")[2]) for k in original if k.startswith("image_encoder.blocks.")})
    rel = [shape(f"image_encoder.blocks.{i}.attn.rel_pos_h") for i in blocks]
    head_dim = rel[0][1]
    global_blocks = [i for i, r in zip(blocks, rel, strict=True) if r[0] == 2 * grid - 1]
    windowed = [r[0] for r in rel if r[0] != 2 * grid - 1]
    window = (windowed[0] + 1) // 2 if windowed else 0
    prompt_hidden = shape("mask_decoder.iou_token.weight")[1]
    layers = sorted({int(k.split(".")[3]) for k in original if k.startswith("mask_decoder.transformer.layers.")})
    depths = _mlp_depths(original)
    vision = {
        "hidden_size": hidden, "num_hidden_layers": len(blocks), "num_attention_heads": hidden // head_dim,
        "image_size": grid * patch, "patch_size": patch, "output_channels": shape("image_encoder.neck.0.weight")[0],
        "window_size": window, "global_attn_indexes": global_blocks,
        "mlp_dim": shape("image_encoder.blocks.0.mlp.lin1.weight")[0], "num_pos_feats": prompt_hidden // 2,
    }
    prompt = {
        "hidden_size": prompt_hidden, "image_size": grid * patch, "patch_size": patch,
        "mask_input_channels": shape("prompt_encoder.mask_downscaling.3.weight")[0],
    }
    decoder = {
        "hidden_size": prompt_hidden, "num_hidden_layers": len(layers), "num_attention_heads": decoder_heads,
        "mlp_dim": shape("mask_decoder.transformer.layers.0.mlp.lin1.weight")[0],
        "attention_downsample_rate": prompt_hidden
        // shape("mask_decoder.transformer.layers.0.cross_attn_token_to_image.q_proj.weight")[0],
        "num_multimask_outputs": shape("mask_decoder.mask_tokens.weight")[0] - 1,
        "iou_head_depth": depths.get("iou_prediction_head", 3),
        "iou_head_hidden_dim": shape("mask_decoder.iou_prediction_head.layers.0.weight")[0],
    }
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)


class SamMaskDecoder(nn.Module):
    """NExT-Chat's prompt MLP + transformers' `SamModel`: trigger hidden states and boxes → mask logits."""

    def __init__(self, text_hidden: int, sam: SamModel, *, num_prompt_tokens: int = 4,
                 input_mean=None, input_std=None):
        super().__init__()
        self.sam = sam
        # SamModel ties the prompt encoder's positional code to `shared_image_embedding`; nested in another model
        # that tie is not redone at load time, so share the module itself (one tensor, saved once).
        sam.prompt_encoder.shared_embedding = sam.shared_image_embedding
        self.num_prompt_tokens = num_prompt_tokens
        self.dim = sam.config.prompt_encoder_config.hidden_size
        self.prompt = nn.Sequential(
            nn.Linear(text_hidden, text_hidden), nn.ReLU(), nn.Linear(text_hidden, num_prompt_tokens * self.dim)
        )
        from ..images import CLIP_MEAN, CLIP_STD

        # constants, not weights: kept out of the state dict
        self.register_buffer("input_mean", torch.tensor(input_mean or CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(input_std or CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("sam_mean", torch.tensor(SAM_PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("sam_std", torch.tensor(SAM_PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_settings(cls, settings, text_hidden: int) -> SamMaskDecoder:
        """From `LocationHeadConfig` fields: `sam_path` (a local transformers SAM directory, weights loaded) or
        `sam_config` (a SamConfig dict; the weights come with the model's checkpoint)."""
        if settings.sam_path:
            sam = SamModel.from_pretrained(settings.sam_path, local_files_only=True)
        elif settings.sam_config:
            sam = SamModel(SamConfig(**settings.sam_config))
        else:
            raise ValueError("location_head.mask_decoder 'sam' needs sam_path (a local SAM directory) or sam_config")
        return cls(text_hidden, sam, num_prompt_tokens=settings.sam_prompt_tokens,
                   input_mean=settings.sam_pixel_mean, input_std=settings.sam_pixel_std)

    @property
    def image_size(self) -> int:
        return int(self.sam.config.prompt_encoder_config.image_size)

    def sam_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The model's input [B, 3, S, S] → SAM's input [B, 3, 1024, 1024] (same frame, SAM's normalisation)."""
        rgb = (pixel_values.float() * self.input_std + self.input_mean) * 255.0  # [B, 3, S, S], 0–255
        size = self.image_size
        rgb = F.interpolate(rgb, size=(size, size), mode="bilinear", align_corners=False)
        return (rgb - self.sam_mean) / self.sam_std

    def masks(self, image_embeddings: torch.Tensor, hidden: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """SAM's low-resolution mask logits [N, 4g, 4g] for image embeddings [N, C, g, g] (one per prompt),
        trigger hidden states [N, D] and boxes [N, 4] (xyxy in [0, 1] of the frame)."""
        n = hidden.shape[0]
        dtype = self.prompt[0].weight.dtype
        tokens = self.prompt(hidden.to(dtype)).view(n, 1, self.num_prompt_tokens, self.dim)  # [N, 1, K, C]
        sam_boxes = boxes.to(dtype).view(n, 1, 4) * self.image_size  # NExT-Chat: pred_locs * 1024
        corners, dense = self.sam.prompt_encoder(
            input_points=None, input_labels=None, input_boxes=sam_boxes, input_masks=None
        )  # [N, 1, 2, C], [N, C, g, g]
        sparse = torch.cat([tokens, corners.to(dtype)], dim=2)  # [N, 1, K + 2, C]
        positions = self.sam.get_image_wide_positional_embeddings().repeat(n, 1, 1, 1)  # [N, C, g, g]
        low_res, _ = self.sam.mask_decoder(
            image_embeddings=image_embeddings, image_positional_embeddings=positions,
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=False,
        )  # [N, 1, 1, 4g, 4g]
        return low_res[:, 0, 0]

    def predict(
        self, model: nn.Module, pixel_values: torch.Tensor | None, hidden: torch.Tensor, rows: torch.Tensor,
        boxes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mask logits [N, S, S] in the model's input frame; `rows` [N] the image of each trigger, `boxes` [N, 4]
        the decoded boxes (the box prompt)."""
        if pixel_values is None or boxes is None:
            raise ValueError("the SAM mask decoder needs the images (pixel_values) and the decoded boxes")
        images = self.sam_pixels(pixel_values.to(self.sam_mean.device))
        embeddings = self.sam.get_image_embeddings(images.to(self.prompt[0].weight.dtype))  # [B, C, g, g]
        logits = self.masks(embeddings[rows.to(embeddings.device)], hidden, boxes)  # [N, 4g, 4g]
        size = pixel_values.shape[-1]
        return F.interpolate(logits[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]


__all__ = [
    "SAM_PIXEL_MEAN",
    "SAM_PIXEL_STD",
    "SAM_RENAMES",
    "SamMaskDecoder",
    "infer_sam_config",
    "sam_key",
    "sam_state_dict",
]

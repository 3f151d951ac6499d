"""A small SAM-style mask decoder for referring segmentation, conditioned on the trigger's hidden state.

NExT-Chat (stage 3) turns the `<at>` hidden state into SAM prompt tokens (`seg_prompt_mlp`: Linear(D, D) → ReLU
→ Linear(D, 4 × 256)) and runs SAM ViT-H's mask decoder. groundlm trains a miniature of that decoder from
scratch on ShapesWorld:

1. prompt: an MLP of the same shape makes `num_prompt_tokens` tokens of width `dim` from the hidden state;
   a learned output ("mask") token is put in front of them, as in SAM.
2. image: the vision tower's patch features (the layer the connector reads, CLS dropped) projected to `dim`,
   plus a learned position embedding per patch, a `g × g` grid.
3. one two-way block, as SAM's: tokens self-attend, tokens attend to the image, an MLP, the image attends to
   the tokens.
4. the image grid is upsampled ×4 by two transposed convolutions; the output token through an MLP gives
   per-channel weights (SAM's hypernetwork); their dot product is the mask logit map `[4g, 4g]`, resized to the
   model's input frame (S × S).

Loss: Dice + binary cross-entropy per mask (`mask_loss_terms`), weights in `LocationHeadConfig`. (NExT-Chat's
SAM loss is 20 × focal + Dice + IoU-prediction MSE; a decoder trained from scratch on exact masks does not need
the focal re-weighting or the IoU head.) Every mask decoder answers the same call,
`decoder.predict(model, pixel_values, hidden, rows, boxes) -> logits [N, S, S]` in the model's input frame
(modeling/location_heads.py `MASK_DECODERS`); this one reads the vision tower's patches and ignores the boxes,
the SAM one (modeling/sam_decoder.py) runs its own image encoder and takes the boxes as SAM's box prompt.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .vision import select_image_features


class MaskDecoder(nn.Module):
    """Prompt hidden states + patch features → mask logits (SAM's mask decoder in miniature)."""

    def __init__(self, text_hidden: int, vision_hidden: int, dim: int = 64, num_prompt_tokens: int = 4,
                 heads: int = 4, max_patches: int = 1024):
        super().__init__()
        self.dim, self.num_prompt_tokens = dim, num_prompt_tokens
        self.prompt = nn.Sequential(
            nn.Linear(text_hidden, text_hidden), nn.ReLU(), nn.Linear(text_hidden, num_prompt_tokens * dim)
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.image_proj = nn.Linear(vision_hidden, dim)
        self.image_pos = nn.Parameter(torch.zeros(1, max_patches, dim))
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.token_to_image = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.image_to_token = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4))
        self.upscale = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), nn.GELU(), nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2)
        )
        self.hyper = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim // 4))

    def forward(self, prompt_hidden: torch.Tensor, patch_features: torch.Tensor) -> torch.Tensor:
        """prompt_hidden [N, D], patch_features [N, P, C] (P a square) → mask logits [N, 4g, 4g], g = √P."""
        n, p, _ = patch_features.shape
        g = math.isqrt(p)
        if g * g != p or p > self.image_pos.shape[1]:
            raise ValueError(f"the mask decoder needs a square grid of at most {self.image_pos.shape[1]} patches")
        dtype = self.image_proj.weight.dtype
        prompts = self.prompt(prompt_hidden.to(dtype)).view(n, self.num_prompt_tokens, self.dim)  # [N, K, d]
        tokens = torch.cat([self.mask_token.expand(n, -1, -1), prompts], 1)  # [N, 1 + K, d]
        image = self.image_proj(patch_features.to(dtype)) + self.image_pos[:, :p]  # [N, P, d]
        tokens = self.norms[0](tokens + self.self_attn(tokens, tokens, tokens, need_weights=False)[0])
        tokens = self.norms[1](tokens + self.token_to_image(tokens, image, image, need_weights=False)[0])
        tokens = self.norms[2](tokens + self.mlp(tokens))
        image = self.norms[3](image + self.image_to_token(image, tokens, tokens, need_weights=False)[0])
        grid = image.transpose(1, 2).reshape(n, self.dim, g, g)  # [N, d, g, g], patches row-major
        up = self.upscale(grid)  # [N, d/4, 4g, 4g]
        weights = self.hyper(tokens[:, 0])  # [N, d/4]: the mask token's hypernetwork output
        return torch.einsum("nc,nchw->nhw", weights, up)  # [N, 4g, 4g]

    def predict(
        self, model: nn.Module, pixel_values: torch.Tensor | None, hidden: torch.Tensor, rows: torch.Tensor,
        boxes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Mask logits [N, S, S] in the model's input frame (`predict_masks`); `boxes` are not used."""
        return predict_masks(self, model, pixel_values, hidden, rows)


def predict_masks(
    decoder: MaskDecoder, model: nn.Module, pixel_values: torch.Tensor | None, hidden: torch.Tensor,
    rows: torch.Tensor,
) -> torch.Tensor:
    """Mask logits [N, S, S] in the model's input frame for trigger hidden states `hidden` [N, D].

    `rows` [N] is the sample of each trigger; every sample must have one image (`pixel_values` [B, 3, S, S]).
    """
    if pixel_values is None:
        raise ValueError("mask prediction needs the images (pixel_values)")
    config = model.config
    features = select_image_features(
        model.vision_tower, pixel_values.to(model.vision_tower.dtype), config.vision_feature_layer, "default"
    )  # [B, P, C]
    logits = decoder(hidden, features[rows.to(features.device)])  # [N, 4g, 4g]
    size = pixel_values.shape[-1]
    return F.interpolate(logits[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def mask_loss_terms(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mask Dice loss and mean BCE, each [N], for logits and {0, 1} targets [N, S, S]."""
    targets = targets.to(logits.dtype)
    probs = logits.sigmoid().flatten(1)  # [N, S*S]
    flat = targets.flatten(1)
    # +1 smoothing (as SAM / DETR's dice): an empty target and an empty prediction score 0 loss.
    dice = 1.0 - (2 * (probs * flat).sum(1) + 1.0) / (probs.sum(1) + flat.sum(1) + 1.0)
    bce = F.binary_cross_entropy_with_logits(logits.flatten(1), flat, reduction="none").mean(1)
    return dice, bce


__all__ = ["MaskDecoder", "mask_loss_terms", "predict_masks"]

"""The `dense_patches` stage: pretrain the vision tower on what lies under every patch (our CLIP/EVA stage).

Published grounded VLMs start from a pretrained, frozen tower (EVA-CLIP for MiniGPT-v2, CLIP for LLaVA). A
model trained from scratch has none, and a language-model loss alone barely trains one (its gradients reach
the tower 4-30x weaker than the language model's). This objective trains the tower directly, on any data with
boxes or masks: every patch token learns, through a small training-only head,

- whether it belongs to an object (`fg`, binary cross-entropy),
- the words of that object's label (multi-hot over the tokenizer's vocabulary, binary cross-entropy: for
  ShapesWorld, its size, colour and shape; for COCO, its category words),
- that object's box in the model's input frame (L1, in fractions of the frame).

A patch belongs to the object covering the largest share of its pixels, if that share is at least
`min_cover` (default 0.1): with masks the visible pixels count; with boxes only, each box's area (a smaller box
wins an overlap, as it usually lies in front). The threshold is low on purpose: with "the majority of the
patch", a small object (9-11 px under 8-px patches) often owns no patch at all, and its tokens learn that they
show background. Regressing the owner's box makes every visual token carry "which object am I part of, and
where is it", which is what referring and detection then read out.

The head (`DensePatchHead`) is not part of the model: it is built when the stage starts, trained with the
tower, saved in the stage's checkpoints (`dense_head.*`, for exact resume), and dropped when the stage ends,
so `OUT/model` holds only the tower, connector and language model. A later stage freezes the tower by
leaving `vision_tower` out of its `train:` map. The stage's objective (`DenseObjective`, train/objectives.py)
puts these pieces together for the loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..geometry import Frame
from ..masks import decode_mask
from ..modeling.vision import select_image_features
from .recipe import DenseSpec

HEAD = "dense_head"  # parameter prefix of the head in checkpoints


@dataclass
class DenseObject:
    """An object as the dense objective needs it: a box in original pixels, its label, and an optional mask.

    `mask` is a bool array [H, W] of the original image, or a record's RLE / polygon mask (decoded here).
    """

    box: Sequence[float]
    label: str | None = None
    mask: np.ndarray | dict | list | None = None


class DensePatchHead(nn.Module):
    """LayerNorm, then one Linear per patch token: [B, P, C] -> label-word logits [B, P, V], fg [B, P], box [B, P, 4]."""

    def __init__(self, vision_hidden: int, vocab_size: int):
        super().__init__()
        self.norm = nn.LayerNorm(vision_hidden)
        self.proj = nn.Linear(vision_hidden, vocab_size + 5)
        self.vocab_size = vocab_size

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Label-word logits [B, P, V], foreground logit [B, P], box [B, P, 4] (sigmoid: fractions)."""
        out = self.proj(self.norm(features))  # [B, P, V + 5]
        v = self.vocab_size
        return out[..., :v], out[..., v], out[..., v + 1 :].sigmoid()


class DensePatchModel(nn.Module):
    """The tower and the head as one module, so the stage's strategy (autocast, DDP) wraps exactly what trains.

    Attribute names match the full model's (`vision_tower`), so parameter names in checkpoints are the same.
    """

    def __init__(self, vision_tower: nn.Module, head: DensePatchHead, feature_layer: int):
        super().__init__()
        self.vision_tower = vision_tower
        self.dense_head = head
        self.feature_layer = feature_layer

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Pixels [B, 3, S, S] -> the head's outputs for every patch token (CLS dropped)."""
        tower = self.vision_tower
        features = select_image_features(tower, pixel_values.to(tower.dtype), self.feature_layer, "default")
        return self.dense_head(features)  # [B, P, C] -> ([B, P, V], [B, P], [B, P, 4])


def build_dense_model(model: nn.Module, spec: DenseSpec, vocab_size: int, seed: int) -> DensePatchModel:
    """A fresh head (seeded) joined to `model`'s tower, reading the layer the connector reads (or `spec`'s)."""
    torch.manual_seed(seed)
    head = DensePatchHead(model.config.vision_config.hidden_size, vocab_size)
    layer = spec.feature_layer if spec.feature_layer is not None else model.config.vision_feature_layer
    return DensePatchModel(model.vision_tower, head, layer)


# ------------------------------------------------------------------------------------------------------------
# Targets


def _frame_mask(mask: np.ndarray, frame: Frame, size: int) -> np.ndarray:
    """An original-image mask [H, W] mapped into the model's square input [S, S] (resize or pad, as the image)."""
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    if frame.mode == "pad":
        canvas = Image.new("L", (frame.side, frame.side), 0)
        canvas.paste(image, frame.offset)
        image = canvas
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(image) >= 128


class DenseTargets:
    """Per-patch targets of encoded samples whose `meta["objects"]` holds their `DenseObject`s.

    Args:
        tokenizer: labels become multi-hot targets over its vocabulary (their token ids).
        image_size: the model's square input side S.
        patch_size: the tower's patch side; the grid is (S / patch)^2 patches, row-major like the tower.
        min_cover: the least share of a patch an object must cover to own it.
    """

    def __init__(self, tokenizer, image_size: int, patch_size: int, min_cover: float = 0.1):
        self.tokenizer = tokenizer
        self.min_cover = min_cover
        self.size = image_size
        self.patch = patch_size
        self.grid = image_size // patch_size
        self.vocab_size = len(tokenizer)
        self._words: dict[str, list[int]] = {}

    def _label_ids(self, label: str | None) -> list[int]:
        if not label:
            return []
        if label not in self._words:
            self._words[label] = sorted(set(self.tokenizer(label, add_special_tokens=False)["input_ids"]))
        return self._words[label]

    def coverage(self, obj: DenseObject, frame: Frame) -> np.ndarray:
        """The share of each patch's pixels the object covers, [G, G] in [0, 1]."""
        n, g, p = self.size, self.grid, self.patch
        if obj.mask is not None:
            mask = obj.mask
            if not isinstance(mask, np.ndarray):
                mask = decode_mask(mask, frame.height, frame.width)
            if mask.shape != (n, n) or frame.mode == "pad" or (frame.width, frame.height) != (n, n):
                mask = _frame_mask(mask, frame, n)
            return mask.reshape(g, p, g, p).mean(axis=(1, 3))  # [G, G]
        # Box only: the overlap of the box with each patch, per axis, in pixels of the input frame.
        x1, y1, x2, y2 = (v * n for v in frame.normalize(obj.box))
        edges = np.arange(g + 1) * p  # patch edges [G + 1]
        ox = np.clip(np.minimum(edges[1:], x2) - np.maximum(edges[:-1], x1), 0, None) / p  # [G]
        oy = np.clip(np.minimum(edges[1:], y2) - np.maximum(edges[:-1], y1), 0, None) / p  # [G]
        return oy[:, None] * ox[None, :]  # [G, G]

    def sample(self, objects: Sequence[DenseObject], frame: Frame) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One sample's targets: label words [P, V] (multi-hot), foreground [P], owner's box [P, 4] (fractions)."""
        g = self.grid
        cover = np.zeros((len(objects), g * g), dtype=np.float32)  # [K, P]
        for k, obj in enumerate(objects):
            cover[k] = self.coverage(obj, frame).reshape(-1)
        owner = np.full(g * g, -1)  # [P], -1: background
        if objects:
            rank = cover.copy()
            if all(o.mask is None for o in objects):
                # Boxes only: a smaller box wins where boxes overlap (it usually lies in front).
                areas = np.asarray([max(1e-6, (o.box[2] - o.box[0]) * (o.box[3] - o.box[1])) for o in objects])
                rank += (1e-3 / areas.astype(np.float32))[:, None] * (cover > 0)
            best = rank.argmax(0)  # [P]
            owner = np.where(cover[best, np.arange(g * g)] >= self.min_cover, best, -1)
        words = torch.zeros(g * g, self.vocab_size)
        boxes = torch.zeros(g * g, 4)
        for k, obj in enumerate(objects):
            at = torch.from_numpy(np.nonzero(owner == k)[0])
            if len(at) == 0:
                continue
            ids = self._label_ids(obj.label)
            if ids:
                words[at.unsqueeze(1), torch.tensor(ids).unsqueeze(0)] = 1.0
            boxes[at] = torch.tensor(frame.normalize(obj.box), dtype=torch.float32).clamp(0, 1)
        fg = torch.from_numpy(owner >= 0).float()
        return words, fg, boxes

    def batch(self, samples: Sequence) -> dict[str, torch.Tensor]:
        """Stacked targets of encoded samples: `dense_words` [B, P, V], `dense_fg` [B, P], `dense_boxes` [B, P, 4]."""
        parts = []
        for s in samples:
            if s.frame is None or "objects" not in s.meta:
                raise ValueError(
                    f"{s.meta.get('id', 'a sample')}: the dense_patches objective needs an image and its objects"
                )
            parts.append(self.sample(s.meta["objects"], s.frame))
        words, fg, boxes = (torch.stack(t) for t in zip(*parts, strict=True))
        return {"dense_words": words, "dense_fg": fg, "dense_boxes": boxes}


def dense_losses(model: nn.Module, batch: dict[str, torch.Tensor], spec: DenseSpec) -> torch.Tensor:
    """Summed loss per sample, [B]: over all patches, fg BCE; over object patches, label-word BCE and box L1."""
    words_logits, fg_logits, boxes = model(batch["pixel_values"])
    words_logits, fg_logits, boxes = words_logits.float(), fg_logits.float(), boxes.float()
    fg = batch["dense_fg"]  # [B, P]
    fg_loss = F.binary_cross_entropy_with_logits(fg_logits, fg, reduction="none")  # [B, P]
    word_loss = F.binary_cross_entropy_with_logits(words_logits, batch["dense_words"], reduction="none").sum(-1)
    box_loss = (boxes - batch["dense_boxes"]).abs().sum(-1)  # [B, P], L1 over the 4 coordinates
    per_patch = fg_loss + fg * (spec.label_weight * word_loss + spec.box_weight * box_loss)
    return per_patch.sum(1)  # [B]


__all__ = [
    "HEAD",
    "DenseObject",
    "DensePatchHead",
    "DensePatchModel",
    "DenseTargets",
    "build_dense_model",
    "dense_losses",
]

"""Fine-tuning a family checkpoint (Qwen2.5-VL, PaliGemma) on groundlm records, with LoRA or in full.

Records train any family unchanged: `data/dataset.RecordDataset` encodes each record through the family's
processor (`FamilyProcessor.transform` and `encode`), so every `<box:i>` slot is written in the family's own
location format in its frame (Qwen2.5-VL's JSON in input pixels, PaliGemma's `<loc>` tokens y-first) and the
labels cover the answer and its end token only. The family's `collate` adds what its model needs:
PaliGemma's `token_type_ids` (0 on the prefix, which attends both ways; 1 on the answer, causal: the prefix-LM
of the paper), Qwen2.5-VL's `image_grid_thw`. The loss is groundlm's next-token cross-entropy on the labelled
tokens (`train/objectives.token_losses`).

`with_lora` puts peft adapters (`train/params.lora_config`) on the language model's projections only (the
vision towers have modules of the same names). `train_steps` is a minimal AdamW loop for dry runs; wiring
these families into `groundlm train` recipes (stages, checkpoints, strategies) is not done yet
(docs/other-models.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..processor import Encoded
from ..train.objectives import token_losses
from ..train.params import lora_config
from ..train.recipe import LoraSpec

TRAINABLE = ("qwen2_5_vl", "paligemma")  # the families whose token layout has labels (FamilyProcessor.tokens)


def with_lora(model, spec: LoraSpec):
    """`model` with LoRA adapters on its language model's `spec.target_modules` (peft); only they train."""
    from peft import get_peft_model

    config = lora_config(spec)
    # a regex: the language model's modules only (SigLIP's attention has q_proj / v_proj too)
    config.target_modules = rf".*language_model.*\.({'|'.join(spec.target_modules)})"
    return get_peft_model(model, config)


def batch_loss(model, processor, batch: Sequence[Encoded]) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens of `batch` (right-padded, the family's inputs)."""
    inputs = processor.pad(batch, side="right")
    labels = inputs.pop("labels")
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    logits = model(**inputs, use_cache=False).logits  # [B, T, V]
    per_token = token_losses(logits, labels.to(device))  # [B, T-1], 0 where unlabelled
    return per_token.sum() / (labels[:, 1:] != -100).sum().clamp(min=1)


def train_steps(model, processor, batch: Sequence[Encoded], *, steps: int, lr: float) -> list[float]:
    """AdamW on the trainable parameters for `steps` steps on one fixed batch; the loss before each step."""
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        loss = batch_loss(model, processor, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


__all__ = ["TRAINABLE", "batch_loss", "train_steps", "with_lora"]

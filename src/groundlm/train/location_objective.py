"""The `lm` objective of a model with the embedding codec: token cross-entropy plus NExT-Chat's location losses.

The loop normalises a step by its supervised-token count (each process divides its summed loss by the global
count). The location terms are means over boxes (NExT-Chat adds them to the mean token loss), so each sample's
share of them (`location_sample_losses`, summing to the batch's weighted location total) is multiplied by the
micro-batch's token count here: after the loop's division the step loss is `mean token CE + location total`,
exactly so for one process without accumulation, and the same weighting on average otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..processor import IGNORE_INDEX

# The unwrapped model keeps the last forward's loss terms here so the loop can log them with the step.
TERMS_ATTRIBUTE = "last_location_losses"


def lm_location_losses(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Summed loss per sample, [B]: token CE over the answers plus the sample's share of the location terms."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    inputs["use_cache"] = False
    out = model(**inputs)
    targets = batch["labels"][:, 1:]  # [B, T-1]
    token = F.cross_entropy(
        out.logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    ).sum(1)  # [B]
    if out.location_sample_losses is None:
        return token
    inner = getattr(model, "module", model)  # DDP keeps the model in .module
    setattr(inner, TERMS_ATTRIBUTE, {k: float(v) for k, v in out.location_losses.items()})
    n_tokens = (targets != IGNORE_INDEX).sum().clamp(min=1)
    return token + out.location_sample_losses * n_tokens


__all__ = ["TERMS_ATTRIBUTE", "lm_location_losses"]

"""Soft targets for coordinate tokens: a near miss costs less than a far one.

With one-hot targets, predicting `<41>` for `<40>` costs as much as predicting `<90>`: the cross-entropy knows
nothing of the order of the coordinate tokens, and a model from scratch learns box coordinates slowly, falling
back on a few popular values. A stage with `coordinate_sigma: s` (in bins) replaces the one-hot target of
every coordinate token by a Gaussian over the coordinate tokens, centred on the true bin with standard
deviation s (the mass outside the coordinate tokens is zero). Pix2Seq-style text coordinates stay the
format; only the training signal changes, and the loss of a token stays a cross-entropy (one unit per token),
so the loss logs keep their meaning. s -> 0 gives back the one-hot loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def coordinate_token_strings(codec) -> list[str] | None:
    """The codec's coordinate tokens in value order, or None when its boxes are not coordinate tokens."""
    return codec.coordinate_tokens()


def coordinate_token_ids(processor) -> torch.Tensor:
    """Ids of the processor's coordinate tokens in value order, [K]; each must be one token of the vocabulary."""
    strings = coordinate_token_strings(processor.codec)
    if strings is None:
        raise ValueError(
            f"coordinate_sigma needs a text or tokens location codec, not {type(processor.codec).__name__}"
        )
    tokenizer = processor.tokenizer
    ids = tokenizer.convert_tokens_to_ids(strings)
    if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
        missing = [s for s, i in zip(strings, ids, strict=True) if i == tokenizer.unk_token_id][:3]
        raise ValueError(
            f"coordinate_sigma needs every coordinate to be one token; {missing} are not in the vocabulary"
        )
    return torch.tensor(ids, dtype=torch.long)


def soft_coordinate_losses(
    logits: torch.Tensor, targets: torch.Tensor, coordinate_ids: torch.Tensor, sigma: float, ignore_index: int
) -> torch.Tensor:
    """Cross-entropy per position, [B, T], with Gaussian targets (std `sigma` bins) at coordinate tokens.

    logits [B, T, V] and targets [B, T] are already shifted; positions whose target is `ignore_index` give 0;
    other tokens keep their one-hot target.
    """
    log_probs = F.log_softmax(logits.float(), dim=-1)  # [B, T, V]
    safe = targets.clamp_min(0)
    losses = -log_probs.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # [B, T] one-hot cross-entropy
    coordinate_ids = coordinate_ids.to(targets.device)
    # Where each target sits among the coordinate tokens (-1: not a coordinate).
    lookup = torch.full((logits.shape[-1],), -1, dtype=torch.long, device=targets.device)
    lookup[coordinate_ids] = torch.arange(len(coordinate_ids), device=targets.device)
    value = lookup[safe]  # [B, T]
    is_coordinate = (value >= 0) & (targets != ignore_index)
    if is_coordinate.any():
        k = torch.arange(len(coordinate_ids), device=targets.device, dtype=torch.float32)  # [K]
        centre = value[is_coordinate].float().unsqueeze(-1)  # [N, 1]
        weights = torch.softmax(-0.5 * ((k - centre) / sigma) ** 2, dim=-1)  # [N, K] Gaussian, sums to 1
        coordinate_log_probs = log_probs[is_coordinate][:, coordinate_ids]  # [N, K]
        losses = losses.masked_scatter(is_coordinate, -(weights * coordinate_log_probs).sum(-1))
    return losses.masked_fill(targets == ignore_index, 0.0)

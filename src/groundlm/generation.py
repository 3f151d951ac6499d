"""Decoding for the `embedding` location codec: a small explicit loop with the KV cache and trigger feedback.

transformers' `generate` picks every next token from the logits; NExT-Chat's codec needs more. When the model
has emitted the trigger `<at>`, the next forward pass (with `<at>` as input) gives the hidden state the box
decoder reads, exactly as in training (the hidden state *at* `<at>`), and the token after it is not chosen from
the logits: it is the slot `<boxes>`, whose input embedding is the box encoder's encoding of the decoded box.
What the model writes next can then depend on the box it pointed at. (NExT-Chat's own generate overwrites the
embedding of whatever token follows `<at>` and reads the box off the pass that *emitted* `<at>`; here both
follow training.)

Batches work with left padding: each row has its own trigger steps, and a row that has stopped keeps receiving
pad tokens (ignored afterwards) until every row has stopped. Greedy by default; sampling with `temperature`
and nucleus `top_p`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .location import BoxNorm


@dataclass
class Generated:
    """New token ids per row (stop token included, no padding) and the boxes decoded at its triggers, in order."""

    ids: list[list[int]] = field(default_factory=list)
    boxes: list[list[BoxNorm]] = field(default_factory=list)
    hidden: list[list[torch.Tensor]] = field(default_factory=list)  # [D] at each trigger (for the mask decoder)


def _choose(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Next token per row from logits [B, V]: argmax when temperature is 0, else nucleus sampling."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, -1)  # [B, V]
    sorted_p, order = probs.sort(-1, descending=True)
    # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
    drop = sorted_p.cumsum(-1) - sorted_p >= top_p
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    pick = torch.multinomial(sorted_p / sorted_p.sum(-1, keepdim=True), 1, generator=generator)  # [B, 1]
    return order.gather(-1, pick).squeeze(-1)


@torch.inference_mode()
def generate_with_locations(
    model,
    inputs: dict[str, torch.Tensor],
    *,
    max_new_tokens: int,
    stop_token_ids: set[int],
    pad_token_id: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> Generated:
    """Decode left-padded prompts (`input_ids`, `attention_mask`, optional `pixel_values`, `slot_boxes`).

    The model must have location heads (`location_codec="embedding"`). Returns the new ids of each row up to
    and including its stop token, and the boxes ([0, 1] of the frame) decoded at each of its triggers.
    """
    heads = model.location_heads
    if heads is None:
        raise ValueError("generate_with_locations needs a model with the embedding codec's location heads")
    trigger, slot = heads.config.trigger_token_id, heads.config.slot_token_id
    input_ids = inputs["input_ids"]  # [B, T]
    attention = inputs["attention_mask"]  # [B, T]
    rows = input_ids.shape[0]
    out = model(
        input_ids=input_ids,
        attention_mask=attention,
        pixel_values=inputs.get("pixel_values"),
        slot_boxes=inputs.get("slot_boxes"),
        use_cache=True,
        output_hidden_states=True,
    )
    cache = out.cache
    logits, hidden = out.logits[:, -1], out.hidden_states[-1][:, -1]  # [B, V], [B, D]
    last = input_ids[:, -1]  # [B] the input whose output `logits`/`hidden` are
    done = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
    stops = torch.tensor(sorted(stop_token_ids), device=input_ids.device)
    result = Generated([[] for _ in range(rows)], [[] for _ in range(rows)], [[] for _ in range(rows)])
    embed = model.get_input_embeddings()
    for _ in range(max_new_tokens):
        at_trigger = (last == trigger) & ~done  # [B]: these rows now place the slot, carrying the decoded box
        nxt = _choose(logits, temperature, top_p, generator)
        nxt = torch.where(at_trigger, torch.full_like(nxt, slot), nxt)
        nxt = torch.where(done, torch.full_like(nxt, pad_token_id), nxt)
        embeds = embed(nxt)  # [B, D]
        if at_trigger.any():
            boxes = heads.decode(hidden[at_trigger])  # [n, 4]
            embeds = embeds.clone()
            embeds[at_trigger] = heads.encode(boxes).to(embeds.dtype)
            for row, box in zip(at_trigger.nonzero()[:, 0].tolist(), boxes.float().tolist(), strict=True):
                result.boxes[row].append((box[0], box[1], box[2], box[3]))
                result.hidden[row].append(hidden[row])
        for row in (~done).nonzero()[:, 0].tolist():
            result.ids[row].append(int(nxt[row]))
        done = done | torch.isin(nxt, stops)
        if bool(done.all()):
            break
        attention = torch.cat([attention, attention.new_ones(rows, 1)], 1)  # [B, T + t]
        out = model(
            inputs_embeds=embeds[:, None],  # [B, 1, D]
            attention_mask=attention,
            cache=cache,
            use_cache=True,
            output_hidden_states=True,
        )
        cache = out.cache
        logits, hidden = out.logits[:, -1], out.hidden_states[-1][:, -1]
        last = nxt
    return result


def decode_masks(model, pixel_values: torch.Tensor | None, generated: Generated, frames: list) -> list[list[dict]]:
    """Masks of every decoded box (COCO RLE in original pixels), per row; [] per row without a mask decoder.

    `pixel_values` [B, 3, S, S] must hold one image per row (the mask decoder reads that row's patches).
    """
    from .masks import mask_from_frame, rle_encode
    from .modeling.mask_decoder import predict_masks

    decoder = model.location_heads.mask_decoder
    flat = [(row, h) for row, hs in enumerate(generated.hidden) for h in hs]
    if decoder is None or not flat or pixel_values is None or pixel_values.shape[0] != len(frames):
        return [[] for _ in frames]
    rows = torch.tensor([row for row, _ in flat], device=pixel_values.device)
    logits = predict_masks(decoder, model, pixel_values, torch.stack([h for _, h in flat]), rows)  # [N, S, S]
    out: list[list[dict]] = [[] for _ in frames]
    for (row, _), mask in zip(flat, (logits > 0).cpu().numpy(), strict=True):
        out[row].append(rle_encode(mask_from_frame(mask, frames[row])))
    return out


__all__ = ["Generated", "decode_masks", "generate_with_locations"]

"""The one decoding loop: prefill, one token per step with the KV cache, stop; every answer goes through it.

`GroundLM.ask`, `ask_many`, `Chat.send`, the server (`serve/engine.py`) and through `ask_many` the evaluation
runner all decode here. The loop is the plain one of a causal LM (the shape of gpt-fast's `prefill` /
`decode_one_token` / `generate`):
- `prefill` runs the left-padded prompts [B, T] (with their images and the codec's `location_inputs`) once and
  keeps the KV cache; positions follow the attention mask, so left padding shifts nothing;
- `decode_one_token` feeds one new token per row (or its embedding, when a codec hook supplies one);
- `generate` moves the prompts to the model's device (`on_model`) and yields a `Step` per new token, so a
  caller can stream; a row stops at a stop token id or when `stop_text` says its text holds a stop string, and
  a stopped row receives pad tokens (ignored) until every row has stopped or `max_new_tokens` are generated.

Greedy decoding (argmax) gives the same tokens as transformers' `model.generate(do_sample=False)` on the same
batch (tests/test_decoding.py checks it). Sampling divides the logits by `temperature` and draws from the
smallest set of tokens whose probability reaches `top_p` (nucleus sampling). With a `seed`, every row draws
from a generator of its own seeded with it, so a prompt's answer repeats whatever else shares its batch.

A codec that needs per-step work plugs in a `DecodeHook` (`location/codec.py`): it sees each chosen token and
the last hidden state, and may replace the token and its input embedding (the embedding codec forces the slot
after a trigger and feeds the decoded box's embedding).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .location import DecodeHook


@dataclass(frozen=True)
class Sampling:
    """How to choose a token: greedy when `temperature` or `top_p` is 0, else seeded nucleus sampling."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0 or self.top_p <= 0


GREEDY = Sampling()


@dataclass
class Forward:
    """One forward pass's outputs at the last position: logits [B, V], hidden [B, D] (or None), the cache."""

    logits: torch.Tensor
    hidden: torch.Tensor | None
    cache: object


@dataclass
class Step:
    """One decoding step: the new token of every row (None for a row that had already stopped) and which rows
    have stopped by now (at a stop token or a stop string)."""

    tokens: list[int | None]
    done: list[bool]


def choose(
    logits: torch.Tensor, sampling: Sampling, generators: list[torch.Generator] | None = None
) -> torch.Tensor:
    """Next token per row from logits [B, V]: argmax when greedy, else nucleus sampling (row r drawing from
    `generators[r]` when given, else from torch's global generator)."""
    if sampling.greedy:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / sampling.temperature, -1)  # [B, V]
    sorted_p, order = probs.sort(-1, descending=True)
    # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
    drop = sorted_p.cumsum(-1) - sorted_p >= sampling.top_p
    sorted_p = sorted_p.masked_fill(drop, 0.0)
    sorted_p = sorted_p / sorted_p.sum(-1, keepdim=True)
    if generators is None:
        pick = torch.multinomial(sorted_p, 1)  # [B, 1]
    else:
        pick = torch.cat([torch.multinomial(sorted_p[r : r + 1], 1, generator=g) for r, g in enumerate(generators)])
    return order.gather(-1, pick).squeeze(-1)


def on_model(model, inputs: dict) -> dict:
    """`inputs` on `model`'s device (tensors and a codec's `location_inputs` alike), images in its dtype; a
    no-op for inputs already there."""
    device = model.device
    out = {k: v.to(device) for k, v in inputs.items()}
    if out.get("pixel_values") is not None:
        out["pixel_values"] = out["pixel_values"].to(model.dtype)  # [B_img, 3, S, S]
    return out


def _last(out, hidden: bool) -> Forward:
    return Forward(out.logits[:, -1], out.hidden_states[-1][:, -1] if hidden else None, out.cache)


def prefill(model, inputs: dict, *, hidden: bool = False, hook: DecodeHook | None = None) -> Forward:
    """Run the prompts: `input_ids` [B, T], `attention_mask` [B, T], optional `pixel_values` (+ `image_marks`), `location_inputs`
    (what of them the prompt pass takes is the hook's call)."""
    located = inputs.get("location_inputs")
    out = model(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        pixel_values=inputs.get("pixel_values"),
        image_marks=inputs.get("image_marks"),
        location_inputs=hook.prompt_inputs(located) if hook is not None else located,
        use_cache=True,
        logits_to_keep=1,  # only the last position's logits are needed, as `model.generate` asks too
        output_hidden_states=hidden,
    )
    return _last(out, hidden)


def decode_one_token(
    model, tokens: torch.Tensor, embeds: torch.Tensor | None, attention: torch.Tensor, cache, *, hidden: bool = False
) -> Forward:
    """Feed `tokens` [B] (or their input embeddings `embeds` [B, D]) after the cached prefix; `attention` is
    [B, T_past + 1]."""
    step = {"inputs_embeds": embeds[:, None]} if embeds is not None else {"input_ids": tokens[:, None]}
    out = model(**step, attention_mask=attention, cache=cache, use_cache=True, output_hidden_states=hidden)
    return _last(out, hidden)


@torch.inference_mode()
def generate(
    model,
    inputs: dict,
    *,
    max_new_tokens: int,
    stop_token_ids: set[int],
    pad_token_id: int,
    sampling: Sampling = GREEDY,
    hook: DecodeHook | None = None,
    stop_text: Callable[[int, list[int]], bool] | None = None,
) -> Iterator[Step]:
    """Decode left-padded prompts; yields one `Step` per generated position (at most `max_new_tokens`).

    A row stops after a token in `stop_token_ids` (kept in its output) or when `stop_text(row, ids)` is true
    for its ids so far (a stop string was written).
    """
    if max_new_tokens <= 0:
        return
    inputs = on_model(model, inputs)  # the prompts go where the model is (CPU, a GPU), whoever built them
    input_ids = inputs["input_ids"]  # [B, T]
    attention = inputs["attention_mask"]  # [B, T]
    rows = input_ids.shape[0]
    generators = None
    if not sampling.greedy and sampling.seed is not None:
        generators = [torch.Generator(device=input_ids.device).manual_seed(sampling.seed) for _ in range(rows)]
    hidden = hook is not None and hook.needs_hidden
    out = prefill(model, inputs, hidden=hidden, hook=hook)
    last = input_ids[:, -1]  # [B] the input whose output `out` is
    done = torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
    stops = torch.tensor(sorted(stop_token_ids), dtype=torch.long, device=input_ids.device)
    ids: list[list[int]] = [[] for _ in range(rows)]
    for position in range(max_new_tokens):
        chosen = choose(out.logits, sampling, generators)
        chosen = torch.where(done, torch.full_like(chosen, pad_token_id), chosen)
        embeds = None
        if hook is not None:
            chosen, embeds = hook.step(last, out.hidden, chosen, done)
        was_done = done.tolist()
        finished = torch.isin(chosen, stops) & ~done
        tokens: list[int | None] = [None if d else t for t, d in zip(chosen.tolist(), was_done, strict=True)]
        for row, token in enumerate(tokens):
            if token is not None:
                ids[row].append(token)
                if stop_text is not None and not finished[row] and stop_text(row, ids[row]):
                    finished[row] = True
        done = done | finished
        yield Step(tokens, done.tolist())
        if bool(done.all()) or position == max_new_tokens - 1:
            return
        attention = torch.cat([attention, attention.new_ones(rows, 1)], 1)  # [B, T + t]
        out = decode_one_token(model, chosen, embeds, attention, out.cache, hidden=hidden)
        last = chosen


__all__ = ["GREEDY", "Sampling", "Step", "choose", "decode_one_token", "generate", "on_model", "prefill"]

"""Decoding a transformers family model: its own `generate`, reporting groundlm `Step`s as it goes.

Why not groundlm's loop (`decoding.py`): each family prepares its step inputs in its own
`prepare_inputs_for_generation` (Qwen2.5-VL's 3-D rope positions and their offsets, Florence-2's encoder pass
and decoder start, Kosmos-2's image embedding positions, PaliGemma's prefix attention), so calling the family's
`generate` once is the one boundary that keeps every family right. Everything groundlm decides stays
groundlm's: the token is chosen by `decoding.choose` (greedy argmax, or nucleus sampling with one seeded
generator per row, exactly as the own loop draws), a row stops at a stop token or a stop string, and every
step is handed to `on_step` as a `decoding.Step` while decoding runs (the server streams from it).

The family's own generation config still applies where it shapes the text (Florence-2 forces `<s>` first and
forbids repeated 3-grams), but always with one beam and groundlm's token choice: greedy unless sampling is
asked, as `GroundLM` promises everywhere (Florence-2's model card decodes with 3 beams; one beam is what lets
every answer stream).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from ..decoding import GREEDY, Sampling, Step, choose, on_model


class _Choose(LogitsProcessor):
    """groundlm's token choice: every logit but the chosen token's set to -inf, so `generate`'s argmax takes it."""

    def __init__(self, sampling: Sampling, rows: int, device: torch.device):
        self.sampling = sampling
        self.generators = None
        if not sampling.greedy and sampling.seed is not None:
            self.generators = [torch.Generator(device=device).manual_seed(sampling.seed) for _ in range(rows)]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        chosen = choose(scores, self.sampling, self.generators)  # [B]
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(scores.shape[0], device=scores.device), chosen] = 0.0
        return out


class _Steps(StoppingCriteria):
    """Called by `generate` once per new token with the ids so far: records each row's token, decides which
    rows have stopped (a stop token, kept in the output, or a stop string) and reports the `Step`."""

    def __init__(self, rows: int, stop_ids: set[int], stop_text, on_step: Callable[[Step], None], device):
        self.ids: list[list[int]] = [[] for _ in range(rows)]
        self.done = [False] * rows
        self.stop_ids = stop_ids
        self.stop_text = stop_text
        self.on_step = on_step
        self.device = device

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        tokens: list[int | None] = []
        for row, token in enumerate(input_ids[:, -1].tolist()):
            if self.done[row]:
                tokens.append(None)
                continue
            tokens.append(token)
            self.ids[row].append(token)
            if token in self.stop_ids or (self.stop_text is not None and self.stop_text(row, self.ids[row])):
                self.done[row] = True
        self.on_step(Step(tokens, list(self.done)))
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)


@torch.inference_mode()
def transformers_loop(
    model, inputs: dict, *, max_new_tokens: int, stop_token_ids: set[int], pad_token_id: int,
    sampling: Sampling = GREEDY, hook=None, stop_text=None, on_step: Callable[[Step], None],
) -> None:
    """Decode a family's batch with its `generate`, calling `on_step` per generated position (the same
    arguments and `Step`s as groundlm's own loop; `hook` must be None: family codecs write plain tokens)."""
    if hook is not None:
        raise ValueError("a transformers family model takes no decode hook: its codec writes plain tokens")
    if max_new_tokens <= 0:
        return
    inputs = on_model(model, {k: v for k, v in inputs.items() if k != "labels"})
    rows = inputs["input_ids"].shape[0]
    eos = model.generation_config.eos_token_id
    stops = {*stop_token_ids, *([eos] if isinstance(eos, int) else eos or [])}
    config = copy.deepcopy(model.generation_config)
    config.update(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, pad_token_id=pad_token_id,
                  eos_token_id=sorted(stops))
    steps = _Steps(rows, stops, stop_text, on_step, inputs["input_ids"].device)
    extra = {} if sampling.greedy else {"logits_processor": LogitsProcessorList([_Choose(sampling, rows, model.device)])}
    model.generate(**inputs, generation_config=config, stopping_criteria=StoppingCriteriaList([steps]), **extra)



def row_by_row(model, inputs: dict, *, on_step: Callable[[Step], None], **settings) -> None:
    """`transformers_loop` on each row alone (its padding removed), reporting `Step`s of the whole batch.

    For a family whose batched `generate` is wrong with padding: Kosmos-2 numbers its positions by counting
    non-pad tokens in the prompt but every cached token in later steps (transformers' Kosmos-2 drops the
    position ids `generate` computes), so a left-padded row's answer would drift from the same row alone."""
    rows = inputs["input_ids"].shape[0]
    done = [False] * rows
    for r in range(rows):
        keep = inputs["attention_mask"][r].bool()  # [T]
        single = {k: v[r : r + 1][:, keep] if v.dim() == 2 and v.shape[1] == keep.shape[0] else v[r : r + 1]
                  for k, v in inputs.items() if k != "labels"}

        def take(step: Step, r: int = r) -> None:
            done[r] = step.done[0]
            on_step(Step([step.tokens[0] if i == r else None for i in range(rows)], list(done)))

        transformers_loop(model, single, on_step=take, **settings)


__all__ = ["row_by_row", "transformers_loop"]

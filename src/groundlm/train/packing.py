"""Less padding in training batches: length-grouped sub-batches, and padding-free packed rows.

A right-padded batch spends the language model's compute on every padding position. Two ways out:

- **Length grouping** (`split_by_length`, the loop's `group_by_length: true`): the micro-batch's samples,
  sorted by length, are cut into sub-batches that are each trimmed to their own longest sample; the loop runs
  one forward/backward per sub-batch and sums the losses. Same samples, same loss; only the padding and the
  float summation order change. A sub-batch whose samples all have the same length carries an all-ones mask,
  which transformers drops, so SDPA takes its `is_causal` path.
- **Packing** (`pack`): several samples share one row, their position ids restarting at 0. With no
  `attention_mask`, transformers 5's masking utilities (`find_packed_sequence_indices`) read the restarts as
  sequence boundaries and build a block-diagonal causal mask for the sdpa and eager implementations, so no
  token attends across samples (tests/test_performance_guards.py checks the loss equals the padded one). On a
  CPU that mask is a dense [R, 1, L, L] tensor and the attention of a row costs L^2 whatever the boundaries,
  so packing pays only where padding outweighs that; bench/train_throughput.py measures both.

The loop packs with a stage's `packing: true`: train/loader.py puts each micro-batch into one row (no padding at
all, as transformers' flattening collator does for flash_attention_2); the `lm` objective gets the row with its
`owner` map under the batch key `OWNER` and sums each sample's token losses from it.

Neither applies to batches with other per-sample tensors (a location codec's per-box targets) or a
dense objective's per-patch targets: those are returned whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..processor import IGNORE_INDEX, Encoded

# What one more sub-batch costs (one more pass through every layer: Python, kernel launches, smaller
# matmuls), in padding tokens it must save to be worth it. A guess between the tiny config (where a pass's
# fixed cost is worth hundreds of tokens) and the ~100M one (tens); bench/train_throughput.py prints the
# groups it forms and the speed they give.
SPLIT_COST_TOKENS = 64

# The batch key of a packed micro-batch's `Packed.owner` in the training loop (not a model input).
OWNER = "packed_owner"

# Keys `split_by_length` knows how to slice: [B, T] per-token tensors, and one image row per sample that has
# image tokens. Any other key (per-box, per-patch) makes the batch indivisible here.
_TOKEN_KEYS = ("input_ids", "attention_mask", "labels")


@dataclass
class SubBatch:
    """A piece of a micro-batch: which of its samples (`rows`, in the micro-batch's order) and their tensors."""

    rows: list[int]
    batch: dict[str, torch.Tensor]


def length_groups(lengths: Sequence[int], split_cost: int = SPLIT_COST_TOKENS) -> list[list[int]]:
    """Partition sample indices into groups of similar length that minimise padded tokens + `split_cost`
    per group (exact, by dynamic programming over the samples sorted longest first).

    Each group is padded to its own longest sample, so the cost of a group of the sorted samples i..j-1 is
    (j - i) * lengths[i] + split_cost. Returns groups longest first, each listing indices into `lengths`.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    best = [0] + [float("inf")] * n  # best[j]: cheapest cover of the j longest samples
    cut = [0] * (n + 1)  # cut[j]: where the last group of that cover starts
    for j in range(1, n + 1):
        for i in range(j):
            cost = best[i] + (j - i) * lengths[order[i]] + split_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups = []
    j = n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def split_by_length(
    batch: dict[str, torch.Tensor], image_token_id: int, split_cost: int = SPLIT_COST_TOKENS
) -> list[SubBatch]:
    """A right-padded batch cut into length-grouped sub-batches, each trimmed to its longest sample.

    Returns the whole batch as one `SubBatch` when it holds keys other than tokens and `pixel_values`, or when
    one group is cheapest. The sub-batches together hold every sample exactly once.
    """
    everything = SubBatch(list(range(batch["input_ids"].shape[0])), batch)
    if set(batch) - {*_TOKEN_KEYS, "pixel_values"}:
        return [everything]
    lengths = batch["attention_mask"].sum(1).tolist()  # [B] real tokens (right padding)
    groups = length_groups(lengths, split_cost)
    if len(groups) == 1:
        return [everything]
    # pixel_values holds one row per sample with image tokens, in sample order: its row of sample i is the
    # number of image-bearing samples before i.
    has_image = (batch["input_ids"] == image_token_id).any(1)  # [B]
    image_row = has_image.long().cumsum(0) - 1  # [B]
    parts = []
    for rows in groups:
        rows = sorted(rows)  # keep the micro-batch's order inside a sub-batch
        index = torch.tensor(rows)
        width = max(lengths[i] for i in rows)
        part = {k: batch[k][index, :width] for k in _TOKEN_KEYS}
        if "pixel_values" in batch:
            with_image = index[has_image[index]]
            if len(with_image):
                part["pixel_values"] = batch["pixel_values"][image_row[with_image]]
        parts.append(SubBatch(rows, part))
    return parts


@dataclass
class Packed:
    """Samples packed into rows without padding between them.

    batch: `input_ids`, `labels`, `position_ids` [R, L] (positions restart at 0 for each sample; no
        `attention_mask`, so transformers builds the per-sample causal mask) and `pixel_values` (with their
        `image_marks` for a region_marks model) in the order of the image tokens.
    owner: [R, L] the index of the sample each position belongs to, -1 on the padding at a row's end.
    """

    batch: dict[str, torch.Tensor]
    owner: torch.Tensor


def pack(samples: Sequence[Encoded], pad_token_id: int, row_tokens: int | None = None) -> Packed:
    """Pack samples into rows of at most `row_tokens` tokens (first fit, longest first).

    `row_tokens` defaults to the longest sample, so no row is longer than the padded batch would be. Each
    sample's first label becomes -100: in its own row it is never a target (the loss shifts by one), and
    packed it would otherwise be predicted from the previous sample's last token.
    """
    lengths = [len(s.input_ids) for s in samples]
    capacity = max(max(lengths), row_tokens or 0)
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(samples)), key=lambda i: -lengths[i]):
        slot = next((r for r, room in enumerate(free) if room >= lengths[i]), None)
        if slot is None:
            rows.append([])
            free.append(capacity)
            slot = len(rows) - 1
        rows[slot].append(i)
        free[slot] -= lengths[i]
    width = max(capacity - room for room in free)
    shape = (len(rows), width)
    ids = torch.full(shape, pad_token_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    # Padding at a row's end counts 0, 1, ... as a sequence of its own, so it attends only to itself.
    positions = torch.zeros(shape, dtype=torch.long)
    owner = torch.full(shape, -1, dtype=torch.long)
    pixels, marks = [], []
    for r, members in enumerate(rows):
        start = 0
        for i in members:
            s, n = samples[i], lengths[i]
            ids[r, start : start + n] = torch.tensor(s.input_ids)
            labels[r, start : start + n] = torch.tensor([IGNORE_INDEX, *s.labels[1:]])
            positions[r, start : start + n] = torch.arange(n)
            owner[r, start : start + n] = i
            if s.pixel_values is not None:
                pixels.append(s.pixel_values)  # row by row, sample by sample: the image tokens' order
                if s.marks is not None:  # a region_marks model's processor marks every image (zeros: none)
                    marks.append(s.marks)
            start += n
        positions[r, start:] = torch.arange(width - start)
    batch = {"input_ids": ids, "labels": labels, "position_ids": positions}
    if pixels:
        batch["pixel_values"] = torch.stack(pixels)  # [N_img, 3, S, S]
    if marks:
        batch["image_marks"] = torch.stack(marks)  # [N_img, G*G], the images' order
    return Packed(batch, owner)


def per_sample_sums(token_losses: torch.Tensor, owner: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Token losses of packed rows [R, L-1] (position t predicts t+1) summed per sample: [num_samples].

    A loss at position t belongs to the sample that owns the predicted token t+1; padding (-1) is dropped.
    """
    targets = owner[:, 1:].reshape(-1)  # [R * (L-1)]
    keep = targets >= 0
    sums = torch.zeros(num_samples, dtype=token_losses.dtype, device=token_losses.device)
    return sums.index_add(0, targets[keep], token_losses.reshape(-1)[keep])

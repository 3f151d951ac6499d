"""Region marks: the boxes a user points at, marked on the image's patch features.

A region question ("[identify] what is <box:0>", "what colour is <box:1>?") gives its box as location text
(`{<12><30><25><44>}`); to answer, the language model must match those four numbers against the visual
tokens' positions, the reverse of what grounding teaches, and a small model learns it last. With
`region_marks`, the processor also lays every box of the user's turns on the tower's patch grid (the share of
each patch the box covers, `mark_map`), and the model adds one learned vector, scaled by that share, to the
patch features before the connector (`RegionMark`). The region is then visible where the object is, as a mark
drawn on the image is in ViP-LLaVA, but in feature space, so the frozen tower needs no new training and the
image itself is unchanged. The location text stays in the prompt.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn


def mark_map(boxes_norm: Iterable[Sequence[float]], grid: int) -> torch.Tensor:
    """The share [G*G] of each patch (row-major) that any of `boxes_norm` ([0, 1] of the frame) covers."""
    edges = torch.arange(grid + 1, dtype=torch.float32) / grid  # [G + 1]
    marks = torch.zeros(grid, grid)
    for x1, y1, x2, y2 in boxes_norm:
        ox = (torch.minimum(edges[1:], torch.tensor(x2)) - torch.maximum(edges[:-1], torch.tensor(x1))).clamp(min=0)
        oy = (torch.minimum(edges[1:], torch.tensor(y2)) - torch.maximum(edges[:-1], torch.tensor(y1))).clamp(min=0)
        marks = torch.maximum(marks, oy[:, None] * ox[None, :] * grid * grid)  # [G, G], share of each patch
    return marks.clamp(max=1.0).flatten()


class RegionMark(nn.Module):
    """One learned vector [C], added to patch features [B, N, C] in proportion to their marks [B, N]."""

    def __init__(self, channels: int):
        super().__init__()
        self.vector = nn.Parameter(torch.empty(channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Unit scale per channel, like the layer-normed features it is added to: a zero start would take
        # hundreds of steps at the usual learning rates before the mark could be seen.
        nn.init.normal_(self.vector, std=1.0)

    def forward(self, features: torch.Tensor, marks: torch.Tensor) -> torch.Tensor:
        """features [B, N, C] + marks [B, N] x vector [C]."""
        return features + marks.to(features.dtype).unsqueeze(-1) * self.vector.to(features.dtype)

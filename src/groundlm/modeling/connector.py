"""Connectors: turn vision features [B, N, C] into language-model embeddings [B, N_img, D].

- `linear`: one Linear C -> D (LLaVA-1).
- `mlp2x_gelu`: Linear C -> D, GELU, Linear D -> D (LLaVA-1.5). The layers are named `linear_1`/`linear_2`
  like transformers' `LlavaMultiModalProjector`, so weights map 1:1.
- `concat4`: 4 sequence-adjacent tokens concatenated on channels, [B, N, C] -> [B, N/4, 4C], then one Linear
  4C -> D (MiniGPT-v2). On a row-major patch grid each group is a 1x4 strip within a row, not a 2x2 block.
- `merge2x2`: each 2x2 block of the patch grid concatenated on channels, [B, G*G, C] -> [B, G*G/4, 4C], then
  one Linear 4C -> D (the spatial merge of Qwen2-VL's patch merger, with MiniGPT-v2's single Linear): as
  many tokens as `concat4`, each covering a square instead of a strip one patch high.
- `qformer`: learned queries cross-attend the (layer-normed) vision features through BLIP-2's Q-Former, then a
  Linear Dq -> D (MiniGPT-4). One image becomes `num_query_tokens` tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from transformers import Blip2QFormerModel

if TYPE_CHECKING:  # config.py reads CONNECTORS from here, so this module must not import it at run time
    from .config import GroundLMConfig

# concat4 folds this many sequence-adjacent vision tokens into one (MiniGPT-v2).
CONCAT_GROUP = 4


class LinearConnector(nn.Module):
    """One Linear layer from the vision width to the text width (LLaVA-1)."""

    def __init__(self, vision_hidden: int, text_hidden: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(vision_hidden, text_hidden, bias=bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[B, N, C] -> [B, N, D]."""
        return self.linear(features)


class MLPConnector(nn.Module):
    """Linear, GELU, Linear (LLaVA-1.5's `mlp2x_gelu`), with `LlavaMultiModalProjector`'s layer names."""

    def __init__(self, vision_hidden: int, text_hidden: int, bias: bool = True):
        super().__init__()
        self.linear_1 = nn.Linear(vision_hidden, text_hidden, bias=bias)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(text_hidden, text_hidden, bias=bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[B, N, C] -> [B, N, D]."""
        return self.linear_2(self.act(self.linear_1(features)))


class Concat4Connector(nn.Module):
    """Concatenate each run of 4 sequence-adjacent tokens on channels, then one Linear (MiniGPT-v2)."""

    def __init__(self, vision_hidden: int, text_hidden: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(CONCAT_GROUP * vision_hidden, text_hidden, bias=bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[B, N, C] -> [B, N/4, D]; output token j sees tokens 4j, 4j+1, 4j+2, 4j+3 in that order."""
        batch, num_tokens, channels = features.shape
        if num_tokens % CONCAT_GROUP != 0:
            raise ValueError(f"concat4 needs a token count divisible by {CONCAT_GROUP}, got {num_tokens}")
        # A contiguous row-major reshape puts x[4j], ..., x[4j+3] side by side in row j: [B, N/4, 4C].
        grouped = features.reshape(batch, num_tokens // CONCAT_GROUP, CONCAT_GROUP * channels)
        return self.linear(grouped)


class Merge2x2Connector(nn.Module):
    """Concatenate each 2x2 block of the row-major patch grid on channels, then one Linear."""

    def __init__(self, vision_hidden: int, text_hidden: int, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(CONCAT_GROUP * vision_hidden, text_hidden, bias=bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[B, G*G, C] -> [B, G*G/4, D]; output token (i, j) of the (G/2)^2 grid sees patches (2i..2i+1, 2j..2j+1)."""
        return self.linear(merge_blocks(features))


def merge_blocks(x: torch.Tensor) -> torch.Tensor:
    """[B, G*G, C] on a row-major G x G grid (G even) -> [B, (G/2)^2, 4C], each 2x2 block's rows in reading order."""
    batch, num_tokens, channels = x.shape
    grid = round(num_tokens**0.5)
    if grid * grid != num_tokens or grid % 2:
        raise ValueError(f"merge2x2 needs a square grid of even side, got {num_tokens} tokens")
    half = grid // 2
    blocks = x.reshape(batch, half, 2, half, 2, channels).permute(0, 1, 3, 2, 4, 5)  # [B, G/2, G/2, 2, 2, C]
    return blocks.reshape(batch, half * half, CONCAT_GROUP * channels)


def merged_centres(connector: str, points: torch.Tensor) -> torch.Tensor:
    """The centres [N_img, 2] of a connector's output tokens from its input tokens' centres [N, 2] (row-major)."""
    if connector == "concat4":
        return points.reshape(-1, CONCAT_GROUP, 2).mean(1)
    if connector == "merge2x2":
        return merge_blocks(points.unsqueeze(0))[0].reshape(-1, CONCAT_GROUP, 2).mean(1)
    return points


class QFormerConnector(nn.Module):
    """Learned queries read the vision features through BLIP-2's Q-Former, then a Linear (MiniGPT-4).

    MiniGPT-4 layer-norms the tower's output first (`ln_vision`); `vision_norm` plays that role.
    """

    def __init__(self, config: GroundLMConfig):
        super().__init__()
        qformer_config = config.qformer_config
        self.vision_norm = nn.LayerNorm(config.vision_config.hidden_size)
        # [1, Q, Dq]; initialised from a normal in `GroundLMPreTrainedModel._init_weights` (identical queries
        # would stay identical forever, as nothing else tells them apart).
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, qformer_config.hidden_size))
        self.qformer = Blip2QFormerModel(qformer_config)
        self.linear = nn.Linear(
            qformer_config.hidden_size, config.text_config.hidden_size, bias=config.projector_bias
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[B, N, C] -> [B, Q, D]."""
        features = self.vision_norm(features)
        queries = self.query_tokens.expand(features.shape[0], -1, -1)  # [B, Q, Dq]
        # The Q-Former runs in its own (fp32) dtype and casts the vision features itself.
        out = self.qformer(query_embeds=queries, encoder_hidden_states=features, return_dict=True)
        return self.linear(out.last_hidden_state.to(self.linear.weight.dtype))  # [B, Q, D]


def _sized(cls: type[nn.Module]):
    """A constructor of `cls` from a config: vision width in, text width out."""
    return lambda config: cls(
        config.vision_config.hidden_size, config.text_config.hidden_size, bias=config.projector_bias
    )


_CONSTRUCTORS = {
    "linear": _sized(LinearConnector),
    "mlp2x_gelu": _sized(MLPConnector),
    "concat4": _sized(Concat4Connector),
    "merge2x2": _sized(Merge2x2Connector),
    "qformer": QFormerConnector,
}
CONNECTORS = tuple(_CONSTRUCTORS)  # the valid values of `connector` (GroundLMConfig and recipes check these)
# Connectors that fold this many vision tokens into one image token.
MERGING = {"concat4": CONCAT_GROUP, "merge2x2": CONCAT_GROUP}


def build_connector(config: GroundLMConfig) -> nn.Module:
    """The connector named by `config.connector`, sized from the vision and text configs."""
    if config.connector not in _CONSTRUCTORS:
        raise ValueError(f"unknown connector {config.connector!r}; choose one of {', '.join(CONNECTORS)}")
    return _CONSTRUCTORS[config.connector](config)


__all__ = [
    "CONCAT_GROUP",
    "CONNECTORS",
    "Concat4Connector",
    "LinearConnector",
    "MERGING",
    "MLPConnector",
    "Merge2x2Connector",
    "QFormerConnector",
    "build_connector",
    "merged_centres",
]

"""Choosing the location codec of a model: `text` (MiniGPT-v2), `tokens` (`<loc_k>`) or `embedding` (NExT-Chat).

All three share one interface: `render(content, boxes_norm, *, output=True)` for training and prompts,
`parse(text)` for answers (the embedding codec's `parse(text, boxes)` also takes the boxes its decoder produced),
`strip(text)` for people and `special_tokens()` for the tokenizer.
"""

from __future__ import annotations

from typing import Protocol

from .location import TextLocationCodec
from .location_embedding import EmbeddingLocationCodec
from .location_tokens import TokenLocationCodec

LocationCodec = TextLocationCodec | TokenLocationCodec | EmbeddingLocationCodec
CODEC_NAMES = ("text", "tokens", "embedding")


class _CodecSettings(Protocol):
    location_codec: str
    location_bins: int


def make_codec(config: _CodecSettings) -> LocationCodec:
    """The codec a config names (`location_codec`), with its `location_bins` (ignored by `embedding`)."""
    name = getattr(config, "location_codec", "text")
    if name == "text":
        return TextLocationCodec(bins=config.location_bins)
    if name == "tokens":
        return TokenLocationCodec(bins=config.location_bins)
    if name == "embedding":
        return EmbeddingLocationCodec()
    raise ValueError(f"unknown location_codec {name!r}; choose one of {', '.join(CODEC_NAMES)}")


__all__ = ["CODEC_NAMES", "LocationCodec", "make_codec"]

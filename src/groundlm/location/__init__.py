"""Locations in text and in the model: the `LocationCodec` protocol, its three codecs, grounded objects.

- `text` (MiniGPT-v2): `{<x1><y1><x2><y2>}`, integers 0..bins (`text.py`);
- `tokens` (Kosmos-2 / PaliGemma / Florence-2 style): four `<loc_k>` tokens (`tokens.py`);
- `embedding` (NExT-Chat): a trigger `<at>` and a slot `<boxes>` whose embedding encodes the box (`embedding.py`).

`make_codec` is the one place that knows the names; everything else uses the protocol (`codec.py`).
docs/location-codecs.md compares them.
"""

from __future__ import annotations

from typing import Protocol

from .codec import DecodeHook, LocationCodec, LocationInputs
from .embedding import EmbeddingLocationCodec
from .objects import BoxNorm, GroundedObject
from .setup import add_location_tokens, location_head_settings
from .text import TextLocationCodec
from .tokens import TokenLocationCodec

# name -> constructor taking `bins` (the embedding codec has no bins)
CODECS = {
    "text": lambda bins: TextLocationCodec(bins=bins),
    "tokens": lambda bins: TokenLocationCodec(bins=bins),
    "embedding": lambda bins: EmbeddingLocationCodec(),
}
CODEC_NAMES = tuple(CODECS)


class _CodecSettings(Protocol):
    location_codec: str
    location_bins: int


def make_codec(config: _CodecSettings) -> LocationCodec:
    """The codec a config names (`location_codec`, default text), with its `location_bins`."""
    name = getattr(config, "location_codec", "text")
    if name not in CODECS:
        raise ValueError(f"unknown location_codec {name!r}; choose one of {', '.join(CODEC_NAMES)}")
    return CODECS[name](config.location_bins)


__all__ = [
    "CODEC_NAMES",
    "BoxNorm",
    "DecodeHook",
    "EmbeddingLocationCodec",
    "GroundedObject",
    "LocationCodec",
    "LocationInputs",
    "TextLocationCodec",
    "TokenLocationCodec",
    "add_location_tokens",
    "location_head_settings",
    "make_codec",
]

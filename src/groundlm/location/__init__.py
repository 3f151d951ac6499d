"""Locations in text and in the model: the `LocationCodec` protocol, its three codecs, grounded objects.

- `text` (MiniGPT-v2): `{<x1><y1><x2><y2>}`, integers 0..bins (`text.py`);
- `tokens` (Kosmos-2 / PaliGemma / Florence-2 style): four `<loc_k>` tokens (`tokens.py`);
- `embedding` (NExT-Chat): a trigger `<at>` and a slot `<boxes>` whose embedding encodes the box (`embedding.py`).

`make_codec` is the one place that knows the names; everything else uses the protocol (`codec.py`).
docs/location-codecs.md compares them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .codec import DecodeHook, LocationCodec, LocationInputs
from .embedding import EmbeddingLocationCodec
from .objects import BoxNorm, GroundedObject
from .setup import add_location_tokens, location_head_settings
from .text import TextLocationCodec
from .tokens import TokenLocationCodec


class _CodecSettings(Protocol):
    location_codec: str
    location_bins: int
    image_size: int  # the model's square input side, for formats written in pixels of it


# name -> constructor taking the config's settings (each takes what its format needs)
CODECS: dict[str, Callable[[_CodecSettings], LocationCodec]] = {
    "text": lambda c: TextLocationCodec(bins=c.location_bins),
    "tokens": lambda c: TokenLocationCodec(bins=c.location_bins),
    "embedding": lambda c: EmbeddingLocationCodec(),
}
CODEC_NAMES = tuple(CODECS)


def make_codec(config: _CodecSettings) -> LocationCodec:
    """The codec a config names (`location_codec`, default text), built from the settings it needs."""
    name = getattr(config, "location_codec", "text")
    if name not in CODECS:
        raise ValueError(f"unknown location_codec {name!r}; choose one of {', '.join(CODEC_NAMES)}")
    return CODECS[name](config)


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

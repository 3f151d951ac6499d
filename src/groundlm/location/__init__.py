"""Locations in text and in the model: the `LocationCodec` protocol, its codecs, grounded objects.

- `text` (MiniGPT-v2): `{<x1><y1><x2><y2>}`, integers 0..bins (`text.py`);
- `tokens` (groundlm's own): `<p>phrase</p>` and four `<loc_k>` tokens, `bins` of them (`tokens.py`);
- `embedding` (NExT-Chat): a trigger `<at>` and a slot `<boxes>` whose embedding encodes the box (`embedding.py`);
- the published formats, each as its model writes it: `kosmos2` (`<phrase>`/`<object>` with 32x32 patch
  indices, `kosmos2.py`), `florence2` (`car<loc_52>...`, 1000 bins, `florence2.py`), `paligemma` (`<loc0256>`
  tokens y-first, 1024 of them, `paligemma.py`), `qwen_vl` / `qwen2_vl` (`<ref>`/`<box>(x1,y1),(x2,y2)`, 0-999,
  `qwen_vl.py`, `qwen2_vl.py`), `qwen2_5_vl` (JSON `bbox_2d` in pixels of the input, `qwen2_5_vl.py`),
  `internvl` (`<ref>`/`<box>[[...]]`, 0-1000, `internvl.py`), and the bracket formats `shikra` / `llava`
  (`[0.123,0.456,...]` floats) and `ferret` / `cogvlm` (`[302, 257, ...]`, `[[086,540,...]]`, 0-999) in
  `brackets.py`; `phrased.py` holds what the token formats share.

`make_codec` is the one place that knows the names; everything else uses the protocol (`codec.py`).
docs/location-codecs.md compares them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .brackets import CogVLMLocationCodec, FerretLocationCodec, LlavaLocationCodec, ShikraLocationCodec
from .codec import DecodeHook, LocationCodec, LocationInputs
from .embedding import EmbeddingLocationCodec
from .florence2 import Florence2LocationCodec
from .internvl import InternVLLocationCodec
from .kosmos2 import Kosmos2LocationCodec
from .objects import BoxNorm, GroundedObject
from .paligemma import PaliGemmaLocationCodec
from .qwen2_5_vl import Qwen25VLLocationCodec
from .qwen2_vl import Qwen2VLLocationCodec
from .qwen_vl import QwenVLLocationCodec
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
    # published formats (issue 18), each with its own fixed grid
    "kosmos2": lambda c: Kosmos2LocationCodec(),
    "florence2": lambda c: Florence2LocationCodec(),
    "paligemma": lambda c: PaliGemmaLocationCodec(),
    "qwen_vl": lambda c: QwenVLLocationCodec(),
    "qwen2_vl": lambda c: Qwen2VLLocationCodec(),
    "qwen2_5_vl": lambda c: Qwen25VLLocationCodec(size=c.image_size),  # pixels of the model's input
    "internvl": lambda c: InternVLLocationCodec(),
    "shikra": lambda c: ShikraLocationCodec(),
    "llava": lambda c: LlavaLocationCodec(),
    "ferret": lambda c: FerretLocationCodec(),
    "cogvlm": lambda c: CogVLMLocationCodec(),
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
    "CogVLMLocationCodec",
    "DecodeHook",
    "EmbeddingLocationCodec",
    "FerretLocationCodec",
    "Florence2LocationCodec",
    "GroundedObject",
    "InternVLLocationCodec",
    "Kosmos2LocationCodec",
    "LocationCodec",
    "LlavaLocationCodec",
    "LocationInputs",
    "PaliGemmaLocationCodec",
    "Qwen25VLLocationCodec",
    "Qwen2VLLocationCodec",
    "QwenVLLocationCodec",
    "ShikraLocationCodec",
    "TextLocationCodec",
    "TokenLocationCodec",
    "add_location_tokens",
    "location_head_settings",
    "make_codec",
]

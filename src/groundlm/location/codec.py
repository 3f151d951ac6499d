"""The `LocationCodec` protocol: how a model writes the locations of its answers and reads those of its prompts.

Everything outside this package talks to a codec only through these methods, so a new location format is a
new module here plus a line in `make_codec` (`__init__.py`). Three kinds of work go through it:
- text: `render` writes `<box:i>` slots in the model's format, `parse` reads grounded objects back (never
  raising), `to_slots` inverts `render` (a text in the format back to record content and boxes, for importing
  data written in it), `strip` leaves the words for people, `special_tokens` lists what the tokenizer must keep whole;
- training: `encode_locations` gives what a sample needs beside its token ids (kept in `Encoded.locations`),
  `collate` stacks a batch of those into `LocationInputs` (the model's `location_inputs`), and
  `never_targets` names tokens that are never a label;
- decoding: `decode_hook` gives a per-step hook (or None) for `decoding.generate`, and `history` turns an
  answer back into slot content so a chat renders every earlier turn through the processor again.

`WrittenLocations` holds the hooks of codecs whose boxes are plain tokens of the text (text and tokens
codecs): they need nothing beside the ids and nothing per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch

from .objects import BoxNorm, GroundedObject

# (content with `<box:i>` slots, whether it is an assistant turn) for each turn of a conversation
Turn = tuple[str, bool]
# the mask of object i in the model's frame ([S, S] bool array), or None when it has none
ObjectMask = Callable[[int], Any]


class LocationInputs(dict):
    """A codec's per-batch tensors (`collate`), passed to the model as `location_inputs`.

    A dict with `.to(device)`, so code that moves a batch with `{k: v.to(device) ...}` moves these too.
    """

    def to(self, *args, **kwargs) -> LocationInputs:
        return LocationInputs({k: v.to(*args, **kwargs) for k, v in self.items()})


class DecodeHook(Protocol):
    """Per-step work of a codec during decoding (`decoding.generate`), for one batch."""

    needs_hidden: bool  # whether `step` reads the last hidden state of each row

    def prompt_inputs(self, location_inputs: dict | None) -> dict | None:
        """The `location_inputs` the prompts' forward pass takes (training-only targets left out)."""
        ...

    def step(
        self, last: torch.Tensor, hidden: torch.Tensor | None, chosen: torch.Tensor, done: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Given the input `last` [B] whose output gave `hidden` [B, D] and the chosen next tokens `chosen` [B]
        (pad where `done` [B]), return the next tokens [B] and their input embeddings [B, D] (None: embed the
        tokens as usual)."""
        ...

    def decoded(self, row: int) -> list[BoxNorm]:
        """The boxes decoded for `row` so far, in order ([0, 1] of the frame)."""
        ...

    def masks(self, pixel_values: torch.Tensor | None, frames: Sequence) -> list[list[dict]]:
        """Masks (COCO RLE, original pixels) of every decoded box per row; [] per row when there are none."""
        ...


class LocationCodec(Protocol):
    """One way of writing locations; see the module docstring for how the methods are used."""

    def render(self, content: str, boxes_norm: Sequence[Sequence[float]], *, output: bool = True) -> str:
        """`content` with every `<box:i>` slot written for `boxes_norm[i]`; `output`: an assistant turn."""
        ...

    def parse(self, text: str, decoded: Sequence[Sequence[float]] = ()) -> list[GroundedObject]:
        """The grounded objects of generated `text`; `decoded` holds boxes a decode hook produced. Never raises."""
        ...

    def to_slots(self, text: str, first: int = 0, *, output: bool = True) -> tuple[str, list[BoxNorm]]:
        """The inverse of `render`: `text` with every location written in this format replaced by `<box:k>`
        slots (k numbered from `first`), each phrase the format ties to them written `<p>phrase</p>` right
        before them, and their boxes ([0, 1] of the codec's frame) in slot order. The phrases and boxes are
        those `parse` reads; `output` False reads a user turn, which a format may write otherwise (`render`'s
        `output`). Never raises; linear in the text."""
        ...

    def strip(self, text: str) -> str:
        """The answer for people: phrases kept, location markup removed."""
        ...

    # Whether the model carries location heads for this codec (`modeling/location_heads.py`).
    has_heads: bool
    # Which image the numbers refer to in the published format ("resize" or "pad", `geometry.FRAMES`), or None
    # for groundlm's own formats, which follow the model's frame; train/recipe.py warns on a mismatch.
    frame: str | None
    # Whether the numbers are pixels of the model's input (a square of side `image_size`, make_codec) rather
    # than a fixed grid; importers and exporters then scale boxes by the input's size (Qwen2.5-VL).
    pixels: bool

    def special_tokens(self) -> list[str]:
        """Tokens the tokenizer must keep whole."""
        ...

    def added_tokens(self) -> list[str]:
        """Tokens a pretrained tokenizer must gain (`setup.add_location_tokens`); [] when plain text will do."""
        ...

    def coordinate_tokens(self) -> list[str] | None:
        """The coordinate tokens in value order, or None when boxes are not coordinate tokens."""
        ...

    def head_settings(self, tokenizer) -> dict | None:
        """The model's `location_head` settings this codec needs (token ids), or None without heads."""
        ...

    def check_tokenizer(self, tokenizer) -> None:
        """Raise when `tokenizer` lacks a token this codec needs as one id."""
        ...

    def clean(self, content: str) -> str:
        """Content from a client with location markup that cannot be fed back removed."""
        ...

    def never_targets(self, tokenizer) -> list[int]:
        """Token ids never supervised (their embeddings come from elsewhere)."""
        ...

    def encode_locations(
        self, turns: Sequence[Turn], boxes_norm: Sequence[Sequence[float]], input_ids: Sequence[int],
        tokenizer, object_mask: ObjectMask,
    ) -> dict:
        """What one encoded conversation needs beside its ids (kept in `Encoded.locations`)."""
        ...

    def collate(self, locations: Sequence[dict]) -> LocationInputs | None:
        """A batch of `encode_locations` results as tensors, or None when the codec needs none."""
        ...

    def decode_hook(self, model, rows: int) -> DecodeHook | None:
        """Per-step decoding work for a batch of `rows` (None: plain next-token decoding)."""
        ...

    def history(self, text: str, objects: Sequence[GroundedObject], first: int) -> tuple[str, list]:
        """An answer as history content: its locations as `<box:k>` slots numbered from `first`, and their
        boxes (the objects' pixel boxes) in slot order."""
        ...


class WrittenLocations:
    """The hooks of a codec whose boxes are written as tokens of the text: nothing beside the ids."""

    has_heads = False
    frame: str | None = None  # a published format's codec names its frame
    pixels = False  # numbers on a fixed grid

    def head_settings(self, tokenizer) -> dict | None:
        return None

    def check_tokenizer(self, tokenizer) -> None:
        return None

    def clean(self, content: str) -> str:
        return content

    def never_targets(self, tokenizer) -> list[int]:
        return []

    def encode_locations(self, turns, boxes_norm, input_ids, tokenizer, object_mask) -> dict:
        return {}

    def collate(self, locations: Sequence[dict]) -> LocationInputs | None:
        return None

    def decode_hook(self, model, rows: int) -> DecodeHook | None:
        return None

    def history(self, text: str, objects: Sequence[GroundedObject], first: int) -> tuple[str, list]:
        # the answer's text holds its boxes, so it goes back as it was generated
        return text, []


__all__ = ["DecodeHook", "LocationCodec", "LocationInputs", "ObjectMask", "Turn", "WrittenLocations"]

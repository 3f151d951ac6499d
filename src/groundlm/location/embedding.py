"""The `embedding` location codec: NExT-Chat's pix2emb, a box as one continuous embedding instead of text.

Text form (NExT-Chat's code names; its paper calls them `<trigger>` and `<loc>`):
- a location the model **outputs** (assistant turn) is `<at><boxes>`: the language model learns to emit the
  trigger `<at>` (a normal LM target); the box decoder reads the last hidden state *at* the `<at>` position and
  turns it into a box. `<boxes>` follows it and is never a target: its input embedding is the box encoder's
  embedding of the box (the ground truth in training, the decoded box in generation), so what the model says
  next can depend on where it pointed.
- a location the model **reads** (user turn, a visual prompt) is `<boxes>` alone, its embedding made by the box
  encoder from the user's box. (NExT-Chat writes `<at> <boxes>` in user turns too; without the `<at>` every
  `<at>` in a training sequence is a supervised trigger, so the model needs no label mask to find them.)

Beside the ids, a sample carries (`encode_locations`) and a batch hands the model as `location_inputs`
(`collate`) the boxes, normalised to the model's input frame, xyxy in [0, 1]:
- `slot_boxes` [N_slot, 4]: one row per `<boxes>` token of the batch, in reading order (row by row through the
  batch, left to right), user and assistant slots alike;
- `trigger_boxes` [N_trigger, 4]: one row per `<at>` token of the batch, in the same order: the targets of the
  box decoder (the same boxes as the assistant slots);
- `trigger_masks` [N_trigger, S, S]: the mask targets, only when every trigger's object has a mask.

Decoding (`decode_hook`): when the model has emitted `<at>`, the next forward pass (with `<at>` as input) gives
the hidden state the box decoder reads, exactly as in training (the hidden state *at* `<at>`), and the token
after it is not chosen from the logits: it is the slot `<boxes>`, whose input embedding is the box encoder's
encoding of the decoded box. (NExT-Chat's own generate overwrites the embedding of whatever token follows
`<at>` and reads the box off the pass that *emitted* `<at>`; here both follow training. docs/published-systems.md
has NExT-Chat's formats.)

Parsing: `parse(text, decoded)` pairs the i-th `<at>` of the text with `decoded[i]` (corners put in order and
clamped to [0, 1]: the decoder is unconstrained); a phrase `<p>…</p>` directly before a trigger names it.
Without decoded boxes (plain text from somewhere else) there is nothing to return. Never raises.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..records import BOX_SLOT
from .codec import LocationInputs, ObjectMask, Turn
from .objects import BoxNorm, GroundedObject
from .scan import PHRASE_TOKENS, markup, ordered, pair, scanner, slot_box, tidy

TRIGGER_TOKEN = "<at>"
SLOT_TOKEN = "<boxes>"

_TRIGGER = r"<\s*at\s*>"
_SLOT = r"<\s*boxes\s*>"
_SCAN = scanner(_TRIGGER, _TRIGGER)
_AFTER_SLOT = re.compile(rf"\s*{_SLOT}")
_MARKUP = markup(rf"{_TRIGGER}|{_SLOT}")
# An earlier answer sent back as text (an API client's history) has lost its boxes: it holds only `<at> <boxes>`.
_LITERAL_LOCATION = re.compile(rf"{_TRIGGER}|{_SLOT}")
# An output location in decoded text (`<at> <boxes>`, the slot optional).
_TRIGGER_SLOT = re.compile(rf"{_TRIGGER}(?:\s*{_SLOT})?")


@dataclass(frozen=True)
class EmbeddingLocationCodec:
    """Boxes as a trigger token (output) and a slot token whose embedding encodes the box (input)."""

    trigger: str = TRIGGER_TOKEN
    slot: str = SLOT_TOKEN
    has_heads = True  # the box encoder / decoder (not a dataclass field: a ClassVar-like constant)
    frame = None  # groundlm's own format: boxes of the model's frame, whichever it is
    pixels = False  # no numbers in the text at all

    # ---- text -----------------------------------------------------------------------------------------------
    def render(self, content: str, boxes_norm: Sequence[Sequence[float]], *, output: bool = True) -> str:
        """Replace each `<box:i>` slot by `<at><boxes>` (`output`, an assistant turn) or `<boxes>` (a user turn).

        The text carries no coordinates; `slot_boxes(content, boxes_norm)` gives the boxes in slot order.
        """
        mark = self.trigger + self.slot if output else self.slot
        self.slot_boxes(content, boxes_norm)  # raises on a slot without a box
        return BOX_SLOT.sub(mark, content)

    def slot_boxes(self, content: str, boxes_norm: Sequence[Sequence[float]]) -> list[BoxNorm]:
        """The boxes of the `<box:i>` slots of `content`, in the order the slots appear."""
        out: list[BoxNorm] = []
        for slot in BOX_SLOT.finditer(content):
            b = slot_box(slot, boxes_norm)
            out.append((float(b[0]), float(b[1]), float(b[2]), float(b[3])))
        return out

    def parse(self, text: str, decoded: Sequence[Sequence[float]] = ()) -> list[GroundedObject]:
        """The grounded objects of a generated answer: the i-th `<at>` with `decoded[i]` ([0, 1]).

        A trigger without a box (none given, or fewer boxes than triggers) gives no object. Never raises.
        """
        if not decoded:
            return []
        boxes = iter(decoded)

        def next_box(_: re.Match[str]) -> list[BoxNorm]:
            box = next(boxes, None)
            return [] if box is None else [_valid_box(box)]

        # Several boxes of one phrase: the next trigger after `<boxes>` keeps the phrase.
        return pair(text, _SCAN, next_box, _after_slot)

    def to_slots(self, text: str, first: int = 0, *, output: bool = True) -> tuple[str, list[BoxNorm]]:
        """`text` unchanged and no boxes: this format writes no coordinates, so a text holds no box to read back
        (`history` turns a generated answer into slots with its decoded boxes instead)."""
        return (text if isinstance(text, str) else ""), []

    def strip(self, text: str) -> str:
        """The human-readable answer: phrases kept, `<p>` tags, `<at>` and `<boxes>` removed."""
        return tidy(text, _MARKUP) if isinstance(text, str) else ""

    def special_tokens(self) -> list[str]:
        """Tokens the tokenizer must keep whole: `<p>`, `</p>`, the trigger and the slot."""
        return [*PHRASE_TOKENS, self.trigger, self.slot]

    def added_tokens(self) -> list[str]:
        """All of `special_tokens`: the trigger and slot must be one id each."""
        return self.special_tokens()

    def coordinate_tokens(self) -> None:
        """None: a box is an embedding, not coordinate tokens."""
        return None

    def history(self, text: str, objects: Sequence[GroundedObject], first: int) -> tuple[str, list]:
        """Each `<at><boxes>` of the answer as a `<box:k>` slot of its decoded box (pixels), numbered from
        `first`, so the box goes back in through the box encoder; a trigger without a box leaves nothing."""
        found = iter(objects)
        boxes: list = []

        def slot(_: re.Match[str]) -> str:
            obj = next(found, None)
            if obj is None or obj.box is None:
                return ""
            boxes.append(list(obj.box))
            return f"<box:{first + len(boxes) - 1}>"

        return _TRIGGER_SLOT.sub(slot, text), boxes

    # ---- tokenizer and model settings ---------------------------------------------------------------------
    def _ids(self, tokenizer) -> tuple[int, int]:
        return tokenizer.convert_tokens_to_ids(self.slot), tokenizer.convert_tokens_to_ids(self.trigger)

    def check_tokenizer(self, tokenizer) -> None:
        for token, tid in zip((self.slot, self.trigger), self._ids(tokenizer), strict=True):
            if tid is None or tid == tokenizer.unk_token_id:
                raise ValueError(f"the tokenizer has no token for the location token {token!r}")

    def head_settings(self, tokenizer) -> dict:
        """The location heads' token ids (`modeling/location_heads.py`, `LocationHeadConfig`)."""
        slot_id, trigger_id = self._ids(tokenizer)
        return {"trigger_token_id": trigger_id, "slot_token_id": slot_id}

    # ---- training -----------------------------------------------------------------------------------------
    def clean(self, content: str) -> str:
        """Drop `<at>`/`<boxes>` written as text: without their boxes they cannot be fed to the model."""
        return _LITERAL_LOCATION.sub("", content)

    def never_targets(self, tokenizer) -> list[int]:
        """The slot: its embedding comes from the box encoder, and decoding forces it after every trigger."""
        return [self._ids(tokenizer)[0]]

    def encode_locations(
        self, turns: Sequence[Turn], boxes_norm: Sequence[Sequence[float]], input_ids: Sequence[int],
        tokenizer, object_mask: ObjectMask,
    ) -> dict:
        """`slot_boxes`, `trigger_boxes` and `trigger_masks` (None unless every trigger's object has a mask)."""
        slot_boxes: list[BoxNorm] = []
        trigger_boxes: list[BoxNorm] = []
        trigger_objects: list[int] = []
        for content, output in turns:
            in_order = self.slot_boxes(content, boxes_norm)
            slot_boxes += in_order
            if output:
                trigger_boxes += in_order
                trigger_objects += [int(s.group(1)) for s in BOX_SLOT.finditer(content)]
        slot_id, trigger_id = self._ids(tokenizer)
        for name, tid, found in (("slot", slot_id, slot_boxes), ("trigger", trigger_id, trigger_boxes)):
            n = sum(1 for t in input_ids if t == tid)
            if n != len(found):
                raise ValueError(
                    f"the conversation holds {n} {name} tokens but its <box:i> slots give {len(found)} boxes; "
                    "location tokens may only come from <box:i> slots"
                )
        masks = [object_mask(i) for i in trigger_objects]
        whole = bool(masks) and all(m is not None for m in masks)
        return {"slot_boxes": slot_boxes, "trigger_boxes": trigger_boxes, "trigger_masks": masks if whole else None}

    def collate(self, locations: Sequence[dict]) -> LocationInputs:
        """The batch's boxes as float32 [N, 4] in reading order; `trigger_masks` [N_trigger, S, S] only when
        every trigger of the batch has one (a segmentation source's batch)."""
        out = LocationInputs()
        for key in ("slot_boxes", "trigger_boxes"):
            rows = [b for loc in locations for b in loc.get(key, ())]
            out[key] = torch.tensor(rows, dtype=torch.float32).reshape(len(rows), 4)
        if out["trigger_boxes"].shape[0] and all(
            loc.get("trigger_masks") is not None or not loc.get("trigger_boxes") for loc in locations
        ):
            masks = [m for loc in locations for m in (loc.get("trigger_masks") or [])]
            out["trigger_masks"] = torch.from_numpy(np.stack(masks)).float()  # [N_trigger, S, S]
        return out

    # ---- decoding -----------------------------------------------------------------------------------------
    def decode_hook(self, model, rows: int) -> TriggerFeedback:
        heads = getattr(model, "location_heads", None)
        if heads is None:
            raise ValueError("the embedding codec needs a model with location heads (location_codec='embedding')")
        return TriggerFeedback(model, rows)


class TriggerFeedback:
    """The decode hook: after a trigger, force the slot and give it the box encoder's embedding of the box the
    decoder reads off the trigger's hidden state; keep the boxes and hidden states for parsing and masks."""

    needs_hidden = True

    def __init__(self, model, rows: int):
        self.model = model
        self.heads = model.location_heads
        self.trigger = self.heads.config.trigger_token_id
        self.slot = self.heads.config.slot_token_id
        self.boxes: list[list[BoxNorm]] = [[] for _ in range(rows)]
        self.hidden: list[list[torch.Tensor]] = [[] for _ in range(rows)]  # [D] at each trigger

    def prompt_inputs(self, location_inputs: dict | None) -> dict | None:
        # a prompt's slots feed the box encoder; it has no triggers, so no box targets or losses
        return None if location_inputs is None else {"slot_boxes": location_inputs["slot_boxes"]}

    def step(self, last, hidden, chosen, done):
        at_trigger = (last == self.trigger) & ~done  # [B]: these rows now place the slot, carrying the box
        nxt = torch.where(at_trigger, torch.full_like(chosen, self.slot), chosen)
        embeds = self.model.get_input_embeddings()(nxt)  # [B, D]
        if at_trigger.any():
            boxes = self.heads.decode(hidden[at_trigger])  # [n, 4]
            embeds = embeds.clone()
            embeds[at_trigger] = self.heads.encode(boxes).to(embeds.dtype)
            for row, box in zip(at_trigger.nonzero()[:, 0].tolist(), boxes.float().tolist(), strict=True):
                self.boxes[row].append((box[0], box[1], box[2], box[3]))
                self.hidden[row].append(hidden[row])
        return nxt, embeds

    def decoded(self, row: int) -> list[BoxNorm]:
        return self.boxes[row]

    def masks(self, pixel_values: torch.Tensor | None, frames: Sequence) -> list[list[dict]]:
        """Masks of every decoded box (COCO RLE in original pixels), per row; [] per row without a mask decoder.

        `pixel_values` [B, 3, S, S] must hold one image per row (the mask decoder reads that row's patches).
        """
        from ..masks import mask_from_frame, rle_encode

        decoder = self.heads.mask_decoder
        flat = [(row, h) for row, hs in enumerate(self.hidden) for h in hs]
        if decoder is None or not flat or pixel_values is None or pixel_values.shape[0] != len(frames):
            return [[] for _ in frames]
        rows = torch.tensor([row for row, _ in flat], device=pixel_values.device)
        hidden = torch.stack([h for _, h in flat])  # [N, D]
        boxes = torch.tensor([b for bs in self.boxes for b in bs], dtype=torch.float32).reshape(-1, 4)  # [N, 4]
        logits = decoder.predict(self.model, pixel_values, hidden, rows, boxes.to(pixel_values.device))  # [N, S, S]
        out: list[list[dict]] = [[] for _ in frames]
        for (row, _), mask in zip(flat, (logits > 0).cpu().numpy(), strict=True):
            out[row].append(rle_encode(mask_from_frame(mask, frames[row])))
        return out


def _valid_box(b: Sequence[float]) -> BoxNorm:
    """A decoded box as a valid box of the frame: corners ordered (the decoder has no such constraint) and
    clamped to [0, 1], like the text codec's swapped corners and bounded bins."""
    return ordered([min(max(float(v), 0.0), 1.0) for v in b[:4]])


def _after_slot(text: str, pos: int) -> int:
    """The position after an optional `<boxes>` (and whitespace) starting at `pos`."""
    m = _AFTER_SLOT.match(text, pos)
    return m.end() if m else pos


__all__ = ["SLOT_TOKEN", "TRIGGER_TOKEN", "EmbeddingLocationCodec", "TriggerFeedback"]

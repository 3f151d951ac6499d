"""The processor: conversations and images in, model tensors out; generated text in, grounded objects out.

It joins the three pieces that decide what the model sees:
- the chat template (`templates.py`) gives the conversation as segments, each marked as target or not, so the
  label mask follows the structure of the conversation (answer + end token only);
- the location codec (`location_codecs.make_codec`: text, `<loc_k>` tokens or NExT-Chat's embeddings) writes
  every `<box:i>` slot in the model's own location format, with boxes normalised to the model's input frame
  (`geometry.Frame`); the embedding codec's boxes travel beside the ids as `slot_boxes` / `trigger_boxes`;
- the image transform (`images.py`) makes the square pixel tensor, and the single `<image>` placeholder is
  expanded here to exactly `num_image_tokens` copies (the transformers convention), so the model only scatters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .geometry import Frame
from .images import CLIP_MEAN, CLIP_STD, ImageInput, ImageTransform, load_image
from .location import BoxNorm, GroundedObject
from .location_codecs import make_codec
from .location_embedding import EmbeddingLocationCodec
from .records import BOX_SLOT
from .templates import ChatTemplate, get_template
from .visual_prompts import POINT_SLOT, with_points

IGNORE_INDEX = -100
PROCESSOR_FILE = "groundlm_processor.json"


@dataclass
class ProcessorConfig:
    """Everything besides the tokenizer that turns a conversation into tensors. Saved as JSON with the model."""

    template: str = "llama2"
    image_size: int = 224
    frame: str = "resize"
    num_image_tokens: int = 256
    image_token: str = "<image>"
    location_bins: int = 100
    location_codec: str = "text"  # text | tokens | embedding (location_codecs.make_codec)
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    max_length: int | None = None  # None: never truncate (truncation would cut image tokens or answers)


class EmptyTargetError(ValueError):
    """A training conversation has no supervised token (its label mask would be all -100)."""


@dataclass
class Encoded:
    """One tokenised conversation: `input_ids` and `labels` (-100 outside the answers), same length."""

    input_ids: list[int]
    labels: list[int]
    frame: Frame | None = None
    pixel_values: torch.Tensor | None = None  # [3, S, S]
    meta: dict = field(default_factory=dict)
    # Embedding codec only (location_embedding.py): the box of every slot token and of every trigger token,
    # in sequence order, normalised to the frame. None for the text and tokens codecs.
    slot_boxes: list[BoxNorm] | None = None
    trigger_boxes: list[BoxNorm] | None = None
    trigger_masks: list | None = None  # [S, S] bool arrays (frame), one per trigger, when the objects have masks


class GroundLMProcessor:
    """Template + location codec + image transform + tokenizer, for training and for inference."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: ProcessorConfig):
        self.tokenizer = tokenizer
        self.config = config
        self.template: ChatTemplate = get_template(config.template)
        self.codec = make_codec(config)
        self.embeds_locations = isinstance(self.codec, EmbeddingLocationCodec)
        if self.embeds_locations:
            self.slot_token_id = tokenizer.convert_tokens_to_ids(self.codec.slot)
            self.trigger_token_id = tokenizer.convert_tokens_to_ids(self.codec.trigger)
            for token, tid in ((self.codec.slot, self.slot_token_id), (self.codec.trigger, self.trigger_token_id)):
                if tid is None or tid == tokenizer.unk_token_id:
                    raise ValueError(f"the tokenizer has no token for the location token {token!r}")
        self.transform = ImageTransform(config.image_size, config.frame, tuple(config.mean), tuple(config.std))
        self.image_token_id = tokenizer.convert_tokens_to_ids(config.image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no token for the image placeholder {config.image_token!r}")
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token; batching needs one")

    # ---- images -------------------------------------------------------------------------------------------
    def image(self, source: ImageInput) -> tuple[torch.Tensor, Frame]:
        """Load `source` and return its pixel tensor [3, S, S] and its frame."""
        return self.transform(load_image(source))

    # ---- text ---------------------------------------------------------------------------------------------
    def render_locations(
        self, content: str, boxes: Sequence[Sequence[float]], frame: Frame | None, *, output: bool = False
    ) -> str:
        """Replace the `<box:i>` slots of `content` by the codec's text for `boxes[i]` (original pixels).

        `output` says the content is an assistant turn (locations the model writes); only the embedding codec
        writes those differently (`<at><boxes>` instead of `<boxes>`).
        """
        if not BOX_SLOT.search(content):
            return content
        if frame is None:
            raise ValueError(f"{content!r} points at boxes but no image frame is given to normalise them")
        return self.codec.render(content, [frame.normalize(b) for b in boxes], output=output)

    def encode(
        self,
        messages: Sequence,
        *,
        boxes: Sequence[Sequence[float]] = (),
        frame: Frame | None = None,
        image: bool = True,
        add_generation_prompt: bool = False,
        masks: Sequence | None = None,
    ) -> Encoded:
        """Tokenise one conversation; labels keep only the template's target segments (answers + end token).

        `messages` are `records.Message`s or `{"role", "content"}` dicts whose content may hold `<box:i>` slots
        referring to `boxes` (pixels of the original image). `masks` (optional, the objects' COCO segmentations,
        None where absent) give the embedding codec's mask targets per trigger. Raises `EmptyTargetError` for a training
        conversation without any supervised token rather than silently training on nothing.
        """
        rendered = []
        slot_boxes: list[BoxNorm] = []
        trigger_boxes: list[BoxNorm] = []
        trigger_objects: list[int] = []
        for i, m in enumerate(messages):
            role, content = (m["role"], m["content"]) if isinstance(m, dict) else (m.role, m.content)
            if self.config.image_token in content:
                raise ValueError(
                    f"messages[{i}].content contains the image placeholder {self.config.image_token!r}; "
                    "the processor places the image itself"
                )
            if role == "assistant" and not content.strip():
                raise ValueError(f"messages[{i}].content: empty assistant answer; there is nothing to learn")
            output = role == "assistant"
            if self.embeds_locations:
                # An earlier answer sent back as text (an API client's history) has lost its boxes: the text
                # holds only `<at> <boxes>`. Its locations are dropped rather than fed without a box.
                content = _LITERAL_LOCATION.sub("", content)
            if self.embeds_locations and BOX_SLOT.search(content):
                in_order = self.codec.slot_boxes(content, [frame.normalize(b) for b in boxes] if frame else [])
                slot_boxes += in_order
                trigger_boxes += in_order if output else []
                trigger_objects += [int(s.group(1)) for s in BOX_SLOT.finditer(content)] if output else []
            rendered.append(
                {"role": role, "content": self.render_locations(content, boxes, frame, output=output)}
            )
        segments = self.template.render(rendered, image=image, add_generation_prompt=add_generation_prompt)

        expanded = self.config.image_token * self.config.num_image_tokens
        input_ids: list[int] = []
        labels: list[int] = []
        for seg in segments:
            ids = self.tokenizer(seg.text.replace(self.config.image_token, expanded), add_special_tokens=False)[
                "input_ids"
            ]
            input_ids += ids
            labels += ids if seg.target else [IGNORE_INDEX] * len(ids)
        n_image = sum(1 for t in input_ids if t == self.image_token_id)
        if n_image != (self.config.num_image_tokens if image else 0):
            raise ValueError(
                f"the prompt tokenised to {n_image} image tokens, expected "
                f"{self.config.num_image_tokens if image else 0}; does the tokenizer keep "
                f"{self.config.image_token!r} as one token?"
            )
        if self.config.max_length is not None and len(input_ids) > self.config.max_length:
            raise ValueError(f"conversation is {len(input_ids)} tokens, above max_length {self.config.max_length}")
        if not add_generation_prompt and all(t == IGNORE_INDEX for t in labels):
            raise EmptyTargetError("the conversation has no assistant tokens to learn from")
        if not self.embeds_locations:
            return Encoded(input_ids, labels, frame)
        # The slot after a trigger is never a target (NExT-Chat): its embedding comes from the box encoder, and
        # in generation it is forced after every trigger rather than predicted.
        labels = [IGNORE_INDEX if t == self.slot_token_id else y for t, y in zip(input_ids, labels, strict=True)]
        for name, tid, found in (
            ("slot", self.slot_token_id, slot_boxes), ("trigger", self.trigger_token_id, trigger_boxes)
        ):
            n = sum(1 for t in input_ids if t == tid)
            if n != len(found):
                raise ValueError(
                    f"the conversation holds {n} {name} tokens but its <box:i> slots give {len(found)} boxes; "
                    "location tokens may only come from <box:i> slots"
                )
        trigger_masks = self._trigger_masks(masks, trigger_objects, frame)
        return Encoded(input_ids, labels, frame, slot_boxes=slot_boxes, trigger_boxes=trigger_boxes,
                       trigger_masks=trigger_masks)

    def _trigger_masks(self, masks: Sequence | None, objects: list[int], frame: Frame | None) -> list | None:
        """The frame masks [S, S] of the triggers' objects, or None unless every one of them has a mask."""
        if masks is None or frame is None or not objects:
            return None
        if any(i >= len(masks) or masks[i] is None for i in objects):
            return None
        from .masks import decode_mask, mask_to_frame

        size = self.config.image_size
        return [mask_to_frame(decode_mask(masks[i], frame.height, frame.width), frame, size) for i in objects]

    def prompt(
        self, image: ImageInput | None, messages: Sequence, boxes: Sequence = (), points: Sequence = ()
    ) -> Encoded:
        """Encode a conversation that ends with a user turn, ready for generation, with its image.

        `<box:i>` slots point at `boxes[i]`, `<point:j>` slots at the click `points[j]` ([x, y] pixels), which
        becomes a small box (`visual_prompts.py`).
        """
        pixel_values, frame = self.image(image) if image is not None else (None, None)
        if points or any(POINT_SLOT.search(_content(m)) for m in messages):
            rewritten = []
            for m in messages:
                content, new_boxes = with_points(_content(m), boxes, points, frame)
                rewritten.append({"role": m["role"] if isinstance(m, dict) else m.role, "content": content})
            messages, boxes = rewritten, new_boxes
        enc = self.encode(messages, boxes=boxes, frame=frame, image=image is not None, add_generation_prompt=True)
        enc.pixel_values = pixel_values
        return enc

    def pad(self, batch: Sequence[Encoded], *, side: str = "left") -> dict[str, torch.Tensor]:
        """Stack encoded conversations into tensors: `input_ids`, `attention_mask`, `labels`, `pixel_values`.

        Left padding for generation (new tokens follow every prompt directly), right padding for training.
        Samples without an image contribute no rows to `pixel_values`. With the embedding codec the batch also
        holds `slot_boxes` [N_slot, 4] and `trigger_boxes` [N_trigger, 4] (float32, in reading order).
        """
        width = max(len(e.input_ids) for e in batch)
        pad_id = self.tokenizer.pad_token_id
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, e in enumerate(batch):
            n = len(e.input_ids)
            cols = slice(width - n, width) if side == "left" else slice(0, n)
            ids[row, cols] = torch.tensor(e.input_ids)
            labels[row, cols] = torch.tensor(e.labels)
            mask[row, cols] = 1
        out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        pixels = [e.pixel_values for e in batch if e.pixel_values is not None]
        if pixels:
            out["pixel_values"] = torch.stack(pixels)  # [B_img, 3, S, S]
        if self.embeds_locations:
            for key in ("slot_boxes", "trigger_boxes"):
                rows = [b for e in batch for b in (getattr(e, key) or [])]
                out[key] = torch.tensor(rows, dtype=torch.float32).reshape(len(rows), 4)
            # Mask targets only when every trigger of the batch has one (a segmentation source's batch).
            if out["trigger_boxes"].shape[0] and all(e.trigger_masks is not None or not e.trigger_boxes for e in batch):
                masks = [m for e in batch for m in (e.trigger_masks or [])]
                out["trigger_masks"] = torch.from_numpy(np.stack(masks)).float()  # [N_trigger, S, S]
        return out

    # ---- answers ------------------------------------------------------------------------------------------
    def decode(self, ids: Sequence[int]) -> str:
        """Generated token ids → answer text, cut at the template's stop string."""
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        stop = self.template.stop.strip()
        if stop and stop in text:
            text = text[: text.index(stop)]
        return text.strip()

    def parse(
        self, text: str, frame: Frame | None, boxes: Sequence[Sequence[float]] | None = None
    ) -> list[GroundedObject]:
        """The grounded objects of an answer, with boxes also mapped back to original-image pixels.

        `boxes` are the embedding codec's decoded boxes ([0, 1], one per trigger, from `generation.py`).
        """
        objects = self.codec.parse(text, boxes) if self.embeds_locations else self.codec.parse(text)
        if frame is not None:
            for obj in objects:
                obj.box = tuple(frame.denormalize(obj.box_norm))
        return objects

    @property
    def stop_token_id(self) -> int | None:
        """The id of the template's stop string when it is a single token (else generation uses stop strings)."""
        ids = self.tokenizer(self.template.stop, add_special_tokens=False)["input_ids"]
        return ids[0] if len(ids) == 1 else None

    # ---- persistence --------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        """Write the tokenizer files and `groundlm_processor.json` into `directory`."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        (directory / PROCESSOR_FILE).write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> GroundLMProcessor:
        """Load a processor saved by `save_pretrained` from a local directory."""
        directory = Path(directory)
        path = directory / PROCESSOR_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: is {directory} a groundlm model directory?")
        try:
            fields = json.loads(path.read_text())
            config = ProcessorConfig(**fields)
        except (json.JSONDecodeError, TypeError) as err:
            raise ValueError(f"{path}: invalid processor config: {err}") from err
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        return cls(tokenizer, config)


_LITERAL_LOCATION = re.compile(r"<\s*at\s*>|<\s*boxes\s*>")


def _content(message) -> str:
    """The content of a `records.Message` or a `{"role", "content"}` dict."""
    return message["content"] if isinstance(message, dict) else message.content

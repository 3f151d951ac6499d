"""The processor: conversations and images in, model tensors out; generated text in, grounded objects out.

It joins the three pieces that decide what the model sees:
- the chat template (`templates.py`) gives the conversation as segments, each marked as target or not, so the
  label mask follows the structure of the conversation (answer + end token only);
- the location codec (`location.make_codec`: text, `<loc_k>` tokens or NExT-Chat's embeddings) writes
  every `<box:i>` slot in the model's own location format, with boxes normalised to the model's input frame
  (`geometry.Frame`); what a codec needs beside the ids travels in `Encoded.locations` and, batched by the
  codec's `collate`, as the model's `location_inputs`;
- the image transform (`images.py`) makes the square pixel tensor, and the single `<image>` placeholder is
  expanded here to exactly `num_image_tokens` copies (the transformers convention), so the model only scatters.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from .geometry import Frame
from .images import CLIP_MEAN, CLIP_STD, ImageInput, ImageTransform, load_image
from .location import GroundedObject, LocationCodec, make_codec
from .modeling.marks import mark_map
from .records import BOX_SLOT
from .templates import IMAGE_PLACEHOLDER, ChatTemplate, get_template
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
    location_codec: str = "text"  # text | tokens | embedding (location.make_codec)
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    pad_color: tuple[int, int, int] | None = None  # the `pad` frame's fill; None: the mean colour (LLaVA)
    max_length: int | None = None  # None: never truncate (truncation would cut image tokens or answers)
    # The tower's patch grid side when the model marks the user's boxes on it (modeling/marks.py); 0: no marks.
    mark_grid: int = 0


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
    locations: dict = field(default_factory=dict)  # the codec's `encode_locations` ({} for text codecs)
    marks: torch.Tensor | None = None  # [G*G] the user's boxes on the patch grid (`mark_grid`), else None


class GroundLMProcessor:
    """Template + location codec + image transform + tokenizer, for training and for inference."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: ProcessorConfig):
        self.tokenizer = tokenizer
        self.config = config
        self.template: ChatTemplate = get_template(config.template)
        self.codec = make_codec(config)
        self.codec.check_tokenizer(tokenizer)
        self.transform = ImageTransform(
            config.image_size, config.frame, tuple(config.mean), tuple(config.std),
            tuple(config.pad_color) if config.pad_color else None,
        )
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

        `output` says the content is an assistant turn (locations the model writes), which some codecs write
        differently (the embedding codec: `<at><boxes>` instead of `<boxes>`).
        """
        if not BOX_SLOT.search(content):
            return content
        return self._render(content, _normalized(boxes, frame), frame, output)

    def _render(self, content: str, boxes_norm: list, frame: Frame | None, output: bool) -> str:
        """`render_locations` with the boxes already normalised to `frame`."""
        if not BOX_SLOT.search(content):
            return content
        if frame is None:
            raise ValueError(f"{content!r} points at boxes but no image frame is given to normalise them")
        return self.codec.render(content, boxes_norm, output=output)

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
        turns: list[tuple[str, bool]] = []
        boxes_norm = _normalized(boxes, frame)  # once for every turn and for the codec's encode_locations
        for i, m in enumerate(messages):
            role, content = (m["role"], m["content"]) if isinstance(m, dict) else (m.role, m.content)
            if self.config.image_token in content or IMAGE_PLACEHOLDER in content:
                raise ValueError(
                    f"messages[{i}].content contains the image placeholder {self.config.image_token!r}; "
                    "the processor places the image itself"
                )
            if role == "assistant" and not content.strip():
                raise ValueError(f"messages[{i}].content: empty assistant answer; there is nothing to learn")
            output = role == "assistant"
            content = self.codec.clean(content)
            # a template that drops the user's words (plain) drops the locations in them too
            turns.append(("" if not output and self.template.ignore_user_text else content, output))
            rendered.append(
                {"role": role, "content": self._render(content, boxes_norm, frame, output)}
            )
        segments = self.template.render(rendered, image=image, add_generation_prompt=add_generation_prompt)

        expanded = self.config.image_token * self.config.num_image_tokens
        input_ids: list[int] = []
        labels: list[int] = []
        for seg in segments:
            # the template writes the placeholder `<image>`; the model's image token may be another (`<im_patch>`)
            ids = self.tokenizer(seg.text.replace(IMAGE_PLACEHOLDER, expanded), add_special_tokens=False)[
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
        unsupervised = set(self.codec.never_targets(self.tokenizer))
        if unsupervised:
            labels = [IGNORE_INDEX if t in unsupervised else y for t, y in zip(input_ids, labels, strict=True)]
        locations = self.codec.encode_locations(
            turns, boxes_norm, input_ids, self.tokenizer, lambda i: self._object_mask(masks, i, frame)
        )
        marks = None
        if self.config.mark_grid and image:
            pointed = {int(m.group(1)) for content, output in turns if not output for m in BOX_SLOT.finditer(content)}
            marks = mark_map([boxes_norm[i] for i in sorted(pointed)], self.config.mark_grid)
        return Encoded(input_ids, labels, frame, locations=locations, marks=marks)

    def _object_mask(self, masks: Sequence | None, i: int, frame: Frame | None):
        """The frame mask [S, S] (bool) of object `i`, or None when it has none."""
        if masks is None or frame is None or i >= len(masks) or masks[i] is None:
            return None
        from .masks import decode_mask, mask_to_frame

        return mask_to_frame(decode_mask(masks[i], frame.height, frame.width), frame, self.config.image_size)

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
        Samples without an image contribute no rows to `pixel_values`. A codec that needs more than the ids
        adds `location_inputs` (its `collate` of the samples' `locations`), which the model takes as is.
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
            if self.config.mark_grid:
                blank = torch.zeros(self.config.mark_grid**2)
                marks = [e.marks if e.marks is not None else blank for e in batch if e.pixel_values is not None]
                out["image_marks"] = torch.stack(marks)  # [B_img, G*G]
        location_inputs = self.codec.collate([e.locations for e in batch])
        if location_inputs is not None:
            out["location_inputs"] = location_inputs
        return out

    # ---- answers ------------------------------------------------------------------------------------------
    def decode(self, ids: Sequence[int]) -> str:
        """Generated token ids → answer text, cut at the template's stop string."""
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        stop = self.template.stop.strip()
        if stop and stop in text:
            text = text[: text.index(stop)]
        return text.strip()

    def codec_for(self, frame: Frame | None) -> LocationCodec:
        """The codec that reads an answer about an image of `frame`: a groundlm model's one codec, whatever the
        image (a family processor's can depend on the image, backends/base.py)."""
        return self.codec

    def parse(
        self, text: str, frame: Frame | None, decoded: Sequence[Sequence[float]] = ()
    ) -> list[GroundedObject]:
        """The grounded objects of an answer, with boxes also mapped back to original-image pixels.

        `decoded` are boxes a codec's decode hook produced ([0, 1] of the frame, in order; see `decoding.py`).
        """
        objects = self.codec.parse(text, decoded)
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


def _content(message) -> str:
    """The content of a `records.Message` or a `{"role", "content"}` dict."""
    return message["content"] if isinstance(message, dict) else message.content


def _normalized(boxes: Sequence[Sequence[float]], frame: Frame | None) -> list:
    """`boxes` (original pixels) as fractions of the model's input frame; [] without a frame."""
    return [frame.normalize(b) for b in boxes] if frame is not None else []

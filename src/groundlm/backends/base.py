"""What every backend shares: a processor with the surface `GroundLM` and its callers use, built on a family's
prompt conventions, frame and location codec.

`GroundLM` (inference.py), the server (serve/engine.py), the evaluation runner and the tool integrations only
ever call a processor's `prompt`, `image`, `encode`, `render_locations`, `pad`, `decode`, `parse`, `codec`
(`history`, `decode_hook`), `codec_for(frame)` (`strip`), `config.frame`, `config.image_token`, `tokenizer`,
`template.stop` and `stop_token_id`. `FamilyProcessor` gives all of them; a family module (one per family)
fills in four hooks:

- `ask_text(asked)`: the family's prompt for a groundlm task (`tasks.read_task`), e.g. Florence-2's
  `<OD>`, PaliGemma's `detect cat`, Kosmos-2's `<grounding>`; `UnsupportedTask` for a task it has no prompt for;
- `pixels(image)`: the model's image input and the `Frame` its boxes are relative to;
- `tokens(turns, image, add_generation_prompt)`: the family's token layout, with labels on the answer only;
- `collate(batch, side)`: a batch as the family's model takes it (its own extra inputs).

Boxes: a user's or a record's boxes (pixels of the original image) are normalised to the frame and written by
the family's codec (`location/`); an answer is parsed by the same codec and mapped back to pixels through the
frame. `codec_for(frame)` lets a family whose numbers depend on the image (Qwen2.5-VL's resized input) adapt
the codec per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..geometry import Frame
from ..images import ImageInput, load_image
from ..location import GroundedObject, LocationCodec
from ..processor import IGNORE_INDEX, EmptyTargetError, Encoded
from ..records import BOX_SLOT
from ..templates import IMAGE_PLACEHOLDER
from ..visual_prompts import POINT_SLOT, with_points
from .generation import transformers_loop
from .tasks import Asked, UnsupportedTask, read_task


@dataclass(frozen=True)
class FamilyConfig:
    """What callers read of a processor's config: the frame mode (every family here squashes or resizes the
    image without padding) and the image placeholder, which a prompt must not contain."""

    frame: str = "resize"
    image_token: str = "<image>"


@dataclass(frozen=True)
class EndOfAnswer:
    """The `template.stop` callers read: the text of the token a family ends its answers with."""

    stop: str


@dataclass
class Turn:
    """One turn with its locations written in the family's format: `role`, the text the family sees."""

    role: str
    text: str


@dataclass
class FamilyTokens:
    """A family's token layout of a conversation: ids, labels (-100 outside the answer) and what `collate`
    needs beside them (e.g. where the answer starts, where the image embeddings go)."""

    input_ids: list[int]
    labels: list[int]
    meta: dict = field(default_factory=dict)


class FamilyProcessor:
    """The processor of a transformers model family; see the module docstring for the hooks."""

    family = ""  # the family's name in errors and docs
    chat = False  # whether the family takes a system prompt and multi-turn history
    tasks: tuple[str, ...] = ()  # the groundlm task tags the family has a prompt for
    prompts: dict[str, str] = {}  # task tag -> the family's prompt, `{}` where the subject goes (`ask_text`)
    needs_image = True  # whether every prompt must come with an image
    scores_continuations = True  # whether the model's forward on prompt + continuation gives its log-likelihood
    # how the family's model decodes a batch (`GroundLM.loop`): its `generate` on the whole batch
    loop = staticmethod(transformers_loop)

    def __init__(self, tokenizer, codec: LocationCodec, *, image_token: str, stop: str):
        self.tokenizer = tokenizer
        self.codec = codec
        self.config = FamilyConfig(image_token=image_token)
        self.template = EndOfAnswer(stop)
        self.stop_token_id = tokenizer.convert_tokens_to_ids(stop)
        if self.stop_token_id is None or self.stop_token_id == tokenizer.unk_token_id:
            raise ValueError(f"{self.family}: the tokenizer has no token for the end of an answer {stop!r}")
        if tokenizer.pad_token_id is None:
            raise ValueError(f"{self.family}: the tokenizer has no pad token; batching needs one")
        image_id = tokenizer.convert_tokens_to_ids(image_token)
        # ids that are never part of an answer's text: padding, the image placeholders, the sequence markers
        self.dropped = {
            i for i in (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, self.stop_token_id,
                        image_id) if i is not None
        }

    # ---- family hooks ------------------------------------------------------------------------------------
    def ask_text(self, asked: Asked) -> str:
        """The family's prompt for `asked` (its locations already written in the family's format): the words as
        given without a task tag, else the family's prompt for the task (`prompts`), with the subject in it."""
        if asked.task is None:
            return asked.words
        if asked.task not in self.prompts:
            raise self.unsupported(asked.task)
        return self.prompts[asked.task].format(asked.subject)

    def pixels(self, image) -> tuple[torch.Tensor, Frame]:
        """The model's image input for a PIL image, and its frame: by default the family's image processor
        squashing the image to its square (`image_processor`, set by the family)."""
        pixel_values = self.image_processor(images=[image], return_tensors="pt")["pixel_values"][0]  # [3, S, S]
        return pixel_values, Frame(image.width, image.height, "resize")

    def tokens(self, turns: Sequence[Turn], image: Frame | None, add_generation_prompt: bool) -> FamilyTokens:
        """The family's token layout of `turns` (`image`: the frame of the image, None without one)."""
        raise NotImplementedError

    def collate(self, batch: Sequence[Encoded], side: str) -> dict[str, torch.Tensor]:
        """The batch as the model's keyword inputs (`labels` included)."""
        raise NotImplementedError

    def save_pretrained(self, directory) -> None:
        """Write the family's processor files (tokenizer, image processor, template) as its checkpoints hold
        them, so a directory with the model's weights loads back through `groundlm.load` (a trained model)."""
        raise NotImplementedError(f"{self.family}: saving its processor is not supported")

    def codec_for(self, frame: Frame | None) -> LocationCodec:
        """The codec that writes and reads the numbers of an image with `frame` (the same for every image
        unless a family's numbers depend on the image)."""
        return self.codec

    def unsupported(self, task: str) -> UnsupportedTask:
        return UnsupportedTask(self.family, task, self.tasks)

    # ---- images ------------------------------------------------------------------------------------------
    def transform(self, image) -> tuple[torch.Tensor, Frame]:
        """A loaded PIL image's model input and frame (what `data/dataset.RecordDataset` calls)."""
        return self.pixels(image)

    def image(self, source: ImageInput) -> tuple[torch.Tensor, Frame]:
        """Load `source` safely (images.py) and return the model's image input and its frame."""
        return self.pixels(load_image(source))

    # ---- text --------------------------------------------------------------------------------------------
    def render_locations(
        self, content: str, boxes: Sequence[Sequence[float]], frame: Frame | None, *, output: bool = False
    ) -> str:
        """`content` with its `<box:i>` slots written in the family's format for `boxes[i]` (pixels)."""
        if not BOX_SLOT.search(content):
            return content
        if frame is None:
            raise ValueError(f"{content!r} points at boxes but no image frame is given to normalise them")
        return self.codec_for(frame).render(content, [frame.normalize(b) for b in boxes], output=output)

    def turns(self, messages: Sequence, boxes: Sequence[Sequence[float]], frame: Frame | None) -> list[Turn]:
        """The conversation as the family sees it: each user turn as the family's prompt for its task, each
        answer written in the family's location format."""
        out: list[Turn] = []
        for i, m in enumerate(messages):
            role, content = (m["role"], m["content"]) if isinstance(m, dict) else (m.role, m.content)
            if IMAGE_PLACEHOLDER in content or self.config.image_token in content:
                raise ValueError(f"messages[{i}].content contains an image placeholder; the processor places the image")
            if role == "assistant":
                if not content.strip():
                    raise ValueError(f"messages[{i}].content: empty assistant answer; there is nothing to learn")
                out.append(Turn(role, self.render_locations(content, boxes, frame, output=True)))
            elif role == "user":
                asked = read_task(content)
                written = Asked(asked.task, *(self.render_locations(t, boxes, frame) for t in (asked.subject, asked.words)))
                out.append(Turn(role, self.ask_text(written)))
            elif role == "system" and self.chat:
                out.append(Turn(role, content))
            else:
                raise ValueError(f"messages[{i}]: {self.family} takes no {role!r} turn (docs/other-models.md)")
        users = [t for t in out if t.role == "user"]
        if not self.chat and (len(users) != 1 or out[0].role != "user" or len(out) > 2):
            raise ValueError(
                f"{self.family} answers one prompt: a conversation of one user turn (and its answer when "
                f"training), got roles {[t.role for t in out]} (docs/other-models.md)"
            )
        return out

    def encode(
        self, messages: Sequence, *, boxes: Sequence[Sequence[float]] = (), frame: Frame | None = None,
        image: bool = True, add_generation_prompt: bool = False, masks: Sequence | None = None,
    ) -> Encoded:
        """Tokenise one conversation in the family's layout; labels keep only the answer (and its end token).
        `masks` are not used: none of these families is trained on masks here."""
        if image and frame is None:
            raise ValueError(f"{self.family}: a prompt with an image needs the image's frame")
        if not image and self.needs_image:
            raise ValueError(f"{self.family} answers about an image; the prompt has none")
        laid = self.tokens(self.turns(messages, boxes, frame), frame if image else None, add_generation_prompt)
        if not add_generation_prompt and all(y == IGNORE_INDEX for y in laid.labels):
            raise EmptyTargetError("the conversation has no assistant tokens to learn from")
        return Encoded(laid.input_ids, laid.labels, frame, meta=laid.meta)

    def prompt(
        self, image: ImageInput | None, messages: Sequence, boxes: Sequence = (), points: Sequence = ()
    ) -> Encoded:
        """Encode a conversation that ends with a user turn, ready for generation, with its image."""
        pixel_values, frame = self.image(image) if image is not None else (None, None)
        if points or any(POINT_SLOT.search(m["content"] if isinstance(m, dict) else m.content) for m in messages):
            rewritten = []
            for m in messages:
                role, content = (m["role"], m["content"]) if isinstance(m, dict) else (m.role, m.content)
                content, new_boxes = with_points(content, boxes, points, frame)
                rewritten.append({"role": role, "content": content})
            messages, boxes = rewritten, new_boxes
        enc = self.encode(messages, boxes=boxes, frame=frame, image=image is not None, add_generation_prompt=True)
        enc.pixel_values = pixel_values
        return enc

    def pad(self, batch: Sequence[Encoded], *, side: str = "left") -> dict[str, torch.Tensor]:
        """The batch as the family's model inputs (`input_ids`, `attention_mask`, `labels`, images, extras)."""
        return self.collate(batch, side)

    # ---- answers -----------------------------------------------------------------------------------------
    def decode(self, ids: Sequence[int]) -> str:
        """Generated ids → answer text. Location tokens are kept even when the tokenizer marks them special
        (Florence-2's `<loc_k>` are); only padding, sequence and image markers go."""
        kept = [i for i in ids if i not in self.dropped]
        return self.tokenizer.decode(kept, skip_special_tokens=False).strip()

    def parse(self, text: str, frame: Frame | None, decoded: Sequence[Sequence[float]] = ()) -> list[GroundedObject]:
        """The answer's grounded objects, boxes mapped back to pixels of the original image."""
        objects = self.codec_for(frame).parse(text, decoded)
        if frame is not None:
            for obj in objects:
                obj.box = tuple(frame.denormalize(obj.box_norm))
        return objects


def padded(rows: Sequence[Sequence[int]], value: int, side: str) -> torch.Tensor:
    """Rows of ints as one [B, T] tensor, padded with `value` on `side`."""
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            out[i, slice(width - len(r), width) if side == "left" else slice(0, len(r))] = torch.tensor(list(r))
    return out


def text_batch(batch: Sequence[Encoded], pad_id: int, side: str) -> dict[str, torch.Tensor]:
    """`input_ids`, `attention_mask` and `labels` of a batch, padded on `side`."""
    return {
        "input_ids": padded([e.input_ids for e in batch], pad_id, side),
        "attention_mask": padded([[1] * len(e.input_ids) for e in batch], 0, side),
        "labels": padded([e.labels for e in batch], IGNORE_INDEX, side),
    }


def shrink(config, **sizes) -> None:
    """Set `sizes` on a transformers sub-config; per-layer lists (`layer_types`) are cut to the new depth."""
    for name, value in sizes.items():
        setattr(config, name, value)
    depth = sizes.get("num_hidden_layers")
    if depth is not None and getattr(config, "layer_types", None):
        config.layer_types = list(config.layer_types[:depth])


def answer_labels(prompt: list[int], answer: list[int]) -> tuple[list[int], list[int]]:
    """Ids and labels of a prompt followed by its answer: the answer is the only target."""
    return prompt + answer, [IGNORE_INDEX] * len(prompt) + answer


__all__ = ["EndOfAnswer", "FamilyConfig", "FamilyProcessor", "FamilyTokens", "Turn", "answer_labels", "padded",
           "shrink", "text_batch"]

"""Using a model: `load(path)`, then `ask`, `ask_many` or a multi-turn `Chat`.

    model = groundlm.load("path/to/model")
    answer = model.ask("photo.jpg", "[refer] the red circle")
    answer.text, answer.objects[0].box   # box in pixels of the original image

Boxes the user points at go in as `<box:i>` slots in the prompt plus `boxes=[[x1, y1, x2, y2], ...]` in pixels:
`model.ask(img, "[identify] what is <box:0>", boxes=[[10, 20, 110, 90]])`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .geometry import Frame
from .images import ImageInput
from .location import GroundedObject
from .modeling import GroundLMForConditionalGeneration
from .processor import Encoded, GroundLMProcessor
from .records import BOX_SLOT
from .visual_prompts import with_points


@dataclass
class Answer:
    """A model's answer: its text (with location markup, as generated) and the objects it grounded."""

    text: str
    objects: list[GroundedObject] = field(default_factory=list)
    plain_text: str = ""  # the text with location markup removed, for people

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"text": self.text, "plain_text": self.plain_text, "objects": [o.to_dict() for o in self.objects]}


def _resolve(path: str | os.PathLike, local_files_only: bool | None) -> Path:
    """A local model directory for `path`: the path itself, or a hub snapshot (never fetched when offline)."""
    local = Path(path)
    if local.is_dir():
        return local
    if local.exists():
        raise ValueError(f"{local} is a file; a groundlm model is a directory (see `groundlm new-model`)")
    name = str(path)
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise FileNotFoundError(f"model directory {name!r} does not exist")
    from huggingface_hub import snapshot_download

    offline = local_files_only if local_files_only is not None else os.environ.get("HF_HUB_OFFLINE") == "1"
    try:
        return Path(snapshot_download(name, local_files_only=offline))
    except Exception as err:  # the hub client raises many types; all mean "not available here"
        how = "the hub is switched off (HF_HUB_OFFLINE=1)" if offline else "the hub could not be reached"
        raise FileNotFoundError(
            f"{name!r} is not a local directory and {how}; groundlm never downloads weights by itself in "
            f"offline mode: fetch the model on a machine with network and pass its local path ({err})"
        ) from err


def load(
    path: str | os.PathLike, *, device: str = "cpu", dtype: torch.dtype | None = None,
    local_files_only: bool | None = None,
) -> GroundLM:
    """Load a groundlm model directory (weights, config, tokenizer, processor) for inference."""
    directory = _resolve(path, local_files_only)
    model = GroundLMForConditionalGeneration.from_pretrained(directory, local_files_only=True, dtype=dtype)
    processor = GroundLMProcessor.from_pretrained(directory)
    return GroundLM(model.to(device).eval(), processor)


class GroundLM:
    """A model with its processor: the user-facing inference object."""

    def __init__(self, model: GroundLMForConditionalGeneration, processor: GroundLMProcessor):
        self.model = model
        self.processor = processor

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def ask(
        self, image: ImageInput | None, prompt: str, *, boxes: Sequence[Sequence[float]] = (),
        points: Sequence[Sequence[float]] = (), system: str | None = None, max_new_tokens: int = 64,
    ) -> Answer:
        """Answer one prompt about one image. `<box:i>` slots in `prompt` point at `boxes[i]` (pixels) and
        `<point:j>` slots at the click `points[j]` ([x, y] pixels; a small box, see visual_prompts.py)."""
        return self.ask_many(
            [image], [prompt], boxes=[boxes], points=[points], system=system, max_new_tokens=max_new_tokens
        )[0]

    def ask_many(
        self, images: Sequence[ImageInput | None], prompts: Sequence[str], *,
        boxes: Sequence[Sequence[Sequence[float]]] | None = None, system: str | None = None,
        max_new_tokens: int = 64, batch_size: int = 8, points: Sequence[Sequence[Sequence[float]]] | None = None,
    ) -> list[Answer]:
        """Answer a prompt per image, `batch_size` at a time, with left-padded batched greedy decoding."""
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        boxes = boxes if boxes is not None else [()] * len(prompts)
        points = points if points is not None else [()] * len(prompts)
        head = [{"role": "system", "content": system}] if system else []
        encoded = [
            self.processor.prompt(img, [*head, {"role": "user", "content": p}], b, pts)
            for img, p, b, pts in zip(images, prompts, boxes, points, strict=True)
        ]
        answers: list[Answer] = []
        for start in range(0, len(encoded), batch_size):
            answers += self._answer(encoded[start : start + batch_size], max_new_tokens)
        return answers

    def chat(self, image: ImageInput | None = None, *, system: str | None = None) -> Chat:
        """Start a multi-turn conversation about `image`."""
        return Chat(self, image, system)

    @torch.inference_mode()
    def _answer(self, batch: list[Encoded], max_new_tokens: int) -> list[Answer]:
        if self.processor.embeds_locations:
            from .generation import decode_masks

            generated, inputs = self._generate_located(batch, max_new_tokens)
            masks = decode_masks(self.model, inputs.get("pixel_values"), generated, [e.frame for e in batch])
            answers = []
            for ids, boxes, row_masks, e in zip(generated.ids, generated.boxes, masks, batch, strict=True):
                answer = self._to_answer(self.processor.decode(ids), e.frame, boxes)
                for obj, mask in zip(answer.objects, row_masks, strict=False):
                    obj.mask = mask  # COCO RLE in original pixels (the i-th mask is the i-th trigger's)
                answers.append(answer)
            return answers
        texts = self.generate(batch, max_new_tokens)
        return [self._to_answer(t, e.frame) for t, e in zip(texts, batch, strict=True)]

    def _to_answer(self, text: str, frame: Frame | None, boxes: list | None = None) -> Answer:
        return Answer(text, self.processor.parse(text, frame, boxes), self.processor.codec.strip(text))

    @torch.inference_mode()
    def generate_located(
        self, batch: list[Encoded], max_new_tokens: int, *, temperature: float = 0.0, top_p: float = 1.0
    ) -> list[tuple[str, list]]:
        """Embedding codec: decode prompts with trigger feedback (generation.py); (answer, decoded boxes) each.

        The boxes are [0, 1] of the frame, one per trigger of the answer, in order.
        """
        generated, _ = self._generate_located(batch, max_new_tokens, temperature=temperature, top_p=top_p)
        return [(self.processor.decode(ids), boxes) for ids, boxes in zip(generated.ids, generated.boxes, strict=True)]

    def _generate_located(self, batch: list[Encoded], max_new_tokens: int, *, temperature: float = 0.0,
                          top_p: float = 1.0):
        from .generation import generate_with_locations

        padded = self.processor.pad(batch, side="left")
        inputs = {k: v.to(self.device) for k, v in padded.items() if k not in ("labels", "trigger_boxes")}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        tok = self.processor.tokenizer
        stop_id = self.processor.stop_token_id
        stops = {stop_id if stop_id is not None else tok.eos_token_id}
        out = generate_with_locations(
            self.model, inputs, max_new_tokens=max_new_tokens, stop_token_ids=stops,
            pad_token_id=tok.pad_token_id, temperature=temperature, top_p=top_p,
        )
        return out, inputs

    @torch.inference_mode()
    def generate(
        self, batch: list[Encoded], max_new_tokens: int, *, temperature: float = 0.0, top_p: float = 1.0
    ) -> list[str]:
        """Decode already-encoded prompts; returns the answer of each.

        Greedy when `temperature` is 0 (the default, and what evaluation uses); otherwise sampling with
        `temperature` and nucleus `top_p`. With the embedding codec the texts come from `generate_located`
        (its boxes are then only in `ask`'s answers).
        """
        if self.processor.embeds_locations:
            located = self.generate_located(batch, max_new_tokens, temperature=temperature, top_p=top_p)
            return [text for text, _ in located]
        inputs = {k: v.to(self.device) for k, v in self.processor.pad(batch, side="left").items() if k != "labels"}
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        tok = self.processor.tokenizer
        stop_id = self.processor.stop_token_id
        extra = {"eos_token_id": stop_id} if stop_id is not None else {
            "stop_strings": [self.processor.template.stop], "tokenizer": tok
        }
        if temperature > 0:
            extra.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
        else:
            extra["do_sample"] = False
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, **extra)
        new = out[:, inputs["input_ids"].shape[1] :]  # [B, T_new]; left padding aligns every prompt's end
        return [self.processor.decode(row.tolist()) for row in new]


class Chat:
    """A multi-turn conversation about one image. Each `send` sees the whole history."""

    def __init__(self, lm: GroundLM, image: ImageInput | None, system: str | None):
        self.lm = lm
        self.pixel_values, self.frame = lm.processor.image(image) if image is not None else (None, None)
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []
        self.boxes: list = []  # embedding codec: every box of the history (pixels), which its slots point at

    def send(
        self, text: str, *, boxes: Sequence[Sequence[float]] = (), points: Sequence[Sequence[float]] = (),
        max_new_tokens: int = 64,
    ) -> Answer:
        """Add a user turn (its `<box:i>` slots point at `boxes`, `<point:j>` at `points`, in pixels) and
        return the model's answer."""
        text, boxes = with_points(text, boxes, points, self.frame)
        if self.lm.processor.embeds_locations:
            return self._send_slots(text, boxes, max_new_tokens)
        content = self.lm.processor.render_locations(text, boxes, self.frame)
        messages = [*self.messages, {"role": "user", "content": content}]
        enc = self.lm.processor.encode(
            messages, frame=self.frame, image=self.pixel_values is not None, add_generation_prompt=True
        )
        enc.pixel_values = self.pixel_values
        answer = self.lm._answer([enc], max_new_tokens)[0]
        self.messages = [*messages, {"role": "assistant", "content": answer.text}]
        return answer

    def _send_slots(self, text: str, boxes: list, max_new_tokens: int) -> Answer:
        """Embedding codec: the history keeps `<box:k>` slots (its boxes have no text), numbered into
        `self.boxes`; the model's own boxes from earlier answers go back in through the box encoder."""
        offset = len(self.boxes)
        content = BOX_SLOT.sub(lambda m: f"<box:{int(m.group(1)) + offset}>", text)
        self.boxes += [list(b) for b in boxes]
        messages = [*self.messages, {"role": "user", "content": content}]
        enc = self.lm.processor.encode(
            messages, boxes=self.boxes, frame=self.frame, image=self.pixel_values is not None,
            add_generation_prompt=True,
        )
        enc.pixel_values = self.pixel_values
        answer = self.lm._answer([enc], max_new_tokens)[0]
        found = iter(answer.objects)

        def slot(m: re.Match[str]) -> str:
            obj = next(found, None)
            if obj is None or obj.box is None:
                return ""  # a trigger without a decoded box leaves no location in the history
            self.boxes.append(list(obj.box))
            return f"<box:{len(self.boxes) - 1}>"

        history = _TRIGGER_SLOT.sub(slot, answer.text)
        self.messages = [*messages, {"role": "assistant", "content": history}]
        return answer


# The embedding codec's output location in decoded text (`<at> <boxes>`, the slot optional).
_TRIGGER_SLOT = re.compile(r"<\s*at\s*>(?:\s*<\s*boxes\s*>)?")

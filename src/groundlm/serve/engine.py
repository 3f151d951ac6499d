"""The model side of the server: encode a conversation into a job, generate a batch of jobs, shape the reply.

`prepare` runs in a request's thread (image decoding and tokenising are CPU work that must not block the event
loop) and raises `APIError`s for anything the model cannot take, so a job that reaches `run` only fails on a
server fault. `run` is called by the batcher's single worker thread with jobs that share a
`Decoding.batch_key`.

Greedy decoding goes through `GroundLM.generate`, the same left-padded batched decoding as
`GroundLM.ask_many`.
A non-zero `temperature` (with `top_p` > 0) samples instead: the logits are divided by the temperature and
tokens are drawn from the smallest set whose probability reaches `top_p` (nucleus sampling), per request,
without a fixed seed, so the same request can give different answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..geometry import Frame
from ..images import ImageError
from ..inference import Answer, GroundLM
from ..location import GroundedObject
from ..processor import Encoded
from .content import Conversation, Decoding
from .errors import APIError, bad_request
from .limits import Limits


@dataclass
class Job:
    """One request ready for generation: its tokens and image, its frame and how to decode."""

    encoded: Encoded
    decoding: Decoding
    image_size: tuple[int, int] | None


@dataclass
class Reply:
    """A generated answer with the counts an OpenAI response reports."""

    answer: Answer
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"
    image_size: tuple[int, int] | None
    decoding: str  # "greedy" | "sample"

    def objects(self) -> list[dict]:
        """The grounded objects as JSON-ready dicts (masks as COCO RLE)."""
        return [object_dict(o) for o in self.answer.objects]


def object_dict(obj: GroundedObject) -> dict:
    """One object as `{"phrase", "box", "box_norm", "mask"}`; an array mask becomes uncompressed COCO RLE."""
    mask = obj.mask
    if mask is not None and not isinstance(mask, dict | list):
        from ..masks import rle_encode

        array = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        mask = rle_encode(array.astype(bool))
    return {
        "phrase": obj.phrase,
        "box": None if obj.box is None else [round(float(v), 2) for v in obj.box],
        "box_norm": [float(v) for v in obj.box_norm],
        "mask": mask,
    }


class Engine:
    """A `GroundLM` behind the server: `prepare` requests, `run` batches."""

    def __init__(self, lm: GroundLM, limits: Limits):
        self.lm = lm
        self.limits = limits
        config = lm.model.config
        text_config = getattr(config, "text_config", config)
        # the language model's context: prompt + answer must fit, or generation would fail inside the model
        self.context = int(getattr(text_config, "max_position_embeddings", 0) or 0) or None

    def prepare(self, conversation: Conversation, decoding: Decoding) -> Job:
        """Load the image (pixel limit), render boxes into the text and tokenise; `APIError` on bad input."""
        image, size = None, None
        if conversation.image is not None:
            from ..images import load_image

            try:
                image = load_image(conversation.image, max_pixels=self.limits.max_image_pixels)
            except ImageError as err:
                status = 413 if "limit" in str(err) or "bomb" in str(err) else 400
                raise APIError(status, f"image refused: {err}", param="messages",
                               code="invalid_image") from err
            size = image.size
        try:
            encoded = self.lm.processor.prompt(image, conversation.messages, conversation.boxes)
        except (ValueError, IndexError) as err:  # template and slot errors say what is wrong with the input
            raise bad_request(str(err), param="messages") from err
        if self.context is not None and len(encoded.input_ids) + decoding.max_tokens > self.context:
            raise bad_request(
                f"the prompt is {len(encoded.input_ids)} tokens (image included) and max_tokens is "
                f"{decoding.max_tokens}: together above the model's context of {self.context} tokens",
                param="messages", code="context_length_exceeded",
            )
        return Job(encoded, decoding, size)

    def run(self, jobs: Sequence[Job]) -> list[Reply]:
        """Generate answers for jobs sharing one decoding key, in one batch."""
        decoding = jobs[0].decoding
        batch = [j.encoded for j in jobs]
        if self.lm.processor.embeds_locations:  # NExT-Chat's codec: the boxes come from the box decoder
            sampling = {} if decoding.greedy else {"temperature": decoding.temperature, "top_p": decoding.top_p}
            located = self.lm.generate_located(batch, decoding.max_tokens, **sampling)
            return [self._reply(job, text, boxes) for job, (text, boxes) in zip(jobs, located, strict=True)]
        if decoding.greedy:
            texts = self.lm.generate(batch, decoding.max_tokens)
        else:
            texts = self.lm.generate(
                batch, decoding.max_tokens, temperature=decoding.temperature, top_p=decoding.top_p
            )
        return [self._reply(job, text) for job, text in zip(jobs, texts, strict=True)]

    def _reply(self, job: Job, text: str, boxes: list | None = None) -> Reply:
        processor = self.lm.processor
        # decoded text is re-tokenised for the count: generate returns text, and the count only feeds `usage`
        completion_tokens = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        finish = "length" if completion_tokens >= job.decoding.max_tokens else "stop"
        cut = _cut_at_stop(text, job.decoding.stop)
        if cut is not None:
            text, finish = cut, "stop"
            completion_tokens = len(processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        frame: Frame | None = job.encoded.frame
        answer = Answer(text, processor.parse(text, frame, boxes), processor.codec.strip(text))
        return Reply(
            answer, len(job.encoded.input_ids), completion_tokens, finish, job.image_size,
            "greedy" if job.decoding.greedy else "sample",
        )


def _cut_at_stop(text: str, stops: Sequence[str]) -> str | None:
    """`text` up to the first stop string (excluded, as OpenAI does), or None when none occurs."""
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return text[: min(cuts)] if cuts else None

"""The model side of the server: encode a conversation into a job, generate a batch of jobs, shape the reply.

`prepare` runs in a request's thread (image decoding and tokenising are CPU work that must not block the event
loop) and raises `APIError`s for anything the model cannot take, so a job that reaches `run` only fails on a
server fault. `run` is called by the batcher's single worker thread with jobs that share a
`Decoding.batch_key`.

Decoding is `GroundLM.generate`, the same left-padded batched decoding (and mask decoding) as
`GroundLM.ask_many`, so the API returns what `ask` returns. A non-zero `temperature` (with `top_p` > 0)
samples instead: the logits are divided by the temperature and tokens are drawn from the smallest set whose
probability reaches `top_p` (nucleus sampling); with the request's `seed` its draws repeat (each row of a batch
draws from its own generator), without one the same request can give different answers. A job with `on_text` receives its answer's text piece by piece while it is decoded (called
in the worker thread).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..images import ImageError
from ..inference import Answer, GroundLM
from ..processor import Encoded
from .content import Conversation, Decoding
from .errors import APIError, bad_request
from .limits import Limits


@dataclass
class Job:
    """One request ready for generation: its tokens and image, its frame, how to decode, where text goes."""

    encoded: Encoded
    decoding: Decoding
    image_size: tuple[int, int] | None
    on_text: Callable[[str], None] | None = None


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
        """The grounded objects as JSON-ready dicts (`GroundedObject.to_dict`: masks as COCO RLE)."""
        return [o.to_dict() for o in self.answer.objects]


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

        def on_text(row: int, piece: str) -> None:
            send = jobs[row].on_text
            if send is not None:
                send(piece)

        streaming = any(j.on_text is not None for j in jobs)
        generations = self.lm.generate(
            [j.encoded for j in jobs], decoding.max_tokens, sampling=decoding.sampling, stop=decoding.stop,
            on_text=on_text if streaming else None,
        )
        how = "greedy" if decoding.sampling.greedy else "sample"
        return [
            Reply(g.answer, len(job.encoded.input_ids), g.completion_tokens, g.finish_reason, job.image_size, how)
            for job, g in zip(jobs, generations, strict=True)
        ]

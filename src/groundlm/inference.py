"""Using a model: `load(path)`, then `ask`, `ask_many` or a multi-turn `Chat`.

    model = groundlm.load("path/to/model")
    answer = model.ask("photo.jpg", "[refer] the red circle")
    answer.text, answer.objects[0].box   # box in pixels of the original image

Boxes the user points at go in as `<box:i>` slots in the prompt plus `boxes=[[x1, y1, x2, y2], ...]` in pixels:
`model.ask(img, "[identify] what is <box:0>", boxes=[[10, 20, 110, 90]])`.

Every answer is decoded by `GroundLM.generate` (the loop is `decoding.py`) and assembled by
`GroundLM.answer_for`, whoever asks: `ask`, `ask_many`, `Chat.send` and the server.

`load` also takes a transformers checkpoint of another family (Qwen2.5-VL, Florence-2, PaliGemma, Kosmos-2;
`backends/`, docs/other-models.md): its `GroundLM` holds the family's processor and decodes with the family's
own `generate` (`backends/generation.py`), and everything above works the same.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .decoding import GREEDY, Sampling, Step, generate, on_model
from .devices import resolve_device, resolve_dtype
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


@dataclass
class Generation:
    """A decoded answer with what a server reports: tokens generated (stop token included) and why it ended
    ("stop": a stop token or stop string; "length": `max_new_tokens` reached)."""

    answer: Answer
    completion_tokens: int
    finish_reason: str


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
    path: str | os.PathLike, *, device: str | torch.device = "auto", dtype: str | torch.dtype | None = "auto",
    local_files_only: bool | None = None,
) -> GroundLM:
    """Load a groundlm model directory (weights, config, tokenizer, processor) for inference.

    `device`: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda, cuda:N or mps; `dtype`: auto (the
    checkpoint's), float32, bfloat16 or float16 (devices.py). Both are checked before any weight is read."""
    where = resolve_device(device)
    precision = resolve_dtype(dtype)
    directory = _resolve(path, local_files_only)
    from .backends import family_of, load_family

    if family_of(directory) is not None:  # Qwen2.5-VL, Florence-2, PaliGemma, Kosmos-2 (backends/)
        model, family = load_family(directory, precision)
        return GroundLM(model.to(where).eval(), family, loop=family.loop)
    model = GroundLMForConditionalGeneration.from_pretrained(directory, local_files_only=True, dtype=precision)
    processor = GroundLMProcessor.from_pretrained(directory)
    return GroundLM(model.to(where).eval(), processor)


def own_loop(model, inputs: dict, *, on_step: Callable[[Step], None], **settings) -> None:
    """groundlm's decoding loop (`decoding.generate`), each `Step` handed to `on_step`."""
    for step in generate(model, inputs, **settings):
        on_step(step)


class GroundLM:
    """A model with its processor: the user-facing inference object.

    `loop` decodes a batch, handing each `Step` to `on_step`: groundlm's own loop, or for another family's
    model the family's `generate` (`backends.transformers_loop`)."""

    def __init__(self, model: GroundLMForConditionalGeneration, processor: GroundLMProcessor, *,
                 loop: Callable[..., None] = own_loop):
        self.model = model
        self.processor = processor
        self.loop = loop

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
            answers += [g.answer for g in self.generate(encoded[start : start + batch_size], max_new_tokens)]
        return answers

    def chat(self, image: ImageInput | None = None, *, system: str | None = None) -> Chat:
        """Start a multi-turn conversation about `image`."""
        return Chat(self, image, system)

    def generate(
        self, batch: list[Encoded], max_new_tokens: int, *, sampling: Sampling = GREEDY,
        stop: Sequence[str] = (), on_text: Callable[[int, str], None] | None = None,
    ) -> list[Generation]:
        """Decode already-encoded prompts (one batch, left-padded) into answers with their masks.

        `stop` strings end a row's answer where they first appear (cut before them, as OpenAI does), besides the
        template's stop. `on_text(row, piece)` receives each row's answer text as it grows (for streaming);
        the pieces of a row join to its final `answer.text`.
        """
        processor = self.processor
        inputs = on_model(self.model, {k: v for k, v in processor.pad(batch, side="left").items() if k != "labels"})
        tok = processor.tokenizer
        stop_id = processor.stop_token_id
        # A template stop of several tokens ends a row as a string, like `model.generate(stop_strings=...)`.
        stop_strings = [*stop, *([] if stop_id is not None else [processor.template.stop])]
        rows = len(batch)
        hook = processor.codec.decode_hook(self.model, rows)
        stream = _TextStream(processor, stop, stop_strings, on_text) if on_text is not None else None
        ids: list[list[int]] = [[] for _ in range(rows)]
        done = [False] * rows

        def take(step: Step) -> None:
            done[:] = step.done
            for row, token in enumerate(step.tokens):
                if token is not None:
                    ids[row].append(token)
                    if stream is not None:
                        stream.update(row, ids[row])

        self.loop(
            self.model, inputs, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
            stop_token_ids={stop_id if stop_id is not None else tok.eos_token_id}, sampling=sampling, hook=hook,
            stop_text=_stop_text(tok, stop_strings) if stop_strings else None, on_step=take,
        )
        frames = [e.frame for e in batch]
        masks = hook.masks(inputs.get("pixel_values"), frames) if hook is not None else [[] for _ in batch]
        out = []
        for row, e in enumerate(batch):
            text = _cut(processor.decode(ids[row]), stop)
            decoded = hook.decoded(row) if hook is not None else ()
            answer = self.answer_for(text, e.frame, decoded, masks[row])
            if stream is not None:
                stream.finish(row, answer.text)
            out.append(Generation(answer, len(ids[row]), "stop" if done[row] else "length"))
        return out

    def answer_for(
        self, text: str, frame: Frame | None, decoded: Sequence[Sequence[float]] = (), masks: Sequence = ()
    ) -> Answer:
        """The `Answer` of a generated text: its objects (boxes in pixels; `decoded` are a decode hook's
        boxes) with the i-th mask on the i-th object, and the plain text. Both are read by the codec of the
        image's frame: a family's numbers can depend on the image (Qwen2.5-VL's pixels of its resized input), and
        a codec that does not read an answer's boxes leaves them in its plain text."""
        objects = self.processor.parse(text, frame, decoded)
        for obj, mask in zip(objects, masks, strict=False):
            obj.mask = mask  # COCO RLE in original pixels
        return Answer(text, objects, self.processor.codec_for(frame).strip(text))


def _cut(text: str, stops: Sequence[str]) -> str:
    """`text` up to the first of `stops` (excluded), or all of it when none occurs."""
    cuts = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return text[: min(cuts)] if cuts else text


def _stop_text(tokenizer, stops: Sequence[str]) -> Callable[[int, list[int]], bool]:
    """Whether a row's newest tokens complete a stop string. Only the tail is decoded (a stop of L characters
    ends within the last L + 1 tokens), so the check stays linear in the answer's length."""
    tail = max(len(s) for s in stops) + 1

    def stopped(row: int, ids: list[int]) -> bool:
        text = tokenizer.decode(ids[-tail:], skip_special_tokens=False)
        return any(s and s in text for s in stops)

    return stopped


class _TextStream:
    """Turns each row's growing token ids into text pieces for `on_text`, never sending what a later token
    could take back: a suffix that may start a stop string waits, and a piece is sent only while the text
    still extends what was sent."""

    def __init__(self, processor: GroundLMProcessor, stop: Sequence[str], stop_strings: Sequence[str],
                 on_text: Callable[[int, str], None]):
        self.processor = processor
        self.stop = stop
        self.held = [s for s in {*stop_strings, processor.template.stop.strip()} if s]
        self.on_text = on_text
        self.sent: dict[int, str] = {}

    def update(self, row: int, ids: list[int]) -> None:
        text = _cut(self.processor.decode(ids), self.stop)
        keep = max((k for s in self.held for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self._send(row, text[: len(text) - keep])

    def finish(self, row: int, text: str) -> None:
        self._send(row, text)

    def _send(self, row: int, text: str) -> None:
        sent = self.sent.get(row, "")
        if len(text) > len(sent) and text.startswith(sent):
            self.sent[row] = text
            self.on_text(row, text[len(sent) :])


class Chat:
    """A multi-turn conversation about one image. Each `send` sees the whole history.

    The history keeps every turn as content with `<box:k>` slots into `boxes` (pixels), and each `send`
    renders it all through the processor, so every codec sees its own format; the codec's `history` turns an
    answer back into such content (the embedding codec's decoded boxes go back in through the box encoder).
    """

    def __init__(self, lm: GroundLM, image: ImageInput | None, system: str | None):
        self.lm = lm
        self.pixel_values, self.frame = lm.processor.image(image) if image is not None else (None, None)
        self.turns: list[dict] = [{"role": "system", "content": system}] if system else []
        self.boxes: list = []  # every box of the history (pixels), which its slots point at

    @property
    def messages(self) -> list[dict]:
        """The conversation so far with its locations written in the model's format."""
        render = self.lm.processor.render_locations
        return [
            {"role": t["role"], "content": render(t["content"], self.boxes, self.frame, output=t["role"] == "assistant")}
            for t in self.turns
        ]

    def send(
        self, text: str, *, boxes: Sequence[Sequence[float]] = (), points: Sequence[Sequence[float]] = (),
        max_new_tokens: int = 64,
    ) -> Answer:
        """Add a user turn (its `<box:i>` slots point at `boxes`, `<point:j>` at `points`, in pixels) and
        return the model's answer."""
        text, boxes = with_points(text, boxes, points, self.frame)
        offset = len(self.boxes)
        content = BOX_SLOT.sub(lambda m: f"<box:{int(m.group(1)) + offset}>", text)
        all_boxes = [*self.boxes, *(list(b) for b in boxes)]
        turns = [*self.turns, {"role": "user", "content": content}]
        enc = self.lm.processor.encode(
            turns, boxes=all_boxes, frame=self.frame, image=self.pixel_values is not None,
            add_generation_prompt=True,
        )
        enc.pixel_values = self.pixel_values
        answer = self.lm.generate([enc], max_new_tokens)[0].answer
        history, answer_boxes = self.lm.processor.codec.history(answer.text, answer.objects, len(all_boxes))
        self.boxes = [*all_boxes, *answer_boxes]
        self.turns = [*turns, {"role": "assistant", "content": history}]
        return answer

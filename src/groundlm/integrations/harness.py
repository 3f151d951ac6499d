"""What lmms-eval and VLMEvalKit ask of a model, answered by a `GroundLM` (no evaluation tool imported here).

- `Harness.generate`: prompts about images (one image each, or none) answered in batches through
  `GroundLM.generate`, the decoding loop every groundlm caller uses; requests with the same generation settings
  share batches and the answers come back in the order asked.
- `answer_text`: what a tool reads from an answer. Objects are written as `[x1, y1, x2, y2]` floats in [0, 1] of
  the ORIGINAL image, after the answer's plain text: both tools' RefCOCO scorers take the first such list
  (lmms-eval `refcoco_bbox_rec` with no rescaling; VLMEvalKit's scale guess reads values <= 1.5 as fractions).
  The boxes come from `Answer.objects`, already mapped from the model's frame (LLaVA's padded square,
  MiniGPT-v2's stretched one) back to original pixels, so a non-square image is scored in its own frame.
- `Harness.loglikelihood`: the summed log-probability of a continuation after a prompt (multiple-choice tasks)
  and whether greedy decoding would have produced it.
- `referring_expression`: the expression in the RefCOCO prompt both tools send ("Please provide the bounding
  box coordinate of the region this sentence describes: EXPR", VLMEvalKit wrapping EXPR in <ref></ref>), so a
  model trained on other instructions (MiniGPT-v2's `[refer] ...`) can be asked in its own words (`rec_prompt`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch

from ..decoding import GREEDY, Sampling
from ..inference import Answer, GroundLM
from ..processor import IGNORE_INDEX, Encoded
from ..templates import IMAGE_PLACEHOLDER

# the RefCOCO instruction of lmms-eval's refcoco_bbox_rec, VLMEvalKit's RefCOCO TSV and InternVL's evaluation
REC_INSTRUCTION = "Please provide the bounding box coordinate of the region this sentence describes:"


def referring_expression(prompt: str) -> str | None:
    """The referring expression of a RefCOCO prompt (after `REC_INSTRUCTION`, `<ref>` tags removed), or None
    when `prompt` is not one."""
    at = prompt.rfind(REC_INSTRUCTION)
    if at < 0:
        return None
    expression = prompt[at + len(REC_INSTRUCTION) :].strip()
    if expression.startswith("<ref>") and "</ref>" in expression:
        expression = expression[len("<ref>") : expression.index("</ref>")]
    return expression.strip() or None


def normalized_boxes(answer: Answer, width: int, height: int) -> list[tuple[float, float, float, float]]:
    """The answer's object boxes as [x1, y1, x2, y2] fractions of the original `width` x `height` image,
    clipped to [0, 1] (objects without a box are left out)."""
    out = []
    for obj in answer.objects:
        if obj.box is None:
            continue
        x1, y1, x2, y2 = obj.box
        out.append(tuple(min(max(v / side, 0.0), 1.0) for v, side in ((x1, width), (y1, height), (x2, width), (y2, height))))
    return out


def answer_text(answer: Answer, size: tuple[int, int] | None, decimals: int = 4) -> str:
    """The answer as a tool reads it: its plain text, then each object's box as `[x1, y1, x2, y2]` in [0, 1] of
    the original image (`size` = (width, height)); the plain text alone when there is no image or object."""
    if size is None:
        return answer.plain_text
    boxes = " ".join("[" + ", ".join(f"{v:.{decimals}f}" for v in box) + "]" for box in normalized_boxes(answer, *size))
    return f"{answer.plain_text} {boxes}".strip()


@dataclass(frozen=True)
class Request:
    """One prompt to answer: an image (PIL or path) or None, the text, and how to generate."""

    image: object
    prompt: str
    until: tuple[str, ...] = ()
    max_new_tokens: int = 128
    sampling: Sampling = GREEDY


def sampling_of(gen_kwargs: dict) -> Sampling:
    """groundlm's `Sampling` for a tool's generation kwargs: greedy unless `do_sample` (or a temperature above
    0 without `do_sample: False`) asks otherwise."""
    temperature = float(gen_kwargs.get("temperature") or 0.0)
    if not gen_kwargs.get("do_sample", temperature > 0) or temperature <= 0:
        return GREEDY
    return Sampling(temperature=temperature, top_p=float(gen_kwargs.get("top_p") or 1.0), seed=0)


class Harness:
    """A `GroundLM` answering a tool's requests.

    `batch_size`: prompts decoded together. `rec_prompt`: a template with one `{}` that replaces a RefCOCO
    prompt (see `referring_expression`) by the model's own instruction, e.g. `"[refer] give me the location of
    {}"` for MiniGPT-v2-style models; None asks the prompt as given. `decimals`: digits of written boxes.
    """

    def __init__(self, lm: GroundLM, *, batch_size: int = 8, rec_prompt: str | None = None, decimals: int = 4):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if rec_prompt is not None and rec_prompt.count("{}") != 1:
            raise ValueError(f"rec_prompt must hold exactly one '{{}}' for the expression, got {rec_prompt!r}")
        self.lm = lm
        self.batch_size = batch_size
        self.rec_prompt = rec_prompt
        self.decimals = decimals

    def prompt_for(self, prompt: str) -> str:
        """The text the model is asked: `prompt` without image placeholders (the processor places the image),
        or `rec_prompt` filled with its referring expression."""
        prompt = prompt.replace(IMAGE_PLACEHOLDER, "").replace(self.lm.processor.config.image_token, "").strip()
        if self.rec_prompt is None:
            return prompt
        expression = referring_expression(prompt)
        return prompt if expression is None else self.rec_prompt.format(expression)

    def _encode(self, image, prompt: str) -> Encoded:
        return self.lm.processor.prompt(image, [{"role": "user", "content": prompt}])

    def generate(self, requests: Sequence[Request], on_batch: Callable[[int], None] | None = None) -> list[str]:
        """Each request's answer text (`answer_text`), in the order given; `on_batch(n)` after each batch."""
        out: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.until, r.max_new_tokens, r.sampling), []).append(i)
        for (until, max_new_tokens, sampling), members in groups.items():
            for start in range(0, len(members), self.batch_size):
                rows = members[start : start + self.batch_size]
                images = [_image(requests[i].image) for i in rows]
                batch = [self._encode(img, self.prompt_for(requests[i].prompt)) for i, img in zip(rows, images, strict=True)]
                stops = [s for s in until if s]
                generations = self.lm.generate(batch, max_new_tokens, sampling=sampling, stop=stops)
                for i, img, g in zip(rows, images, generations, strict=True):
                    out[i] = answer_text(g.answer, img.size if img is not None else None, self.decimals)
                if on_batch is not None:
                    on_batch(len(rows))
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def loglikelihood(
        self, items: Sequence[tuple[object, str, str]], on_batch: Callable[[int], None] | None = None
    ) -> list[tuple[float, bool]]:
        """For each (image, context, continuation): log P(continuation | context, image) summed over the
        continuation's tokens, and whether each of those tokens is the model's argmax (greedy would write it)."""
        processor, model = self.lm.processor, self.lm.model
        if not getattr(processor, "scores_continuations", True):
            raise ValueError(f"{processor.family} does not score continuations (docs/other-models.md)")
        out: list[tuple[float, bool]] = []
        for start in range(0, len(items), self.batch_size):
            chunk = items[start : start + self.batch_size]
            batch, spans = [], []
            for image, context, continuation in chunk:
                enc = self._encode(_image(image), self.prompt_for(context))
                cont = processor.tokenizer(continuation, add_special_tokens=False)["input_ids"]
                ids = enc.input_ids + cont
                # everything else of the prompt's encoding stays (a family processor's layout in `meta`)
                batch.append(replace(enc, input_ids=ids, labels=[IGNORE_INDEX] * len(ids)))
                spans.append((len(enc.input_ids), cont))
            inputs = {k: v.to(self.lm.device) for k, v in processor.pad(batch, side="right").items() if k != "labels"}
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
            logprobs = torch.log_softmax(model(**inputs).logits.float(), dim=-1)  # [B, T, V]
            for row, (n, cont) in enumerate(spans):
                if not cont:
                    out.append((0.0, True))
                    continue
                # the token at position t is predicted by the logits at t - 1
                scores = logprobs[row, n - 1 : n - 1 + len(cont)]  # [m, V]
                target = torch.tensor(cont, device=scores.device)
                total = scores.gather(1, target[:, None]).sum().item()
                out.append((total, bool((scores.argmax(-1) == target).all())))
            if on_batch is not None:
                on_batch(len(chunk))
        return out


def _image(image):
    """A PIL image (RGB) of a request's image: PIL as given, a path loaded safely, None kept."""
    if image is None:
        return None
    from ..images import load_image

    return load_image(image)

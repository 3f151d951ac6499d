"""The VLMEvalKit model class of a groundlm model directory: `GroundLMVLM(model_path=DIR)`.

VLMEvalKit (open-compass/VLMEvalKit; on PyPI as `ms-vlmeval` and `nvidia-vlmeval`) calls
`model.generate(message, dataset)`; its `BaseModel.generate` normalises the message into a list of
`{"type": "image" | "text", "value": path_or_text}` items and calls `generate_inner(message, dataset)`, which
returns the answer text. Here the texts are joined with newlines, the one image (a path, as VLMEvalKit dumps
them) is read, and the prompt is answered through `harness.Harness` (groundlm's decoding loop). Grounded objects
are written as `[x1, y1, x2, y2]` in [0, 1] of the original image, the form VLMEvalKit's RefCOCO scorer reads
without guessing (first bracketed four numbers; values <= 1.5 are fractions of the image).

To add a model to VLMEvalKit, put this in its `vlmeval/config.py` (docs/evaluation.md):

    from functools import partial
    from groundlm.integrations.vlmevalkit import GroundLMVLM

    groundlm_series = {
        "groundlm-shapes": partial(GroundLMVLM, model_path="/path/to/model",
                                   rec_prompt="[refer] give me the location of {}"),
    }
    # and add groundlm_series to the `model_groups` list there

then `python run.py --data RefCOCO --model groundlm-shapes`.

The class derives from VLMEvalKit's `BaseModel` when VLMEvalKit is installed. Without it the class still works
(`generate_inner` is the whole contract: called with the message list as VLMEvalKit builds it), so it can be used
and tested where VLMEvalKit is not installed.
"""

from __future__ import annotations

from ..inference import load
from .harness import Harness, Request

try:
    from vlmeval.vlm.base import BaseModel as _Base
except ImportError:  # VLMEvalKit not installed: same contract, no base class
    _Base = object


class GroundLMVLM(_Base):
    """A groundlm model for VLMEvalKit: one image per prompt (`INTERLEAVE = False`), text and image items.

    `model_path`: a groundlm model directory; `device` (cpu); `max_new_tokens` (128); `rec_prompt`: ask
    RefCOCO prompts in the model's own words (`harness.Harness`); `decimals` of written boxes (4).
    """

    INTERLEAVE = False
    allowed_types = ["text", "image"]

    def __init__(
        self, model_path: str, device: str = "cpu", max_new_tokens: int = 128, rec_prompt: str | None = None,
        decimals: int = 4, **unused,
    ):
        if _Base is not object:
            super().__init__()
        if unused:
            raise ValueError(f"GroundLMVLM: unknown arguments {sorted(unused)}")
        self.max_new_tokens = int(max_new_tokens)
        self.harness = Harness(load(model_path, device=device), batch_size=1, rec_prompt=rec_prompt,
                               decimals=decimals)

    def generate_inner(self, message: list[dict], dataset: str | None = None) -> str:
        """The answer to one message: `[{"type": "image" | "text", "value": ...}, ...]` (texts joined by
        newlines, at most one image: a path or a PIL image)."""
        images, texts = [], []
        for n, item in enumerate(message):
            kind = item.get("type") if isinstance(item, dict) else None
            if kind == "image":
                images.append(item["value"])
            elif kind == "text":
                texts.append(str(item["value"]))
            else:
                raise ValueError(f"message[{n}]: expected {{'type': 'image' | 'text', 'value': ...}}, got {item!r}")
        if len(images) > 1:
            raise ValueError(f"the message holds {len(images)} images; a groundlm model reads one")
        request = Request(images[0] if images else None, "\n".join(texts), max_new_tokens=self.max_new_tokens)
        return self.harness.generate([request])[0]


__all__ = ["GroundLMVLM"]

"""The vision model of MiniGPT-4's first step: a groundlm model that describes an image, in this process or
behind a server.

Both take the conversation so far (user and assistant turns, the image belonging to the first user turn) and
return the new answer as plain text (location markup removed) with its length in tokens, which decides
whether the model is asked to continue. `LocalDescriber` runs `groundlm.load`'s model (one request at a time:
the model is not shared between threads); `ServedDescriber` sends the image as a data URL to an
OpenAI-compatible server (`groundlm serve`, or vLLM serving an exported model) and reads `groundlm serve`'s
plain text when it is there.
"""

from __future__ import annotations

import base64
import mimetypes
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .client import Backoff, Endpoint, LLMClient


@dataclass(frozen=True)
class Described:
    """An answer of the describer: its text and how many tokens it took."""

    text: str
    tokens: int


class Describer(Protocol):
    """Describes images; `identity` names the model in the cache keys."""

    identity: str

    def describe(self, image: Path, turns: list[dict], max_tokens: int) -> Described: ...


class LocalDescriber:
    """A groundlm model directory, loaded here (`groundlm.load`)."""

    def __init__(self, path: str | os.PathLike, *, device: str = "auto", dtype: str = "auto"):
        from ..inference import load

        self.lm = load(path, device=device, dtype=dtype)
        self.identity = f"groundlm:{Path(path).resolve()}"
        self._lock = threading.Lock()

    def describe(self, image: Path, turns: list[dict], max_tokens: int) -> Described:
        with self._lock:
            chat = self.lm.chat(image)
            chat.turns = [dict(t) for t in turns[:-1]]  # earlier answers are plain text: no boxes to carry
            answer = chat.send(turns[-1]["content"], max_new_tokens=max_tokens)
            tokens = len(self.lm.processor.tokenizer(answer.text, add_special_tokens=False)["input_ids"])
        return Described(answer.plain_text or answer.text, tokens)


class ServedDescriber:
    """A model behind an OpenAI-compatible endpoint that reads images."""

    def __init__(self, endpoint: Endpoint, backoff: Backoff = Backoff(), stop: threading.Event | None = None):
        self.client = LLMClient(endpoint, backoff, stop)
        self.identity = f"served:{endpoint.base_url}:{endpoint.model}"

    def describe(self, image: Path, turns: list[dict], max_tokens: int) -> Described:
        media = mimetypes.guess_type(image.name)[0] or "image/png"
        url = f"data:{media};base64,{base64.b64encode(image.read_bytes()).decode()}"
        first = {"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": turns[0]["content"]},
        ]}  # fmt: skip
        answer = self.client.complete([first, *turns[1:]], max_tokens=max_tokens, temperature=0)
        extra = (answer.extra or {}).get("groundlm")
        plain = extra.get("plain_text") if isinstance(extra, dict) else None
        return Described(plain if isinstance(plain, str) and plain else answer.content, answer.completion_tokens)

"""Helpers of the serving tests: stub models with fixed or slow answers, data URLs, a server on loopback.

The stubs are real `GroundLM`s (real tokenizer, processor and decoding loop) whose model is scripted: each
forward pass puts all probability on the next token of a fixed answer. They test the server and the page —
request handling, batching, stop strings, streaming, parsing, drawing — not the model: a random model rarely
writes a box, and a page test must know a box is coming to check that it is drawn.
"""

from __future__ import annotations

import base64
import io
import socket
import struct
import threading
import time
import zlib
from types import SimpleNamespace

import torch
from PIL import Image

from groundlm.inference import GroundLM

# The fixed answer as the tiny model's word-level tokenizer decodes it (MiniGPT-v2's spacing).
FIXED_ANSWER = "<p>red circle</p> {<10><20><60><70>}"


class ScriptedModel:
    """A model whose forward passes give, for every row, the token of `script` at the step's position (cycling),
    as one-hot logits; everything else (config, dtype, parameters) is the wrapped model's."""

    def __init__(self, model, script: list[int]):
        self.model = model
        self.script = script
        self.forwards = 0  # forward passes run, the prefill included

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def __call__(self, *, input_ids=None, inputs_embeds=None, cache=None, **_):
        rows = (input_ids if input_ids is not None else inputs_embeds).shape[0]
        position = 0 if cache is None else cache
        self.forwards += 1
        size = max(self.model.config.text_config.vocab_size, max(self.script) + 1)
        logits = torch.zeros(rows, 1, size)
        logits[:, :, self.script[position % len(self.script)]] = 1.0
        return SimpleNamespace(logits=logits, cache=position + 1, hidden_states=None)


class PacedModel:
    """The real model, `seconds` slower per forward pass, counting its passes (to see what a client received
    while decoding was still going on)."""

    def __init__(self, model, seconds: float):
        self.model = model
        self.seconds = seconds
        self.forwards = 0

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def __call__(self, **inputs):
        time.sleep(self.seconds)
        self.forwards += 1
        return self.model(**inputs)


class FixedAnswerLM(GroundLM):
    """Answers every prompt with `answer` (default: one box with a phrase) and the stop token, through the real
    decoding loop; `stop=False` never writes the stop token (the answer repeats until `max_new_tokens`)."""

    def __init__(self, lm: GroundLM, answer: str = FIXED_ANSWER, *, stop: bool = True):
        tokenizer = lm.processor.tokenizer
        script = tokenizer(answer, add_special_tokens=False)["input_ids"]
        if stop:
            script.append(lm.processor.stop_token_id)
        super().__init__(ScriptedModel(lm.model, script), lm.processor)
        self.answer = answer
        self.batch_sizes: list[int] = []
        self.seen: list = []  # every Encoded prompt generated for, in order

    def generate(self, batch, max_new_tokens, **decoding):
        """Record the batch, then decode it (the scripted model ignores the prompt)."""
        self.batch_sizes.append(len(batch))
        self.seen += batch
        return super().generate(batch, max_new_tokens, **decoding)

    def last_prompt_tokens(self) -> list[str]:
        """The tokens of the last prompt generated for."""
        return self.processor.tokenizer.convert_ids_to_tokens(self.seen[-1].input_ids)


class SlowLM(FixedAnswerLM):
    """A fixed answer after `seconds`, to fill the queue."""

    def __init__(self, lm: GroundLM, seconds: float):
        super().__init__(lm)
        self.seconds = seconds

    def generate(self, batch, max_new_tokens, **decoding):
        """Sleep, then answer."""
        time.sleep(self.seconds)
        return super().generate(batch, max_new_tokens, **decoding)


def png_bytes(colour=(200, 30, 30), size=(80, 60)) -> bytes:
    """A plain PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(raw: bytes | None = None, media_type: str = "image/png") -> str:
    """`raw` (default: a small PNG) as a base64 data URL."""
    raw = png_bytes() if raw is None else raw
    return f"data:{media_type};base64,{base64.b64encode(raw).decode()}"


def chat_body(text: str = "[refer] the red circle", url: str | None = None, **extra) -> dict:
    """A chat-completions request body with one image and one text part."""
    content = [{"type": "image_url", "image_url": {"url": url or data_url()}}, {"type": "text", "text": text}]
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 12, **extra}


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """A uvicorn server for `app` on 127.0.0.1 in a background thread; use as a context manager."""

    def __init__(self, app, port: int | None = None):
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` pixels (a decompression bomb's calling card)."""
    raw = png_bytes(size=(8, 8))
    # signature [0:8], IHDR length [8:12], type [12:16], data [16:29] (width, height, 5 more), crc [29:33]
    data = struct.pack(">II", width, height) + raw[24:29]
    return raw[:16] + data + struct.pack(">I", zlib.crc32(b"IHDR" + data)) + raw[33:]


def noise_png(size=(100, 100), seed: int = 0) -> bytes:
    """A PNG of random pixels: large in bytes for its pixel count, as PNG cannot compress noise."""
    import numpy as np

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()

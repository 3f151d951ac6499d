"""Helpers of the curation tests: a scripted OpenAI-compatible LLM on loopback, and ShapesWorld sources.

`ScriptedLLM` is a real HTTP server (FastAPI under uvicorn, in a thread) speaking the chat-completions API, so
the official `openai` client, its errors and the retry logic run exactly as against vLLM or a hosted API. What
it answers is a Python function of the request body (`responder`), which returns the answer text or a `Reply`
with an HTTP status, a delay or headers. It counts requests, keeps every body and API key, and tracks how
many requests were in flight at once. Token counts in `usage` are the scripted server's (characters / 4),
not a tokenizer's.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from groundlm.data.shapes import write_shapes

try:  # module level: FastAPI resolves the handler's annotation by name
    from fastapi import Request
except ImportError:  # pragma: no cover - the serve extra is installed for the tests
    Request = None
from groundlm.records import read_jsonl, write_jsonl

from .serve_helpers import ServerThread


@dataclass
class Reply:
    """A scripted reply: the answer text, or an error `status`; after `delay` seconds."""

    content: str = ""
    status: int = 200
    delay: float = 0.0
    headers: dict = field(default_factory=dict)


def body_key(body: dict) -> str:
    """A request's identity (its messages and parameters), to tell repeated requests apart."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class ScriptedLLM:
    """An OpenAI-compatible chat endpoint whose answers come from `responder(body)`."""

    def __init__(self, responder: Callable[[dict], str | Reply] | None = None):
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse

        self.responder = responder or (lambda body: "ok")
        self.bodies: list[dict] = []  # every request received, in order
        self.keys: list[str | None] = []  # each request's Authorization header, in the same order
        self.answered: list[dict] = []  # the requests answered with 200, in order
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            import asyncio

            body = await request.json()
            with self._lock:
                self.bodies.append(body)
                self.keys.append(request.headers.get("authorization"))
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
            try:
                reply = self.responder(body)
                reply = reply if isinstance(reply, Reply) else Reply(reply)
                if reply.delay:
                    await asyncio.sleep(reply.delay)
                if reply.status != 200:
                    error = {"error": {"message": f"scripted {reply.status}", "type": "scripted"}}
                    return JSONResponse(error, status_code=reply.status, headers=reply.headers)
                with self._lock:
                    self.answered.append(body)
                prompt = sum(len(json.dumps(m)) for m in body["messages"]) // 4
                completion = len(reply.content) // 4
                return {
                    "id": "scripted", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", "scripted"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": reply.content}}],
                    "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                              "total_tokens": prompt + completion},
                }  # fmt: skip
            finally:
                with self._lock:
                    self.in_flight -= 1

        self.server = ServerThread(app)

    @property
    def base_url(self) -> str:
        return self.server.url + "/v1"

    def __enter__(self) -> ScriptedLLM:
        self.server.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.server.__exit__(*exc)


def system_of(body: dict) -> str:
    """The system prompt of a request ("" when it has none)."""
    first = body["messages"][0]
    return first["content"] if first["role"] == "system" else ""


def last_user(body: dict) -> str:
    """The text of the request's last user turn."""
    return next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")


def shapes_source(folder, n: int = 4):
    """ShapesWorld val scenes 0..n-1 as caption and grounding records (+ images) in `folder`; returns the
    records file and ShapesWorld's own grounding records (the truth to check grounded phrases against)."""
    path = write_shapes(folder, n, "val", tasks=("caption", "grounding"), progress=False)
    records = read_jsonl(path)
    sources = [r for r in records if r.meta["task"] == "caption"]
    source_path = folder / "captions.jsonl"
    write_jsonl(source_path, sources)
    truth = {r.image: r for r in records if r.meta["task"] == "grounding"}
    return source_path, truth

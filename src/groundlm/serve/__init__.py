"""Serving a model: an OpenAI-compatible API and a web page that draws the boxes.

    from groundlm.serve import run
    run("runs/demo/model")                      # http://127.0.0.1:8000/v1/chat/completions and /ui

    from groundlm.serve import create_app
    app = create_app(groundlm.load(path), api_key="secret")   # any ASGI server, or a test client

Files, one job each: `limits` (what a request may hold), `schema` (the OpenAI request/response models),
`content` (request → conversation, data URLs), `engine` (encode and generate), `batcher` (concurrent requests
→ batches), `service` (engine + batcher), `guard` (API key, body size), `api` (routes, errors, streaming),
`web` (the Gradio page), `server` (`run`).
"""

from .api import create_app
from .limits import Limits
from .server import run

__all__ = ["Limits", "create_app", "run"]

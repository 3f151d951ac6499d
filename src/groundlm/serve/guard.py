"""The door: the API key and the body-size limit, checked before any route parses a byte of JSON.

It is plain ASGI middleware rather than a FastAPI dependency because dependencies run after the body is
parsed: an unauthenticated client would then learn about JSON errors before hearing 401, and an oversized body
would be read whole before being refused. The web page (`/ui`) has its own login and upload limit (Gradio's),
so only the API paths are guarded here.
"""

from __future__ import annotations

import hmac
import json

from .errors import error_body

_API_PREFIX = "/v1"


class Guard:
    """ASGI middleware: `Authorization: Bearer <api_key>` on `/v1/...` (when a key is set); bodies up to
    `max_body` bytes."""

    def __init__(self, app, *, api_key: str | None, max_body: int, ui_path: str | None = "/ui"):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body = max_body
        self.ui_path = ui_path

    async def __call__(self, scope, receive, send):
        """Check the request, then pass it (with its body buffered and replayed) to the app."""
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path: str = scope.get("path", "")
        if self.ui_path and (path == self.ui_path or path.startswith(self.ui_path + "/")):
            return await self.app(scope, receive, send)
        if self.api_key is not None and path.startswith(_API_PREFIX) and not self._authorised(scope):
            return await _reply(send, 401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                "invalid_request_error", "invalid_api_key", {"www-authenticate": "Bearer"})
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        length = _content_length(scope)
        if length == -1:
            return await _reply(send, 400, "the Content-Length header is not a number",
                                "invalid_request_error", "invalid_content_length")
        if length is not None and length > self.max_body:
            return await self._too_large(send, length)
        # read the body here (bounded) so a chunked upload without Content-Length is limited too
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return await self._too_large(send, size)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for the disconnect, as the app expects

        return await self.app(scope, replay, send)

    def _authorised(self, scope) -> bool:
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, token = header.partition(b" ")
        # compare_digest: the time taken does not tell how much of a guessed key was right
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.api_key or b"")

    async def _too_large(self, send, size: int):
        return await _reply(
            send, 413,
            f"the request body is over the limit of {self.max_body:,} bytes ({size:,} bytes or more)",
            "invalid_request_error", "request_too_large",
        )


def _content_length(scope) -> int | None:
    """The Content-Length, None when absent, -1 when not a number."""
    for name, value in scope.get("headers") or []:
        if name == b"content-length":
            try:
                n = int(value)
            except ValueError:
                return -1
            return n if n >= 0 else -1
    return None


async def _reply(
    send, status: int, message: str, type: str, code: str, headers: dict[str, str] | None = None,
):
    body = json.dumps(error_body(message, type, None, code)).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})

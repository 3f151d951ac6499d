"""The FastAPI app: OpenAI-compatible chat completions with grounded objects, the model list, health.

    POST /v1/chat/completions   an OpenAI chat completion; `stream: true` sends server-sent events
    GET  /v1/models             the served model
    GET  /health                liveness and queue state (never behind the API key)
    /ui                         the web page (web.py), when `ui=True`

Every refusal is an OpenAI error body `{"error": {"message", "type", "param", "code"}}` with a 4xx status
(503 with `Retry-After` when the queue is full), so the server answers malformed input with a reason and keeps
serving. Streaming (`stream: true`): the answer is still decoded in a batch with other requests, and each
piece of its text is sent as an OpenAI content chunk as soon as it is decoded (the batcher's worker thread hands
it to the event loop); a role chunk comes first, and a last chunk carries `finish_reason` and the objects
(whose boxes and masks are known only at the end), then `[DONE]`. A failure after the stream has started is
sent as an OpenAI error event before `[DONE]`, since the status line is already gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..inference import GroundLM
from .content import to_conversation, to_decoding
from .engine import Reply
from .errors import APIError, error_body, error_response
from .guard import Guard
from .limits import Limits
from .schema import ChatCompletion, ChatCompletionRequest, ErrorResponse, ModelList
from .service import Service

log = logging.getLogger("groundlm.serve")

UI_PATH = "/ui"
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 503)}


def create_app(
    lm: GroundLM, *, name: str | None = None, api_key: str | None = None, limits: Limits | None = None,
    ui: bool = True,
) -> FastAPI:
    """The server app for `lm`: API routes, the API-key and body-size guard, and the web page at `/ui`.

    `name` is the model id clients send and `/v1/models` lists (default: the model directory's name).
    `api_key` (default: none; `groundlm.serve.run` also reads `GROUNDLM_API_KEY`) makes `/v1/...` answer 401
    without `Authorization: Bearer <key>` and puts the page behind a login whose password is the key.
    """
    service = Service(lm, name=name, limits=limits)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.batcher.start()
        try:
            yield
        finally:
            await service.batcher.stop()

    app = FastAPI(
        title="groundlm", version=__version__, lifespan=lifespan,
        description="OpenAI-compatible chat completions for grounded vision-language models.",
    )
    app.state.service = service
    _add_error_handlers(app)
    _add_routes(app, service, ui)
    if ui:
        from .web import mount_ui

        mount_ui(app, service, path=UI_PATH, api_key=api_key)
    app.add_middleware(Guard, api_key=api_key, max_body=service.limits.max_body_bytes,
                       ui_path=UI_PATH if ui else None)
    return app


def _add_routes(app: FastAPI, service: Service, ui: bool) -> None:
    @app.get("/health", summary="Liveness and queue state")
    async def health() -> dict:
        """Always answers while the event loop runs, also while a batch is generating."""
        return service.health()

    @app.get("/v1/models", response_model=ModelList, responses=_ERRORS, summary="The served model")
    async def models() -> dict:
        """OpenAI's model list with the one model this server serves."""
        return {"object": "list", "data": [
            {"id": service.name, "object": "model", "created": service.created, "owned_by": "groundlm"}
        ]}

    @app.post(
        "/v1/chat/completions", response_model=ChatCompletion, responses=_ERRORS,
        summary="Answer a conversation about an image, with grounded objects",
    )
    async def chat_completions(body: ChatCompletionRequest):
        """An OpenAI chat completion; `choices[0].message.objects` and `groundlm` carry the parsed objects."""
        if body.model is not None and body.model != service.name:
            raise APIError(404, f"model {body.model!r} is not served here; this server serves "
                           f"{service.name!r}", param="model", code="model_not_found")
        if body.n not in (None, 1):  # the schema allows only 1; kept for clarity if that ever widens
            raise APIError(400, "n must be 1", param="n")
        conversation = to_conversation(body, service.limits)
        decoding = to_decoding(body, service.limits)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if body.stream:
            pieces: asyncio.Queue[str] = asyncio.Queue()
            loop = asyncio.get_running_loop()

            def push(piece: str) -> None:  # called in the generation thread
                try:
                    loop.call_soon_threadsafe(pieces.put_nowait, piece)
                except RuntimeError:  # the loop has closed (shutdown): nobody reads this stream any more
                    pass

            # refusals (busy, bad image) still come back as error statuses: the stream starts after prepare
            job = await service.prepare(conversation, decoding, on_text=push)
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            events = _stream(completion_id, created, service.name, service.answer(job), pieces, include_usage)
            return StreamingResponse(events, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        reply = await service.complete(conversation, decoding)
        return JSONResponse(completion_body(completion_id, created, service.name, reply))

    if ui:
        @app.get("/", include_in_schema=False)
        async def root() -> RedirectResponse:
            return RedirectResponse(UI_PATH + "/")


def completion_body(completion_id: str, created: int, model: str, reply: Reply) -> dict:
    """The JSON of a non-streamed chat completion."""
    objects = reply.objects()
    return {
        "id": completion_id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{
            "index": 0, "logprobs": None, "finish_reason": reply.finish_reason,
            "message": {"role": "assistant", "content": reply.answer.text, "objects": objects},
        }],
        "usage": _usage(reply),
        "groundlm": _extra(reply, objects),
    }


def _usage(reply: Reply) -> dict:
    return {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens,
            "total_tokens": reply.prompt_tokens + reply.completion_tokens}


def _extra(reply: Reply, objects: list[dict]) -> dict:
    return {"plain_text": reply.answer.plain_text, "objects": objects,
            "image_size": list(reply.image_size) if reply.image_size else None, "decoding": reply.decoding}


async def _stream(
    completion_id: str, created: int, model: str, answer, pieces: asyncio.Queue, include_usage: bool
) -> AsyncIterator[str]:
    """OpenAI chunks: the role, each text piece as `pieces` receives it while `answer` (the reply) runs, the
    finish chunk with the objects, usage when asked, `[DONE]`."""
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}

    def event(choices: list, **extra) -> str:
        return f"data: {json.dumps({**base, 'choices': choices, **extra})}\n\n"

    def choice(delta: dict, finish: str | None = None) -> list:
        return [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]

    yield event(choice({"role": "assistant", "content": ""}))
    task = asyncio.ensure_future(answer)
    try:
        while not task.done():
            piece = asyncio.ensure_future(pieces.get())
            await asyncio.wait({piece, task}, return_when=asyncio.FIRST_COMPLETED)
            if not piece.done():
                piece.cancel()
                break
            yield event(choice({"content": piece.result()}))
        # pieces are queued before the reply is set (one event loop, in order), so these are the last ones
        while not pieces.empty():
            yield event(choice({"content": pieces.get_nowait()}))
        reply: Reply = await task
    except Exception as err:  # the status line is sent: the failure goes out as an error event
        if isinstance(err, APIError):
            body = error_body(err.message, err.type, err.param, err.code)
        else:
            log.exception("generation failed while streaming")
            body = error_body("internal server error; the server log has the details", "server_error", None,
                              "internal_error")
        yield f"data: {json.dumps(body)}\n\n"
        yield "data: [DONE]\n\n"
        return
    finally:
        task.cancel()  # a client that went away: the batcher drops the request
    objects = reply.objects()
    yield event(choice({"objects": objects}, reply.finish_reason), groundlm=_extra(reply, objects))
    if include_usage:
        yield event([], usage=_usage(reply))
    yield "data: [DONE]\n\n"


# ---- errors -----------------------------------------------------------------------------------------------


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        message, param, code = describe_validation(err.errors())
        return JSONResponse(error_body(message, "invalid_request_error", param, code), 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        return JSONResponse(error_body(str(err.detail), "invalid_request_error", None, code), err.status_code,
                            headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def server_error(request: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        message = "internal server error; the server log has the details"
        return JSONResponse(error_body(message, "server_error", None, "internal_error"), 500)


def describe_validation(errors: list[dict]) -> tuple[str, str | None, str]:
    """A short message, the offending parameter (dotted path) and a code for pydantic's error list."""
    if not errors:
        return "invalid request", None, "invalid_request"
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    kind = first.get("type", "")
    if kind == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "invalid JSON")
        return f"the request body is not valid JSON: {reason}", None, "invalid_json"
    if not loc and kind in ("model_attributes_type", "dict_type", "missing"):
        return ("the request body must be a JSON object (Content-Type: application/json) with 'messages'",
                None, "invalid_body")
    param = ".".join(loc) or None
    message = f"{param}: {first.get('msg', 'invalid value')}" if param else first.get("msg", "invalid value")
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return message, param, "invalid_value"


def env_api_key() -> str | None:
    """The API key from `GROUNDLM_API_KEY`, or None when unset or empty."""
    return os.environ.get("GROUNDLM_API_KEY") or None

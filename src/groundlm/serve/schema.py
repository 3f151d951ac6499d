"""Request and response models of the OpenAI chat-completions format, as far as groundlm serves it.

Requests: `messages` whose `content` is a string or a list of parts `{"type": "text", "text"}` and
`{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}`; `max_tokens` (or
`max_completion_tokens`), `temperature`, `top_p`, `seed`, `stop`, `stream`, `stream_options.include_usage`,
and one groundlm extension, `boxes`: the boxes (pixels of the request's image) that `<box:i>` slots in the text
point at. Other top-level OpenAI fields (`user`, `presence_penalty`, ...) are accepted and ignored, so
existing clients work; content parts are strict, since a part we do not understand would silently change
the question.

Responses are plain OpenAI chat completions plus the grounded objects: `choices[0].message.objects` and a
top-level `groundlm` object (see `ChatCompletion`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Box = Annotated[list[float], Field(min_length=4, max_length=4, description="[x1, y1, x2, y2] in pixels")]


class _Strict(BaseModel):
    # allow_inf_nan=False: Python's JSON parser accepts NaN and Infinity, which no box or setting may be
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ImageURL(_Strict):
    """An image as a data URL (`data:image/png;base64,...`). Remote URLs and file paths are refused."""

    url: str
    detail: Literal["auto", "low", "high"] | None = None


class TextPart(_Strict):
    """A text content part."""

    type: Literal["text"]
    text: str


class ImagePart(_Strict):
    """An image content part; `image_url` may also be the URL string itself, as some clients send it."""

    type: Literal["image_url"]
    image_url: ImageURL | str


ContentPart = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(BaseModel):
    """One conversation turn. `developer` is OpenAI's newer name for `system` and is treated as one."""

    model_config = ConfigDict(extra="ignore")  # `name` and the like do not change the prompt

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    """`stream_options`: `include_usage` adds a last chunk with token counts, as OpenAI does."""

    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """`POST /v1/chat/completions`. Ranges here are OpenAI's; the server's own limits are checked after."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: str | None = None
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    seed: int | None = Field(
        None, ge=-(2**63), lt=2**63, description="sampling draws repeat for the same seed (greedy ignores it)"
    )
    n: int | None = Field(None, ge=1, le=1, description="only 1 is supported")
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    boxes: list[Box] | None = Field(
        None, description="groundlm extension: boxes in pixels of the request's image; `<box:i>` in a "
        "message points at boxes[i]"
    )


# ---- responses (for the OpenAPI document; the handlers build the same shapes as dicts) -------------------


class ObjectOut(BaseModel):
    """A grounded object: phrase (null for a bare box), box in original pixels and in [0, 1], mask, point."""

    phrase: str | None
    box: list[float] | None = Field(description="[x1, y1, x2, y2] in pixels of the request's image")
    box_norm: list[float] = Field(description="[x1, y1, x2, y2] in [0, 1] of the model's input frame")
    mask: dict | list | None = Field(None, description="COCO RLE (or polygons) when the model gives a mask")
    point_norm: list[float] | None = Field(
        None, description="[x, y] in [0, 1] of the model's input frame when the model wrote a point (box is [x, y, x, y])"
    )
    point: list[float] | None = Field(None, description="[x, y] in pixels of the request's image for a point")


class AssistantMessage(BaseModel):
    """The assistant's reply: `content` is the model's text (with its location markup)."""

    role: Literal["assistant"] = "assistant"
    content: str
    objects: list[ObjectOut]


class Choice(BaseModel):
    """One choice (groundlm always returns one)."""

    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class Usage(BaseModel):
    """Token counts; the prompt count includes the image tokens."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GroundlmInfo(BaseModel):
    """groundlm's extra top-level field: the parsed answer and how it was decoded."""

    plain_text: str = Field(description="the text without location markup")
    objects: list[ObjectOut]
    image_size: list[int] | None = Field(description="[width, height] of the request's image")
    decoding: Literal["greedy", "sample"]


class ChatCompletion(BaseModel):
    """An OpenAI chat completion with groundlm's objects."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    groundlm: GroundlmInfo


class ModelCard(BaseModel):
    """One entry of `GET /v1/models`."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "groundlm"


class ModelList(BaseModel):
    """`GET /v1/models`: the one model this server serves."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    """The inside of an OpenAI error body."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """`{"error": {...}}`, the shape of every refusal."""

    error: ErrorDetail

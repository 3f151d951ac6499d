"""From an OpenAI request to a groundlm conversation: text turns, one image, boxes and decoding settings.

Images come only as `data:` URLs with base64 data. The server never fetches a remote URL and never reads a
local path named in a request: either would let any client make the server reach hosts or files on its
behalf. Sizes are checked on the base64 text before it is decoded, so an oversized image costs nothing.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass, field

from PIL import Image

from ..decoding import GREEDY, Sampling
from .errors import APIError, bad_request
from .limits import Limits
from .schema import ChatCompletionRequest, ImagePart, TextPart

# data:[<media type>][;<param>]*;base64,<data>
_DATA_URL = re.compile(r"^data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<data>.*)$", re.DOTALL)
_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*):")


@dataclass
class Conversation:
    """Text turns (`{"role", "content"}`, roles system/user/assistant), the image and the pointed-at boxes."""

    messages: list[dict]
    image: bytes | Image.Image | None = None
    boxes: list[list[float]] = field(default_factory=list)


@dataclass(frozen=True)
class Decoding:
    """How to generate a request's answer: its length limit, how tokens are chosen (`decoding.Sampling`: greedy
    unless `temperature` and `top_p` are both above 0) and its stop strings."""

    max_tokens: int
    sampling: Sampling = GREEDY
    stop: tuple[str, ...] = ()

    @property
    def batch_key(self) -> tuple:
        """Requests with equal keys can share one generate call (stop strings end rows inside it)."""
        return (self.max_tokens, GREEDY if self.sampling.greedy else self.sampling, self.stop)


def decode_data_url(url: str, limits: Limits, param: str) -> bytes:
    """The bytes of a base64 `data:image/...` URL; anything else is a 400 that says why."""
    if not url.startswith("data:"):
        scheme = _SCHEME.match(url)
        if not url.strip():
            what = "an empty URL"
        elif scheme and len(scheme.group(1)) > 1:  # "C:\..." is a Windows path, not a scheme
            what = f"URL scheme {scheme.group(1)!r}"
        else:
            what = "a file path"
        raise bad_request(
            f"{param}: {what} is not supported; send the image inline as a data URL "
            "(data:image/png;base64,...). The server never fetches remote URLs or reads local files.",
            param=param, code="unsupported_url",
        )
    m = _DATA_URL.match(url)
    if not m:
        raise bad_request(f"{param}: malformed data URL (expected data:image/...;base64,...)", param=param,
                          code="invalid_image_url")
    media_type = m.group("type").strip().lower()
    params = [p.strip().lower() for p in m.group("params").split(";") if p.strip()]
    if "base64" not in params:
        raise bad_request(f"{param}: the data URL must be base64-encoded (data:image/png;base64,...)",
                          param=param, code="invalid_image_url")
    if media_type and not media_type.startswith("image/"):
        raise bad_request(f"{param}: media type {media_type!r} is not an image", param=param,
                          code="invalid_image_url")
    data = m.group("data")
    # checked on the text first: 4 base64 characters hold 3 bytes
    if len(data) // 4 * 3 > limits.max_image_bytes + 3:
        raise APIError(
            413, f"{param}: the image is about {len(data) // 4 * 3:,} bytes, above the limit of "
            f"{limits.max_image_bytes:,} bytes", param=param, code="image_too_large",
        )
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        raise bad_request(f"{param}: the data URL is not valid base64 ({err})", param=param,
                          code="invalid_image_url") from err
    if len(raw) > limits.max_image_bytes:
        raise APIError(413, f"{param}: the image is {len(raw):,} bytes, above the limit of "
                       f"{limits.max_image_bytes:,} bytes", param=param, code="image_too_large")
    if not raw:
        raise bad_request(f"{param}: the image is empty", param=param, code="invalid_image")
    return raw


def to_conversation(request: ChatCompletionRequest, limits: Limits) -> Conversation:
    """The conversation of a request, with every content and size check that needs no model."""
    if len(request.messages) > limits.max_messages:
        raise bad_request(f"{len(request.messages)} messages, above the limit of {limits.max_messages}",
                          param="messages", code="too_many_messages")
    messages: list[dict] = []
    images: list[tuple[str, str]] = []  # (param, url)
    chars = 0
    for i, message in enumerate(request.messages):
        param = f"messages.{i}.content"
        if message.content is None:
            raise bad_request(f"{param}: content is required (tool calls are not supported)", param=param)
        if isinstance(message.content, str):
            texts = [message.content]
        else:
            texts = []
            for j, part in enumerate(message.content):
                if isinstance(part, TextPart):
                    texts.append(part.text)
                elif isinstance(part, ImagePart):
                    if message.role != "user":
                        raise bad_request(f"{param}.{j}: images may only appear in user messages",
                                          param=f"{param}.{j}")
                    url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
                    images.append((f"{param}.{j}.image_url", url))
        # parts are joined with a space so "[refer]" + "the cat" stays two words
        text = " ".join(t for t in texts if t)
        chars += len(text)
        role = "system" if message.role == "developer" else message.role
        messages.append({"role": role, "content": text})
    if chars > limits.max_text_chars:
        raise bad_request(f"the messages hold {chars:,} characters of text, above the limit of "
                          f"{limits.max_text_chars:,}", param="messages", code="text_too_long")
    if messages[-1]["role"] != "user":
        raise bad_request("the last message must be a user message (the model answers it)",
                          param=f"messages.{len(messages) - 1}.role")
    if len(images) > limits.max_images:
        raise bad_request(
            f"{len(images)} images, above the limit of {limits.max_images} per conversation "
            "(the model reads one image)", param=images[-1][0], code="too_many_images",
        )
    image = decode_data_url(images[0][1], limits, images[0][0]) if images else None
    boxes = _boxes(request.boxes or [], limits)
    if boxes and image is None:
        raise bad_request("boxes are given but there is no image for them to point into", param="boxes")
    return Conversation(messages, image, boxes)


def _boxes(boxes: list[list[float]], limits: Limits) -> list[list[float]]:
    if len(boxes) > limits.max_boxes:
        raise bad_request(f"{len(boxes)} boxes, above the limit of {limits.max_boxes}", param="boxes",
                          code="too_many_boxes")
    out = []
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        if not all(math.isfinite(v) and abs(v) < 1e7 for v in (x1, y1, x2, y2)):
            raise bad_request(f"boxes.{i}: coordinates must be finite pixel values", param=f"boxes.{i}")
        # corners in either order span the same box (a box drawn from right to left is still that box)
        out.append([min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)])
    return out


def to_decoding(request: ChatCompletionRequest, limits: Limits) -> Decoding:
    """Decoding settings of a request, checked against the server's `max_tokens` limit."""
    if request.max_tokens is not None and request.max_completion_tokens is not None \
            and request.max_tokens != request.max_completion_tokens:
        raise bad_request("max_tokens and max_completion_tokens differ; send one of them", param="max_tokens")
    max_tokens = request.max_completion_tokens or request.max_tokens or limits.default_max_tokens
    if max_tokens > limits.max_tokens:
        raise bad_request(f"max_tokens is {max_tokens}, above this server's limit of {limits.max_tokens}",
                          param="max_tokens", code="max_tokens_too_large")
    stop = request.stop if isinstance(request.stop, list) else [request.stop] if request.stop else []
    if len(stop) > 4 or any(not s for s in stop):
        raise bad_request("stop takes at most 4 non-empty strings", param="stop")
    temperature = 0.0 if request.temperature is None else float(request.temperature)
    top_p = 1.0 if request.top_p is None else float(request.top_p)
    return Decoding(max_tokens, Sampling(temperature, top_p, request.seed), tuple(stop))

"""The server's limits: what one request may hold and how the generation queue behaves.

Every limit has a default that suits a CPU or a single GPU serving small grounded answers; `groundlm serve`
and `create_app` take a `Limits` to change them. A request over a limit gets a 4xx in the OpenAI error shape
whose message names the limit and its value.
"""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Per-request limits and queue settings (defaults in brackets in the field comments)."""

    # Whole request body in bytes, counted before JSON parsing. A 10 MiB image is 13.3 MiB as base64.
    max_body_bytes: int = 20 * MIB
    # One image after base64 decoding.
    max_image_bytes: int = 10 * MIB
    # Width x height claimed by the image header, checked before decoding (decompression bombs): 4096 x 4096.
    max_image_pixels: int = 4096 * 4096
    # The model reads one image per conversation; 0 makes the server text-only.
    max_images: int = 1
    # Messages in one conversation, and characters of text over all of them.
    max_messages: int = 64
    max_text_chars: int = 32_000
    # Boxes a request may point at with `<box:i>` slots.
    max_boxes: int = 32
    # `max_tokens` (or `max_completion_tokens`): the default when absent and the largest accepted.
    default_max_tokens: int = 64
    max_tokens: int = 512
    # Batching: at most this many requests per generate call, and the longest a request waits for others.
    max_batch_size: int = 8
    max_wait_ms: float = 10.0
    # Requests waiting for generation (not counting the batch being generated); above it, 503 + Retry-After.
    max_queue: int = 64
    # The longest a request may wait and generate before it gets a 503 (the server never hangs a client).
    request_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        for name in (
            "max_body_bytes", "max_image_bytes", "max_image_pixels", "max_messages", "max_text_chars",
            "default_max_tokens", "max_tokens", "max_batch_size", "max_queue",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"Limits.{name} must be at least 1, got {getattr(self, name)}")
        if self.max_images not in (0, 1):
            raise ValueError(
                f"Limits.max_images must be 0 or 1 (the model reads one image), got {self.max_images}"
            )
        if self.max_boxes < 0 or self.max_wait_ms < 0 or self.request_timeout_s <= 0:
            raise ValueError("Limits.max_boxes and max_wait_ms must be >= 0 and request_timeout_s > 0")
        if self.default_max_tokens > self.max_tokens:
            raise ValueError(f"Limits.default_max_tokens ({self.default_max_tokens}) is above "
                             f"max_tokens ({self.max_tokens})")

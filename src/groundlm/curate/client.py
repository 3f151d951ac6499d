"""The chat LLM of a curation run: any OpenAI-compatible endpoint (vLLM, `groundlm serve`, a hosted API).

`LLMClient.complete` sends one chat-completions request through the official `openai` client and returns the
answer's text with the tokens it cost. Transient failures (no connection, time-outs, 408/409/429 and 5xx) are
retried with exponential backoff, honouring a server's `Retry-After`; a request the endpoint refuses (400,
422) fails at once as `RequestFailed`, and an endpoint that cannot serve any request at all (401/403: the key;
404: the URL or the model name; no connection on any attempt: down or a wrong address) raises `EndpointError`,
which stops the run instead of skipping every image.
The client's own retries are off, so `Backoff` is the one retry policy (tests make it instant).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

# No request is worth waiting on longer than this between two attempts.
MAX_DELAY_S = 60.0
# Statuses that may succeed when sent again.
_TRANSIENT = {408, 409, 429}
# Statuses that no request to this endpoint will get past.
_FATAL = {401: "the API key was refused", 403: "the API key was refused", 404: "no such URL or model"}


@dataclass(frozen=True)
class Endpoint:
    """Where the chat LLM is: `base_url` (…/v1), the `model` name, the API key (vLLM accepts any) and the
    time one request may take."""

    base_url: str
    model: str
    api_key: str | None = None
    timeout_s: float = 120.0


@dataclass(frozen=True)
class Backoff:
    """How often and how long to wait before sending a failed request again: `retries` more attempts after the
    first, the k-th after `first_s * 2**k` seconds (at most `MAX_DELAY_S`, or longer if `Retry-After` says)."""

    retries: int = 5
    first_s: float = 1.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        wait = min(self.first_s * 2**attempt, MAX_DELAY_S)
        return max(wait, min(retry_after, MAX_DELAY_S)) if retry_after is not None else wait


@dataclass(frozen=True)
class Completion:
    """One answer: its text and its cost in tokens (as the endpoint reports them; 0 when it does not)."""

    content: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    extra: dict | None = None  # fields beyond OpenAI's (`groundlm serve` adds its plain text and objects)


class RequestFailed(Exception):
    """This request got no answer (refused, or still failing after every retry); other requests may succeed."""


class EndpointError(Exception):
    """The endpoint serves no request (wrong key, URL or model): the run stops."""


class Stopped(Exception):
    """The run was interrupted while this request waited to be sent again."""


def _openai():
    try:
        import openai
    except ImportError as err:  # pragma: no cover - the curate extra installs it
        raise EndpointError("groundlm curate needs the openai client: pip install 'groundlm[curate]'") from err
    return openai


def _retry_after(err) -> float | None:
    response = getattr(err, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to the backoff


class LLMClient:
    """Chat completions against one `Endpoint`, safe to call from several threads at once."""

    def __init__(self, endpoint: Endpoint, backoff: Backoff = Backoff(), stop: threading.Event | None = None):
        openai = _openai()
        self.endpoint = endpoint
        self.backoff = backoff
        self.stop = stop or threading.Event()
        self.attempts = 0  # requests sent, retries included
        self._lock = threading.Lock()
        # vLLM and `groundlm serve` without a key accept any; the client insists on a non-empty one.
        self._client = openai.OpenAI(
            base_url=endpoint.base_url, api_key=endpoint.api_key or "EMPTY", max_retries=0,
            timeout=endpoint.timeout_s,
        )

    def complete(self, messages: list[dict], **params) -> Completion:
        """Send `messages` with `params` (temperature, max_tokens, ...) until an answer comes back."""
        openai = _openai()
        failure, retry_after, reached = "", None, False
        for attempt in range(self.backoff.retries + 1):
            if attempt and self.stop.wait(self.backoff.delay(attempt - 1, retry_after)):
                raise Stopped(failure)
            if self.stop.is_set():
                raise Stopped("interrupted")
            retry_after = None
            with self._lock:
                self.attempts += 1
            try:
                response = self._client.chat.completions.create(
                    model=self.endpoint.model, messages=messages, **params
                )
            except openai.APIStatusError as err:
                status = err.status_code
                if status in _FATAL:
                    raise EndpointError(
                        f"{self.endpoint.base_url} answered HTTP {status} ({_FATAL[status]}; model "
                        f"{self.endpoint.model!r}): {_message(err)}"
                    ) from err
                failure, reached = f"HTTP {status}: {_message(err)}", True
                if status not in _TRANSIENT and status < 500:
                    raise RequestFailed(failure) from err
                retry_after = _retry_after(err)
            except openai.APIConnectionError as err:  # time-outs included
                failure = f"{type(err).__name__}: {err}"
                reached = reached or _waited(err, openai)
            else:
                return _completion(response)
        attempts = f"after {self.backoff.retries + 1} attempts"
        if not reached:  # no attempt connected: every other request would wait out its retries the same way
            where = f"{self.endpoint.base_url} (model {self.endpoint.model!r}; {failure}, {attempts})"
            raise EndpointError(f"cannot reach {where}: is the server running at this URL?")
        raise RequestFailed(f"{failure} ({attempts})")


def _waited(err, openai) -> bool:
    """Whether a failed attempt got through to the server and then timed out waiting for the answer. The
    transport's connect time-out is told apart by name: openai's transport is httpx or httpx2 by version."""
    return isinstance(err, openai.APITimeoutError) and type(err.__cause__).__name__ != "ConnectTimeout"


def _message(err) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])[:300]
    return str(getattr(err, "message", err))[:300]


def _completion(response) -> Completion:
    choices = getattr(response, "choices", None) or []
    message = choices[0].message if choices else None
    content = (message.content if message is not None else None) or ""
    usage = getattr(response, "usage", None)
    extra = (response.model_extra or {}) if hasattr(response, "model_extra") else {}
    return Completion(
        content=content,
        prompt_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
        finish_reason=choices[0].finish_reason if choices else None,
        extra=extra or None,
    )

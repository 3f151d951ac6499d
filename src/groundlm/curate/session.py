"""What a pipeline asks through: the chat LLM and the describer, behind the cache, with validation and the
run's counts.

`Session.ask(messages, parse, what=...)` returns the parsed answer of the first valid reply. A cached answer
is parsed again (so a changed parser or prompt set is honoured); an invalid reply is asked again up to
`Settings.invalid_retries` times, then the request is remembered as invalid and `Skip` is raised with the
reason, which the pipeline counts and the record is never written. A request that gets no answer at all
(`client.RequestFailed`) is skipped too, but not remembered: a rerun sends it again.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from ..data.report import Skips
from ..images import ImageError
from .answers import Invalid
from .cache import Cache, request_key
from .client import LLMClient, RequestFailed
from .describers import Described, Describer

T = TypeVar("T")


class Skip(Exception):
    """This piece of data is not made; `reason` is counted in the run's report."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Settings:
    """How the chat LLM is asked: its decoding parameters and how invalid answers are handled."""

    temperature: float = 0.7
    max_tokens: int = 1024
    invalid_retries: int = 2  # replies asked for again after an invalid one
    retry_invalid: bool = False  # send again the requests a previous run gave up on as invalid
    describe_max_tokens: int = 300

    def params(self) -> dict:
        return {"temperature": self.temperature, "max_tokens": self.max_tokens}


@dataclass
class Tally(Skips):
    """A run's counts: requests sent and answered from the cache, tokens, invalid replies, skips."""

    requests: int = 0  # answers received from the chat LLM in this run
    cached: int = 0  # answers taken from the cache
    prompt_tokens: int = 0
    completion_tokens: int = 0
    described: int = 0  # answers of the describer in this run
    invalid: Counter = field(default_factory=Counter)  # replies refused, per reason (asked again or skipped)
    records: int = 0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()

    def summary(self) -> str:
        text = (f"{self.records} records; {self.requests} LLM requests ({self.prompt_tokens} prompt + "
                f"{self.completion_tokens} completion tokens), {self.cached} answers from the cache")
        if self.described:
            text += f", {self.described} descriptions"
        if self.invalid:
            text += ", invalid replies: " + ", ".join(f"{r}: {n}" for r, n in self.invalid.most_common())
        return text + self.skipped_text()


class Session:
    """The LLM and the describer of one run, shared by its worker threads."""

    def __init__(
        self, client: LLMClient, cache: Cache, settings: Settings = Settings(), *,
        describer: Describer | None = None, image_root: str | Path = ".",
    ):
        self.client = client
        self.cache = cache
        self.settings = settings
        self.describer = describer
        self.image_root = Path(image_root)
        self.tally = Tally()

    def skip(self, reason: str) -> None:
        with self.tally.lock:
            self.tally.skip(reason)

    def ask(self, messages: list[dict], parse: Callable[[str], T | Invalid], *, what: str) -> T:
        """The parsed first valid answer to `messages` (`what` names the request in skip reasons)."""
        params = self.settings.params()
        key = request_key("chat", self.client.endpoint.model, messages, params)
        entry = self.cache.get(key)
        if entry is not None and isinstance(entry.get("content"), str):
            value = parse(entry["content"])
            if not isinstance(value, Invalid):
                with self.tally.lock:
                    self.tally.cached += 1
                return value
        elif entry is not None and "invalid" in entry and not self.settings.retry_invalid:
            raise Skip(f"{what}: {entry['invalid']}")
        reason = ""
        for _ in range(self.settings.invalid_retries + 1):
            try:
                answer = self.client.complete(messages, **params)
            except RequestFailed as err:
                raise Skip(f"{what}: no answer ({err})") from err
            with self.tally.lock:
                self.tally.requests += 1
                self.tally.prompt_tokens += answer.prompt_tokens
                self.tally.completion_tokens += answer.completion_tokens
            value = parse(answer.content)
            if not isinstance(value, Invalid):
                self.cache.put(key, {"content": answer.content, "prompt_tokens": answer.prompt_tokens,
                                     "completion_tokens": answer.completion_tokens})
                return value
            reason = value.reason
            with self.tally.lock:
                self.tally.invalid[f"{what}: {reason}"] += 1
        self.cache.put(key, {"invalid": reason})
        raise Skip(f"{what}: {reason}")

    def describe(self, image: str, turns: list[dict]) -> Described:
        """The describer's next answer in the conversation `turns` about `image` (relative to the image root)."""
        if self.describer is None:
            raise ValueError("this pipeline needs a describer (a groundlm model): give --describer")
        path = self.image_root / image
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as err:
            raise Skip(f"image not readable ({type(err).__name__})") from err
        limit = self.settings.describe_max_tokens
        key = request_key("describe", self.describer.identity, digest, turns, limit)
        entry = self.cache.get(key)
        if entry is not None and isinstance(entry.get("content"), str):
            with self.tally.lock:
                self.tally.cached += 1
            return Described(entry["content"], int(entry.get("completion_tokens", 0)))
        try:
            described = self.describer.describe(path, turns, limit)
        except RequestFailed as err:
            raise Skip(f"describe: no answer ({err})") from err
        except ImageError as err:
            raise Skip(f"describe: unreadable image ({err})") from err
        self.cache.put(key, {"content": described.text, "completion_tokens": described.tokens})
        with self.tally.lock:
            self.tally.described += 1
        return described

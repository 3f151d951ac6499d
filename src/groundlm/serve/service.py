"""One served model: its engine, its batcher and the name clients use; shared by the API and the web page.

`complete` is the single way to an answer, so requests from the page and from API clients share batches, the
queue limit and the timeout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from starlette.concurrency import run_in_threadpool

from ..inference import GroundLM
from .batcher import Batcher, QueueFullError, QueueTimeoutError
from .content import Conversation, Decoding
from .engine import Engine, Job, Reply
from .errors import APIError
from .limits import Limits


class Service:
    """A `GroundLM` served under `name`, with `limits`."""

    def __init__(self, lm: GroundLM, *, name: str | None = None, limits: Limits | None = None):
        self.lm = lm
        self.limits = limits or Limits()
        self.name = name or _default_name(lm)
        self.created = int(time.time())
        self.engine = Engine(lm, self.limits)
        self.batcher: Batcher[Job, Reply] = Batcher(
            self.engine.run, key=lambda job: job.decoding.batch_key,
            max_batch_size=self.limits.max_batch_size, max_wait_s=self.limits.max_wait_ms / 1000,
            max_queue=self.limits.max_queue, timeout_s=self.limits.request_timeout_s,
        )

    async def complete(self, conversation: Conversation, decoding: Decoding) -> Reply:
        """Answer a conversation: refuse early when busy, prepare in a thread, then wait for a batch."""
        return await self.answer(await self.prepare(conversation, decoding))

    async def prepare(
        self, conversation: Conversation, decoding: Decoding, on_text: Callable[[str], None] | None = None
    ) -> Job:
        """Refuse when busy, else encode the request in a thread; `on_text` gets the answer piece by piece (it
        is called in the generation thread)."""
        # checked before preparing, so an overloaded server sheds load without decoding images first
        self._refuse_if_full()
        job = await run_in_threadpool(self.engine.prepare, conversation, decoding)
        job.on_text = on_text
        return job

    async def answer(self, job: Job) -> Reply:
        """Wait for `job`'s batch and return its reply; the queue's refusals become 503s."""
        try:
            return await self.batcher.submit(job)
        except QueueFullError as err:
            raise _busy(err) from err
        except QueueTimeoutError as err:
            raise APIError(503, f"the request timed out: {err}", type="server_error", code="timeout",
                           headers={"Retry-After": str(self.batcher.retry_after())}) from err

    def _refuse_if_full(self) -> None:
        if self.batcher.full():
            raise _busy(QueueFullError(self.batcher.waiting, self.batcher.retry_after()))

    def health(self) -> dict:
        """What `/health` reports."""
        b = self.batcher
        return {
            "status": "ok", "model": self.name,
            "queue": {"waiting": b.waiting, "running": b.running, "max_queue": b.max_queue,
                      "max_batch_size": b.max_batch_size, "batches": b.batches, "requests": b.items},
        }


def _busy(err: QueueFullError) -> APIError:
    return APIError(503, str(err), type="server_error", code="server_overloaded",
                    headers={"Retry-After": str(err.retry_after)})


def _default_name(lm: GroundLM) -> str:
    path = getattr(lm.model, "name_or_path", "") or getattr(lm.model.config, "_name_or_path", "")
    return Path(str(path)).name or "groundlm"

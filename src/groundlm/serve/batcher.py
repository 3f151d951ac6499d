"""A small async queue that groups concurrent requests into batches for one generate call.

Requests wait at most `max_wait_s` for company: the oldest waiting request starts a batch, which takes up to
`max_batch_size` waiting requests with the same key (requests with different decoding settings cannot share a
generate call) in arrival order. Batches run one at a time in a single worker thread, so the event loop
stays free to accept requests, answer `/health` and stream replies while the model works; requests that
arrive during a batch form the next one, which is how batches grow under load.

It never hangs a client: when `max_queue` requests are already waiting, `submit` raises `QueueFullError` at
once (the API answers 503 with `Retry-After`), and a request that has waited and generated for `timeout_s`
raises `QueueTimeoutError`. A request whose client went away is dropped before its batch is generated.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger("groundlm.serve")


class QueueFullError(Exception):
    """The queue holds `max_queue` waiting requests; `retry_after` is a guess in whole seconds."""

    def __init__(self, waiting: int, retry_after: int):
        super().__init__(
            f"the server is busy: {waiting} requests are already waiting; retry in {retry_after} s"
        )
        self.waiting = waiting
        self.retry_after = retry_after


class QueueTimeoutError(Exception):
    """A request waited and generated longer than the batcher's timeout."""


@dataclass
class _Pending:
    item: Any
    key: Hashable
    future: asyncio.Future
    arrived: float


class Batcher(Generic[T, R]):
    """Groups `submit`ted items into batches for `run_batch(items) -> results` (same order and length)."""

    def __init__(
        self, run_batch: Callable[[list[T]], Sequence[R]], *,
        key: Callable[[T], Hashable] = lambda item: None, max_batch_size: int = 8, max_wait_s: float = 0.01,
        max_queue: int = 64, timeout_s: float = 300.0,
    ):
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be at least 1")
        self.run_batch = run_batch
        self.key = key
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self._pending: list[_Pending] = []
        self._running = 0
        self._batch_seconds = 1.0  # moving average of a batch's duration, for Retry-After
        self._task: asyncio.Task | None = None
        self._arrived: asyncio.Event | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.batches = 0  # counters for /health and the tests
        self.items = 0

    # ---- state ---------------------------------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        """Requests queued and not yet in a running batch."""
        return len(self._pending)

    @property
    def running(self) -> int:
        """Requests in the batch being generated now."""
        return self._running

    def full(self) -> bool:
        """True when a new request would be refused."""
        return len(self._pending) >= self.max_queue

    def retry_after(self) -> int:
        """Seconds until the queue has likely drained by one batch's worth (at least 1)."""
        batches_ahead = 1 + len(self._pending) // self.max_batch_size
        return max(1, math.ceil(batches_ahead * self._batch_seconds))

    # ---- life ----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the batching loop on the running event loop (again after `stop`, e.g. a new test client)."""
        task = self._task
        if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
            return
        self._arrived = asyncio.Event()
        self._pending = []
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="groundlm-generate")
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="groundlm-batcher")

    async def stop(self) -> None:
        """Stop the loop and fail whatever still waits (the server is shutting down)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for p in self._pending:
            if not p.future.done():
                p.future.set_exception(QueueTimeoutError("the server is shutting down"))
        self._pending = []
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    async def submit(self, item: T) -> R:
        """Queue `item` and wait for its result; raises `QueueFullError` at once when the queue is full."""
        await self.start()  # no-op when running; lets an app work without its lifespan having run
        if self.full():
            raise QueueFullError(len(self._pending), self.retry_after())
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        self._pending.append(_Pending(item, self.key(item), future, loop.time()))
        assert self._arrived is not None
        self._arrived.set()
        try:
            # wait_for cancels the future on timeout or when the client's task is cancelled; the loop then
            # skips it instead of generating an answer nobody reads
            return await asyncio.wait_for(future, self.timeout_s)
        except asyncio.TimeoutError as err:
            raise QueueTimeoutError(f"no answer within {self.timeout_s:g} s") from err

    # ---- the loop ------------------------------------------------------------------------------------------
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._arrived is not None
        while True:
            self._pending = [p for p in self._pending if not p.future.done()]
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            first = self._pending[0]
            while True:
                same = [p for p in self._pending if p.key == first.key and not p.future.done()]
                left = first.arrived + self.max_wait_s - loop.time()
                if len(same) >= self.max_batch_size or left <= 0 or first.future.done():
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch = [p for p in self._pending if p.key == first.key and not p.future.done()]
            batch = batch[: self.max_batch_size]
            taken = {id(p) for p in batch}
            self._pending = [p for p in self._pending if id(p) not in taken]
            if batch:
                await self._run(batch, loop)

    async def _run(self, batch: list[_Pending], loop: asyncio.AbstractEventLoop) -> None:
        self._running = len(batch)
        started = time.monotonic()
        try:
            results = await loop.run_in_executor(self._executor, self.run_batch, [p.item for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(batch)} items")
        except Exception as err:  # a server fault: every request of the batch gets it, the loop goes on
            log.exception("generation failed for a batch of %d", len(batch))
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(err)
        else:
            for p, result in zip(batch, results, strict=True):
                if not p.future.done():
                    p.future.set_result(result)
        finally:
            self._running = 0
            seconds = time.monotonic() - started
            self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * seconds
            self.batches += 1
            self.items += len(batch)

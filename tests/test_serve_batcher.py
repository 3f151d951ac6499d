"""The batcher on its own: grouping by key, batch size, a full queue, failures, abandoned requests."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from groundlm.serve.batcher import Batcher, QueueFullError, QueueTimeoutError


class Recorder:
    """A run_batch that records its batches (and the thread it runs on) and doubles its items."""

    def __init__(self, seconds: float = 0.0, fail_on=None):
        self.batches: list[list] = []
        self.threads: set[str] = set()
        self.seconds = seconds
        self.fail_on = fail_on

    def __call__(self, items):
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.seconds)
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError("boom")
        return [x * 2 for x in items]


def _run(coro):
    return asyncio.run(coro)


def test_concurrent_items_are_grouped_by_key_in_arrival_order():
    rec = Recorder()

    async def main():
        b = Batcher(rec, key=lambda x: x % 2, max_batch_size=8, max_wait_s=0.2)
        try:
            return await asyncio.gather(*(b.submit(x) for x in [1, 2, 3, 4, 5]))
        finally:
            await b.stop()

    assert _run(main()) == [2, 4, 6, 8, 10]
    assert sorted(rec.batches) == [[1, 3, 5], [2, 4]]
    assert all(name.startswith("groundlm-generate") for name in rec.threads)  # never on the event loop


def test_batches_never_exceed_max_batch_size():
    rec = Recorder()

    async def main():
        b = Batcher(rec, max_batch_size=3, max_wait_s=0.2)
        try:
            return await asyncio.gather(*(b.submit(x) for x in range(7)))
        finally:
            await b.stop()

    assert _run(main()) == [2 * x for x in range(7)]
    assert [len(batch) for batch in rec.batches] == [3, 3, 1]


def test_full_queue_raises_at_once():
    rec = Recorder(seconds=0.3)

    async def main():
        b = Batcher(rec, max_batch_size=1, max_wait_s=0.0, max_queue=1)
        try:
            first = asyncio.ensure_future(b.submit(1))
            await asyncio.sleep(0.05)  # 1 is running
            second = asyncio.ensure_future(b.submit(2))  # 2 waits
            await asyncio.sleep(0.01)
            started = time.monotonic()
            with pytest.raises(QueueFullError) as err:
                await b.submit(3)
            assert time.monotonic() - started < 0.1 and err.value.retry_after >= 1
            return await asyncio.gather(first, second)
        finally:
            await b.stop()

    assert _run(main()) == [2, 4]


def test_a_failing_batch_fails_its_requests_and_the_loop_goes_on():
    rec = Recorder(fail_on=13)

    async def main():
        b = Batcher(rec, max_batch_size=4, max_wait_s=0.05)
        try:
            results = await asyncio.gather(b.submit(13), b.submit(1), return_exceptions=True)
            assert all(isinstance(r, RuntimeError) for r in results)
            return await b.submit(5)
        finally:
            await b.stop()

    assert _run(main()) == 10


def test_timeout_and_abandoned_requests_are_not_generated():
    rec = Recorder(seconds=0.3)

    async def main():
        b = Batcher(rec, max_batch_size=1, max_wait_s=0.0, timeout_s=0.1)
        try:
            running = asyncio.ensure_future(b.submit(1))
            await asyncio.sleep(0.02)
            with pytest.raises(QueueTimeoutError):
                await b.submit(2)  # waits behind 1 longer than the timeout
            with pytest.raises(QueueTimeoutError):
                await running
            await asyncio.sleep(0.4)
        finally:
            await b.stop()

    _run(main())
    assert [1] in rec.batches and [2] not in rec.batches

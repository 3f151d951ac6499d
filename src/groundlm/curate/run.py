"""Running a pipeline over every subject: bounded concurrency, progress, interruption, the output file.

Subjects are curated by `concurrency` worker threads (each request waits on the network, so threads are
enough). The output is written once, atomically and in the subjects' order, when every subject is done: a rerun
after a crash or Ctrl-C rebuilds it from the cache, so it never holds a record twice, and the requests answered
before the interruption are not sent again. On Ctrl-C the workers stop sending new requests; those in flight
finish (and are cached) or time out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from ..records import Record, write_jsonl
from .client import EndpointError, Stopped
from .pipeline import Pipeline
from .session import Session, Skip, Tally
from .subjects import Subject


class Interrupted(Exception):
    """The run stopped early (Ctrl-C); what was answered is in the cache."""


def _one(
    pipeline: Pipeline, subject: Subject, session: Session, stop: threading.Event, fatal: list[EndpointError]
) -> list[Record]:
    if stop.is_set():
        raise Stopped("interrupted")
    try:
        records = pipeline.curate(subject, session)
    except Skip as skip:  # a pipeline may also give up on a whole subject by raising
        session.skip(skip.reason)
        return []
    except EndpointError as err:
        # stop at once, before this worker takes the next subject: the endpoint would refuse it too
        fatal.append(err)
        stop.set()
        raise
    with session.tally.lock:
        session.tally.records += len(records)
    return records


def curate_subjects(
    pipeline: Pipeline, subjects: Sequence[Subject], session: Session, *, concurrency: int = 4,
    stop: threading.Event | None = None, on_done: Callable[[Tally], None] | None = None,
) -> list[Record]:
    """The records of every subject, in the subjects' order.

    Raises `EndpointError` when the endpoint refuses every request (key, URL, model) and `Interrupted` when
    `stop` is set or Ctrl-C arrives; `on_done` is called with the tally after each subject."""
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    stop = stop or session.client.stop
    results: list[list[Record] | None] = [None] * len(subjects)
    fatal: list[EndpointError] = []  # what stopped the run, when the endpoint did
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="curate")
    try:
        pending = {pool.submit(_one, pipeline, s, session, stop, fatal): i for i, s in enumerate(subjects)}
        while pending:
            done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                index = pending.pop(future)
                results[index] = future.result()
                if on_done is not None:
                    on_done(session.tally)
    except (KeyboardInterrupt, Stopped) as err:
        stop.set()
        if fatal:  # a worker stopped because the endpoint refused: that is the reason, not an interruption
            raise fatal[0] from None
        raise Interrupted("interrupted") from err
    except BaseException:  # EndpointError, or a bug: the other workers stop too
        stop.set()
        raise
    finally:
        pool.shutdown(wait=not stop.is_set(), cancel_futures=True)
    return [r for records in results for r in records or []]


def write_records(path: str | Path, records: list[Record]) -> Path:
    """Write the curated records (validated by `records.write_jsonl`, atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, records)
    return path

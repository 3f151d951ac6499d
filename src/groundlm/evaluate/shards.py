"""An evaluation shared out over processes: `torchrun --nproc_per_node N -m groundlm eval ...`.

Each process (rank) predicts its share of the records through the same batched generation as a one-process
run and appends its rows to a file of its own, `predictions.part<rank>.jsonl` beside `predictions.jsonl`.
When every rank is done, rank 0 gathers all rows through torch.distributed and writes the one
`predictions.jsonl` in the records' order; then the part files are removed.

- Sharing out: the records still to predict are cut into batches of `batch_size` as a one-process run cuts
  them, and batch k goes to rank k mod N. Every batch holds the records it would hold in one process, so greedy
  answers are the same (left padding depends only on the batch).
- Resume: each rank reads back its own part file, and also any part file of a run with more ranks whose
  number k has k mod N == rank; rank 0 also reads `predictions.jsonl`. The ids every rank holds are shared
  (all-gather), so the batches still to predict are dealt out evenly whichever rank holds the finished ones,
  and N may differ from the interrupted run's. Predictions need no filesystem shared between machines: a rank
  reads back only part files on its own disk, and rows reach rank 0 through the process group. The generated
  `shapes` benchmark is written by rank 0 into OUT/data and read there by the others (runner.py), so across
  machines either OUT is shared or the benchmark is a records file every machine holds.
- The collectives (all-gather of ids, gather of rows, barrier, broadcast of the metrics) are small Python
  objects between processes of the same job, so the group uses gloo even when the model runs on a GPU.

A one-process run (no `WORLD_SIZE`, or 1) has rank 0 of 1, writes `predictions.jsonl` directly and runs no
collective.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch.distributed as dist

T = TypeVar("T")

# A gather waits for the slowest rank's whole share: allow hours, not gloo's default 30 minutes.
WAIT = timedelta(hours=12)
_PART = re.compile(r"\.part(\d+)$")


def is_main_process() -> bool:
    """Whether this process is rank 0 (or the only process): the one that prints and writes the results."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass(frozen=True)
class Shards:
    """This process's place in the evaluation: `rank` of `world` processes."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    # ---- files ----------------------------------------------------------------------------------------------
    def own_file(self, path: Path) -> Path:
        """Where this rank appends its rows: `path` itself in a one-process run, else its part file."""
        return path if self.world == 1 else part_file(path, self.rank)

    def files_to_read(self, path: Path) -> list[Path]:
        """The existing prediction files whose rows this rank takes over on resume (its own file first)."""
        own = self.own_file(path)
        parts = [p for k, p in part_files(path) if k % self.world == self.rank and p != own]
        merged = [path] if self.main and path != own else []
        return [p for p in [own, *parts, *merged] if p.exists()]

    # ---- collectives ----------------------------------------------------------------------------------------
    def deal(self, batches: Sequence[T]) -> list[T]:
        """This rank's batches: batch k goes to rank k mod world."""
        return list(batches[self.rank :: self.world])

    def union(self, ids: set[str]) -> set[str]:
        """The ids held by any rank."""
        if self.world == 1:
            return set(ids)
        every: list[Any] = [None] * self.world
        dist.all_gather_object(every, sorted(ids))
        return {i for held in every for i in held}

    def gather(self, rows: list[dict]) -> list[dict]:
        """Every rank's rows on rank 0 (rank 0's first); [] on the other ranks."""
        if self.world == 1:
            return rows
        every: list[Any] | None = [None] * self.world if self.main else None
        dist.gather_object(rows, every, dst=0)
        return [row for held in every for row in held] if every is not None else []

    def broadcast(self, value: T) -> T:
        """Rank 0's `value` on every rank."""
        if self.world == 1:
            return value
        box = [value if self.main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def part_file(path: Path, rank: int) -> Path:
    """Rank `rank`'s file beside `path`: predictions.jsonl → predictions.part<rank>.jsonl."""
    return path.with_name(f"{path.stem}.part{rank}{path.suffix}")


def part_files(path: Path) -> list[tuple[int, Path]]:
    """The part files beside `path`, with their rank numbers."""
    found = []
    for p in path.parent.glob(f"{path.stem}.part*{path.suffix}"):
        m = _PART.search(p.name[: len(p.name) - len(path.suffix)])
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


@contextmanager
def sharded() -> Iterator[Shards]:
    """This process's `Shards`: joins torchrun's process group (gloo) when `WORLD_SIZE` > 1 and none is set
    up yet, and leaves it afterwards if it joined it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield Shards()
        return
    joined = not dist.is_initialized()
    if joined:
        dist.init_process_group("gloo", timeout=WAIT)
    try:
        yield Shards(dist.get_rank(), dist.get_world_size())
    finally:
        if joined:
            dist.destroy_process_group()


__all__ = ["Shards", "is_main_process", "part_file", "part_files", "sharded"]

"""A stage's micro-batches built in worker processes: a torch `DataLoader` over the mixture's plan.

The mixture (data/mixture.py) stays in the main process and decides every micro-batch: its source and the
global batch's indices, of which this process takes its slice. Those plans are the DataLoader's sampler; a
worker turns a plan into tensors (load, encode, pad or pack, the objective's targets), `prefetch` batches
ahead per worker. So the batches are a pure function of the seed and the mixture position, whatever
`num_workers` is (0 builds them in the main process, as before), and DataLoader hands them back in plan order.

The sampler runs ahead of the step, so the mixture's own position is not the run's: each batch carries the
mixture position just after its plan, and the loader's `state_dict()` is that of the last batch the loop took.
A checkpoint stores it; resuming builds a new loader from it and continues with the very next plan.

Workers get their own copies of the sources, so what they skip (a bad record, `on_error: skip`) is sent back
with each batch and added to the main process's reports.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from ..data.dataset import LoadReport
from ..data.mixture import Mixture
from .packing import pack
from .sources import StageData


@dataclass
class MicroBatch:
    """One process's share of a micro-batch, ready for the device."""

    source: str
    batch: dict[str, torch.Tensor]
    tasks: list[str]
    position: dict  # the mixture's state just after this batch's plan
    # packed rows only (`packing: true`): [R, L] the sample each position belongs to, -1 on padding
    owner: torch.Tensor | None = None
    skipped: dict[str, LoadReport] = field(default_factory=dict)  # what a worker process skipped, by source


class _Plans(Sampler):
    """The mixture's micro-batches, endless: (source, this process's indices, position after)."""

    def __init__(self, mixture: Mixture, rank: int, batch_size: int):
        self.mixture, self.rank, self.batch_size = mixture, rank, batch_size

    def __iter__(self) -> Iterator[tuple[str, tuple[int, ...], dict]]:
        b = self.batch_size
        while True:
            name, indices = self.mixture.next_batch()
            yield name, tuple(indices[self.rank * b : (self.rank + 1) * b]), self.mixture.state_dict()


def _report_since(report: LoadReport, loaded: int, skipped: Counter, examples: int) -> LoadReport:
    return LoadReport(report.loaded - loaded, report.skipped - skipped, report.examples[examples:])


def merge_report(into: LoadReport, part: LoadReport) -> None:
    """Add what a worker counted to the main process's report (the first ten messages are kept)."""
    into.loaded += part.loaded
    into.skipped.update(part.skipped)
    into.examples.extend(part.examples[: max(0, 10 - len(into.examples))])


class _Build(Dataset):
    """Plan -> `MicroBatch`: the samples, padded right (or packed), and the objective's targets."""

    def __init__(self, data: StageData, processor, objective, packed: bool):
        self.data, self.processor, self.objective, self.packed = data, processor, objective, packed

    def __getitem__(self, plan: tuple[str, tuple[int, ...], dict]) -> MicroBatch:
        name, indices, position = plan
        report = self.data.datasets[name].report
        before = (report.loaded, report.skipped.copy(), len(report.examples))
        samples = self.data.samples(name, indices)
        owner = None
        if self.packed:
            if self.processor.codec.collate([s.locations for s in samples]) is not None:
                raise ValueError(
                    f"packing: location codec {type(self.processor.codec).__name__} gives per-box inputs, "
                    "which packed rows do not carry; set packing: false"
                )
            # padding-free: the micro-batch is one row, each sample's positions restarting at 0
            width = sum(len(s.input_ids) for s in samples)
            packed = pack(samples, self.processor.tokenizer.pad_token_id, row_tokens=width)
            batch, owner = packed.batch, packed.owner
        else:
            batch = self.processor.pad(samples, side="right")
        batch.update(self.objective.targets(samples))
        skipped = {}
        if get_worker_info() is not None:  # a worker's report copy dies with it: send the counts back
            skipped[name] = _report_since(report, *before)
        return MicroBatch(name, batch, self.objective.tasks(samples, name), position, owner, skipped)


def _as_is(item: MicroBatch) -> MicroBatch:
    return item


class StageLoader:
    """The micro-batches of this process, built by `num_workers` worker processes (0: in this one)."""

    def __init__(
        self,
        data: StageData,
        processor,
        objective,
        mixture: Mixture,
        *,
        rank: int,
        batch_size: int,
        num_workers: int = 0,
        prefetch: int = 2,
        packed: bool = False,
        seed: int = 0,
    ):
        self.data = data
        self._position = mixture.state_dict()
        loader = DataLoader(
            _Build(data, processor, objective, packed),
            sampler=_Plans(mixture, rank, batch_size),
            batch_size=None,  # a plan is already a micro-batch
            collate_fn=_as_is,
            num_workers=num_workers,
            prefetch_factor=prefetch if num_workers else None,
            # Its own generator: making the iterator draws a worker base seed, which must not consume the
            # training RNG (dropout would then depend on whether the loader exists).
            generator=torch.Generator().manual_seed(seed),
        )
        self._batches = iter(loader)

    def next(self) -> MicroBatch:
        """The next micro-batch; the loader's position moves past it."""
        item = next(self._batches)
        self._position = item.position
        for name, part in item.skipped.items():
            merge_report(self.data.datasets[name].report, part)
        return item

    def state_dict(self) -> dict:
        """The mixture position after the last micro-batch taken (what a checkpoint stores)."""
        return self._position

    def rewind(self, position: dict) -> None:
        """Give back the batches taken since `position` (an interrupted step that was not run); the loader
        is not used afterwards."""
        self._position = position

    def close(self) -> None:
        """Stop the worker processes."""
        self._batches = None

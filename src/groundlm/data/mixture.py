"""Weighted, deterministic, resumable sampling across data sources (MiniGPT-v2 style).

Each training batch comes from one source, chosen with probability proportional to its ratio (MiniGPT-v2
draws one dataset per batch the same way). Within a source, samples follow a fresh permutation every epoch.
Every choice is a pure function of (seed, step) and the per-source positions, so `state_dict()` — a step
count and one integer per source — is all that is needed to resume at exactly the same sample.

An `ordered` source (a stream read in its own order: tar shards, train/sources.py `ShardSource`) gets no
permutation: its indices are its running position 0, 1, 2, ... (never wrapped), and the source maps a
position to a sample itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Source:
    """A named, indexable data source and its sampling ratio."""

    name: str
    size: int
    ratio: float = 1.0
    ordered: bool = False  # indices are the running position, not a permutation (see the module docstring)


class Mixture:
    """Yields `(source name, [sample indices])` per batch; deterministic for a seed, resumable."""

    def __init__(self, sources: Sequence[Source], *, seed: int = 0, batch_size: int = 1):
        if not sources:
            raise ValueError("a mixture needs at least one source")
        for s in sources:
            if s.size <= 0:
                raise ValueError(f"source {s.name!r} is empty")
            if not s.ratio > 0:
                raise ValueError(f"source {s.name!r}: ratio must be > 0, got {s.ratio}")
        if len({s.name for s in sources}) != len(sources):
            raise ValueError(f"source names must be unique: {[s.name for s in sources]}")
        self.sources = list(sources)
        self.seed = seed
        self.batch_size = batch_size
        weights = np.asarray([s.ratio for s in sources], dtype=np.float64)
        self.probabilities = weights / weights.sum()
        self.step = 0
        self.positions = {s.name: 0 for s in sources}
        self._perms: dict[tuple[int, int], np.ndarray] = {}  # (source index, epoch) -> permutation

    def _permutation(self, k: int, epoch: int) -> np.ndarray:
        key = (k, epoch)
        if key not in self._perms:
            if len(self._perms) > 4 * len(self.sources):  # keep only recent epochs in memory
                self._perms.clear()
            rng = np.random.default_rng([self.seed, k, epoch])
            self._perms[key] = rng.permutation(self.sources[k].size)
        return self._perms[key]

    def choose(self, step: int) -> int:
        """The index of the source that batch `step` is drawn from (a pure function of seed and step)."""
        rng = np.random.default_rng([self.seed, 1_000_003, step])
        return int(rng.choice(len(self.sources), p=self.probabilities))

    def next_batch(self) -> tuple[str, list[int]]:
        """The next batch: its source's name and `batch_size` sample indices in that source."""
        k = self.choose(self.step)
        source = self.sources[k]
        indices = []
        for _ in range(self.batch_size):
            if source.ordered:
                indices.append(self.positions[source.name])
                self.positions[source.name] += 1
                continue
            epoch, offset = divmod(self.positions[source.name], source.size)
            indices.append(int(self._permutation(k, epoch)[offset]))
            self.positions[source.name] += 1
        self.step += 1
        return source.name, indices

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        """Everything needed to resume: the step and each source's position."""
        return {"seed": self.seed, "step": self.step, "positions": dict(self.positions)}

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()`; refuses a state from a different seed or set of sources."""
        if state["seed"] != self.seed:
            raise ValueError(f"mixture state has seed {state['seed']}, this mixture uses {self.seed}")
        if set(state["positions"]) != set(self.positions):
            raise ValueError(
                f"mixture state has sources {sorted(state['positions'])}, this mixture {sorted(self.positions)}"
            )
        self.step = int(state["step"])
        self.positions = {k: int(v) for k, v in state["positions"].items()}

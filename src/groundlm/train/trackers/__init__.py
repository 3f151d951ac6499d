"""Experiment trackers beside `metrics.jsonl`: the recipe's `log_with: tensorboard | wandb`.

A tracker receives every row the metrics log writes (train/monitor.py) as flat numeric scalars
(`loss`, `lr`, `grad_norm`, `samples_per_s`, `task_loss/<task>`, `lr_groups/<module>`) at the row's global
step. Only the main process writes. Each variant is one module; `TRACKERS` maps the recipe's name to its
constructor `(out_dir, run_name, config, resume_at) -> Tracker`, where `resume_at` is the step a resumed run
continues after (its tracker drops what the killed run logged past it, where the backend can).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from .tensorboard_log import TensorBoardTracker
from .wandb_run import WandbTracker


class Tracker(Protocol):
    def log(self, scalars: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


TRACKERS: dict[str, Callable[[Path, str, dict, int | None], Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
}


def scalars(row: dict) -> dict[str, float]:
    """A metrics row's numbers, nested maps flattened to `key/sub` (None and strings dropped)."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    out[f"{key}/{sub}"] = float(v)
        elif isinstance(value, int | float) and not isinstance(value, bool) and key != "step":
            out[key] = float(value)
    return out


__all__ = ["TRACKERS", "Tracker", "scalars"]

"""What a person sees while training: a progress bar per stage and a JSONL metrics log.

`OUT/metrics.jsonl` holds one line per optimizer step:

    {"step": 12, "stage": "sft", "stage_step": 12, "loss": 3.41, "task_loss": {"refer": 3.9, "vqa": 2.2},
     "lr": 0.0004, "lr_groups": {"connector": 0.0004, ...}, "samples_per_s": 61.3, "grad_norm": 1.7,
     "skipped": false, "nonfinite": 0, "source": ["shapes"]}

`loss` is the mean over the step's loss units (all processes, all micro-batches; for an `lm` stage, the
supervised tokens: train/objectives.py); `task_loss` the same mean restricted to each task's samples. A
skipped (non-finite) step has `loss: null` and `skipped: true`. An objective may add fields of its own: an
`lm` stage of a model whose output carries location losses adds `location_losses` (each term's value in
this process's last forward of the step). With the recipe's `log_with`, each row also goes to a tracker
(train/trackers/: TensorBoard event files or a wandb run).
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

from .trackers import Tracker, scalars


class MetricsLog:
    """Append-only JSONL metrics, flushed every line so a killed run keeps everything up to its last step."""

    def __init__(self, path: str | Path, resume_at: int | None = None, tracker: Tracker | None = None):
        """A new log (a file already there is replaced), or with `resume_at` the log of a run resumed at
        that step (the rows it logged after its checkpoint are dropped: those steps run again). Every row
        is also given to `tracker` (closed with the log)."""
        self.tracker = tracker
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_at is None:
            self.path.unlink(missing_ok=True)
        else:
            rewind_metrics(self.path, resume_at)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, row: dict) -> None:
        """Append one step's metrics."""
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self.tracker is not None:
            self.tracker.log(scalars(row), row["step"])

    def close(self) -> None:
        """Close the file (and the tracker)."""
        self._file.close()
        if self.tracker is not None:
            self.tracker.close()


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics log (a torn last line, from a kill mid-write, is ignored)."""
    rows = []
    path = Path(path)
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def rewind_metrics(path: str | Path, step: int) -> None:
    """Drop the rows after `step` (steps a killed run logged after its last checkpoint); atomic rewrite."""
    path = Path(path)
    if not path.is_file():
        return
    rows = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    os.replace(tmp, path)


def task_means(parts: list[dict[str, list[float]]]) -> dict[str, float]:
    """Each task's mean loss per unit, from every process's `{task: [loss sum, units]}`, by task name."""
    merged: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for part in parts:
        for task, (total, count) in part.items():
            merged[task][0] += total
            merged[task][1] += count
    return {t: total / count for t, (total, count) in sorted(merged.items()) if count > 0}


class Progress:
    """A tqdm bar for one stage showing loss (smoothed), learning rate and samples/s; tqdm adds the ETA."""

    def __init__(self, total: int, initial: int, description: str, enabled: bool):
        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=description,
            unit="step",
            disable=not enabled,
            dynamic_ncols=True,
        )
        self.loss: float | None = None
        self.speed: float | None = None

    def update(self, loss: float | None, lr: float, samples_per_s: float) -> None:
        """Advance one step; loss and speed are exponential moving averages (a single step is noisy)."""
        if loss is not None:
            self.loss = loss if self.loss is None else 0.9 * self.loss + 0.1 * loss
        self.speed = samples_per_s if self.speed is None else 0.9 * self.speed + 0.1 * samples_per_s
        shown = "nan" if self.loss is None else f"{self.loss:.4f}"
        self.bar.set_postfix_str(f"loss={shown} lr={lr:.2e} samples/s={self.speed:.1f}", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()

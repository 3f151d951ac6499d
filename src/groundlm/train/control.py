"""What steers a run besides the recipe: hooks, early stops, stop signals, the position saved in checkpoints."""

from __future__ import annotations

import dataclasses
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn


@dataclass
class TrainHooks:
    """Test and research hooks: `loss(step, loss) -> loss` may replace a micro-batch's loss (e.g. with NaN);
    `after_backward(step, model)` sees the summed gradients of a step before clipping and the update;
    `stage_steps(index, stage, done) -> steps` may shorten a stage (a time budget: `groundlm demo`); it is
    asked as the stage starts (`done` = 0) and before each of its later steps, and answers at least `done`.
    The cosine then ends at the new last step; the run's recipe.yaml and checkpoints record the steps the
    stage really ran. Every process must get the same answer."""

    loss: Callable[[int, torch.Tensor], torch.Tensor] | None = None
    after_backward: Callable[[int, nn.Module], None] | None = None
    stage_steps: Callable[[int, Any, int], int] | None = None


def shortened(stage: Any, steps: int, done: int = 0) -> Any:
    """The stage (a `StageSpec`) run for `steps` (<= its recipe's) steps, `done` of them run.

    Shortened as it starts, the stage keeps its warmup share; once running, its warmup is what it was."""
    if not max(1, done) <= steps <= stage.steps:
        raise ValueError(
            f"stage_steps hook: stage {stage.name} has {stage.steps} steps ({done} run), cannot run {steps}"
        )
    if steps == stage.steps:
        return stage
    warmup = stage.warmup_steps or 0
    warmup = min(round(warmup * steps / stage.steps) if done == 0 else warmup, steps - 1)
    return dataclasses.replace(stage, steps=steps, warmup_steps=warmup)


class TrainingStopped(RuntimeError):
    """Training stopped early (interrupt, or too many non-finite losses); a checkpoint was saved first."""

    def __init__(self, message: str, checkpoint_dir: Path | None, exit_code: int):
        super().__init__(message)
        self.checkpoint_dir = checkpoint_dir
        self.exit_code = exit_code


@dataclass
class RunState:
    """The loop's position and counters; saved as state.json in every checkpoint."""

    stage: int = 0  # index of the stage running (== number of stages when all are done)
    stage_step: int = 0  # optimizer steps done in that stage
    global_step: int = 0
    samples: int = 0
    nonfinite_total: int = 0
    nonfinite_run: int = 0  # non-finite steps in a row
    lora: dict | None = None  # the adapters the model carries (a LoraSpec as a dict)
    trained: list[str] = field(default_factory=list)  # parameters changed so far (canonical names)
    mixture: dict | None = None
    scheduler: dict | None = None
    world_size: int = 1


class StopSignal:
    """Turns the first SIGINT/SIGTERM into a request to stop after the current step (and save)."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict = {}

    def install(self) -> None:
        """Catch SIGINT and SIGTERM (only possible from the main thread)."""
        if not _in_main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        if self.received is not None:  # a second Ctrl-C: stop now, without a checkpoint
            raise KeyboardInterrupt
        self.received = signum
        print(
            f"\n{signal.Signals(signum).name}: stopping after this step and saving a checkpoint "
            "(press Ctrl-C again to abort without one)",
            flush=True,
        )

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()

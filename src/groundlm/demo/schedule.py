"""The demo's schedule: a recipe's steps scaled to a wall-time budget, and the hook that keeps a slow run in it.

The recipe's steps set each stage's share of the training; `--minutes N` (default `DEFAULT_MINUTES`) scales
them all by one factor so that training, evaluation, the speed probe and start-up fill N minutes on this
machine. The factor comes from this machine's speed per stage, measured once and cached (`calibrate.py`).
A shared machine does not always keep the pace of its probe, so the run checks the clock as each stage starts
and every `StageFitter.CHECK_EVERY` steps: a stage that would overrun the budget at the pace measured so far is
shortened to fit (`demo.json` lists it under `shortened`; such a run is not comparable step for step with a
steady one).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..train.recipe import Recipe
from .calibrate import training_minutes

# The budget of `groundlm demo` without --minutes: speed probe, training, evaluation and start-up.
DEFAULT_MINUTES = 15.0
QUICK_MINUTES = 2.0
# Evaluating EVAL_SCENES test scenes (800 prompts), with a margin. It does not scale with the budget, so it is
# taken out before the training steps are scaled.
EVAL_MINUTES = 0.4
QUICK_EVAL_SCENES = (
    25  # --quick evaluates the first 25 test scenes (200 prompts), so training keeps its share
)
# The speed probe (`calibrate.py`: PROBE_STEPS per stage and a model build), with a margin; it runs inside the
# budget on a machine's first demo. Its time is reserved on every run, measured or cached, so that the steps,
# and so the metrics, do not depend on whether this run measured.
PROBE_MINUTES = 0.75
# Model building, saving and the report, with a margin.
OVERHEAD_MINUTES = 0.25
# The schedule plans at this share of the probed speed: a shared machine does not always keep its probe's pace,
# and `StageFitter` shortens whatever a slower run cannot fit, so this only sets how often that happens.
SUSTAINED_SPEED = 0.95
EVAL_SCENES = 100
@dataclass
class DemoConfig:
    """What `groundlm demo` runs."""

    out: Path = Path("runs/demo")
    minutes: float | None = None  # the wall-time budget; None: DEFAULT_MINUTES (or QUICK_MINUTES)
    quick: bool = False
    seed: int = 0
    recipe: str = "shapes"
    eval_scenes: int | None = None  # None: EVAL_SCENES (QUICK_EVAL_SCENES with quick)
    progress: bool = True

    def scenes(self) -> int:
        """The number of ShapesWorld test scenes evaluated."""
        if self.eval_scenes is not None:
            return self.eval_scenes
        return QUICK_EVAL_SCENES if self.quick else EVAL_SCENES


def budget_minutes(config: DemoConfig) -> float:
    """The budget the schedule is sized for."""
    if config.minutes is not None:
        return float(config.minutes)
    return QUICK_MINUTES if config.quick else DEFAULT_MINUTES


def fixed_minutes(eval_scenes: int) -> float:
    """The part of the budget that does not scale with the training steps: evaluation, speed probe, start-up."""
    return EVAL_MINUTES * eval_scenes / EVAL_SCENES + PROBE_MINUTES + OVERHEAD_MINUTES


def scale_recipe(
    recipe: Recipe,
    minutes: float,
    *,
    seed: int,
    speeds: dict[str, float],
    eval_scenes: int = EVAL_SCENES,
) -> tuple[Recipe, float]:
    """A copy of `recipe` whose stages fit `minutes` of wall time; returns it and the step factor.

    `speeds` are this machine's samples/s per stage (`calibrate.stage_speeds`). Every stage keeps its share
    of the steps: all are multiplied by SUSTAINED_SPEED x (minutes - fixed costs) / (the recipe's training
    minutes at `speeds`), the fixed costs being the evaluation of `eval_scenes` scenes, the speed probe and
    start-up. At least 2 steps per stage, so even a tiny budget runs every stage.
    """
    if minutes <= 0:
        raise ValueError(f"--minutes must be positive, got {minutes}")
    training = max(minutes - fixed_minutes(eval_scenes), 0.0)
    factor = SUSTAINED_SPEED * training / training_minutes(recipe, speeds)
    stages = []
    for stage in recipe.stages:
        steps = max(2, round(stage.steps * factor))
        warmup = min(round((stage.warmup_steps or 0) * steps / stage.steps), steps - 1)
        stages.append(dataclasses.replace(stage, steps=steps, warmup_steps=warmup, save_every=0))
    return dataclasses.replace(recipe, stages=stages, seed=seed), factor


@dataclass
class StageFitter:
    """The `stage_steps` hook of the demo's training run: shortens a stage that would overrun the budget.

    The pace of a run is its wall time over the time the same steps were planned to take at the probed
    `speeds`. As stage i > 0 starts, the earlier stages' pace predicts the time of the stages left; every
    `CHECK_EVERY` steps (after the first `CHECK_AFTER`), the running stage's own pace does. When the prediction
    exceeds the time left until `deadline` (when training must end), the stage gets the steps that fit,
    less 2% so that noise does not shorten it again at every check. A run that keeps the probed pace keeps its
    steps: that run is the deterministic one.
    """

    CHECK_AFTER = 50
    CHECK_EVERY = 25

    recipe: Recipe
    speeds: dict[str, float]
    start: float  # clock() when training began
    deadline: float  # clock() by which training must end
    clock: Callable[[], float] = time.perf_counter
    shortened: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)  # name: (planned, run)
    _stage_start: float = 0.0

    def planned_seconds(self, index: int) -> float:
        """Stage `index`'s time at the probed speed and its planned steps."""
        stage = self.recipe.stages[index]
        return stage.steps * stage.batch_size / self.speeds[stage.name]

    def __call__(self, index: int, stage, done: int) -> int:
        """The steps stage `index` runs, `done` of them run: as many as it has, or fewer when they would overrun."""
        now = self.clock()
        later = sum(self.planned_seconds(i) for i in range(index + 1, len(self.recipe.stages)))
        if done == 0:
            self._stage_start = now
            if index == 0:
                return stage.steps
            pace = (now - self.start) / max(sum(self.planned_seconds(i) for i in range(index)), 1e-9)
            per_step = pace * self.planned_seconds(index) / self.recipe.stages[index].steps
        elif done >= self.CHECK_AFTER and done % self.CHECK_EVERY == 0:
            per_step = (now - self._stage_start) / done
            pace = per_step * self.recipe.stages[index].steps / self.planned_seconds(index)
        else:
            return stage.steps
        left = self.deadline - now - later * pace  # for this stage's remaining steps
        if (stage.steps - done) * per_step <= left:
            return stage.steps
        steps = min(stage.steps, max(done, 2, done + int(0.98 * max(left, 0.0) / per_step)))
        if steps < stage.steps:
            planned = self.shortened.get(stage.name, (stage.steps, 0))[0]
            self.shortened[stage.name] = (planned, steps)
        return steps

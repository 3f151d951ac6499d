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
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..train.recipe import Recipe
from .calibrate import training_minutes

# The budget of `groundlm demo` without --minutes: speed probe, training, evaluation and start-up.
DEFAULT_MINUTES = 15.0
QUICK_MINUTES = 2.0
# The ShapesWorld test scenes the demo evaluates (one prompt per task each): 250, since a score on 100 moves by
# +-0.05 from one set of scenes to another.
EVAL_SCENES = 250
# Evaluating EVAL_SCENES test scenes (2000 prompts), with a margin (0.56 min measured on a quiet 2-core AVX-512
# machine). It does not scale with the budget, so it is taken out before the training steps are scaled.
EVAL_MINUTES = 0.8
QUICK_EVAL_SCENES = (
    25  # --quick evaluates the first 25 test scenes (200 prompts), so training keeps its share
)
# Model building, saving and the report, with a margin.
OVERHEAD_MINUTES = 0.25
# The schedule plans at this share of the probed speed: a shared machine does not always keep its probe's pace,
# and `StageFitter` shortens whatever a slower run cannot fit, so this only sets how often that happens.
SUSTAINED_SPEED = 0.95
# How late the training may end rather than cut a stage short (`StageFitter`): a run this much behind its plan
# keeps every step.
OVERRUN_MINUTES = 1.0


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
    """The part of the budget that does not scale with the training steps: evaluation and start-up (a speed
    probe, when a run measures one, has spent its time before the plan is made: `run_demo`)."""
    return EVAL_MINUTES * eval_scenes / EVAL_SCENES + OVERHEAD_MINUTES


def scale_recipe(
    recipe: Recipe,
    minutes: float,
    *,
    seed: int,
    speeds: dict[str, float],
    eval_scenes: int = EVAL_SCENES,
    spent_minutes: float = 0.0,
) -> tuple[Recipe, float]:
    """A copy of `recipe` whose stages fit `minutes` of wall time; returns it and the step factor.

    `speeds` are this machine's samples/s per stage (`calibrate.stage_speeds`). Every stage keeps its share
    of the steps: all are multiplied by SUSTAINED_SPEED x (minutes - spent_minutes - fixed costs) / (the
    recipe's training minutes at `speeds`), `spent_minutes` being what a speed probe run now took and the fixed
    costs the evaluation of `eval_scenes` scenes and start-up. At least 2 steps per stage, so even a tiny
    budget runs every stage.
    """
    if minutes <= 0:
        raise ValueError(f"--minutes must be positive, got {minutes}")
    training = max(minutes - spent_minutes - fixed_minutes(eval_scenes), 0.0)
    factor = SUSTAINED_SPEED * training / training_minutes(recipe, speeds)
    stages = []
    for stage in recipe.stages:
        steps = max(2, round(stage.steps * factor))
        warmup = min(round((stage.warmup_steps or 0) * steps / stage.steps), steps - 1)
        stages.append(dataclasses.replace(stage, steps=steps, warmup_steps=warmup, save_every=0))
    return dataclasses.replace(recipe, stages=stages, seed=seed), factor


@dataclass
class StageFitter:
    """The `stage_steps` hook of the demo's training run: shortens the stages when the run falls behind.

    Progress is counted in planned seconds (a step of stage i is worth its time at the probed `speeds`); the
    run's pace is wall seconds per planned second. The clock is read every `CHECK_EVERY` steps, and the pace is
    the median of the paces of the intervals between those readings over the last `WINDOW_SECONDS`: a
    transient slowdown (a minute of another job, the first steps' allocations) is a minority of the intervals
    and does not move it, while the time it cost is already spent and counted. No stage is shortened before
    the run has `settle_seconds()` of readings. The training may end up to `overrun` seconds after `deadline`:
    only when the rest of the plan at that pace would end later still is it shortened, and then the running
    stage and every later one by the same factor of their planned steps (less 2%, so that noise does not cut
    again at the next reading), never below `MIN_SHARE` of them: a run too slow for that overruns rather than
    train a stage to the bone. When the pace recovers, the stages not yet begun get back what now fits. A run
    that keeps the probed pace keeps its steps: that run is the deterministic one.
    """

    CHECK_EVERY = 10  # steps between clock readings
    WINDOW_SECONDS = 240.0  # the readings the pace is the median of
    SETTLE_SECONDS = 120.0  # no cut before this much of the run (or SETTLE_SHARE of a short plan) is read
    SETTLE_SHARE = 0.2
    MIN_SHARE = 0.25  # the least share of its planned steps a shortened stage keeps (and 2 steps)
    MARGIN = 0.98  # a cut fits the steps into this share of the time left
    GIVE_BACK = 0.05  # the least share of its planned steps worth giving back to a stage not begun

    recipe: Recipe
    speeds: dict[str, float]
    start: float  # clock() when training began
    deadline: float  # clock() by which training should end
    overrun: float = 0.0  # seconds past `deadline` the training may take rather than shorten a stage
    clock: Callable[[], float] = time.perf_counter
    shortened: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)  # name: (planned, run)
    _readings: list[tuple[float, float]] = dataclasses.field(default_factory=list)  # (clock, planned s done)
    _steps: dict[int, int] = dataclasses.field(default_factory=dict)  # stage index: steps it will run

    def step_seconds(self, index: int) -> float:
        """One step of stage `index` at the probed speed."""
        stage = self.recipe.stages[index]
        return stage.batch_size * stage.grad_accum / self.speeds[stage.name]

    def planned_seconds(self, index: int) -> float:
        """Stage `index`'s time at the probed speed and its planned steps."""
        return self.recipe.stages[index].steps * self.step_seconds(index)

    def settle_seconds(self) -> float:
        """How long the run is read before any cut: SETTLE_SECONDS, less for a short plan."""
        plan = sum(self.planned_seconds(i) for i in range(len(self.recipe.stages)))
        return min(self.SETTLE_SECONDS, self.SETTLE_SHARE * plan)

    def pace(self) -> float | None:
        """Wall seconds per planned second: the median over the readings of the last WINDOW_SECONDS."""
        recent = [r for r in self._readings if r[0] >= self._readings[-1][0] - self.WINDOW_SECONDS]
        if len(self._readings) > len(recent):  # the interval that reaches into the window counts too
            recent.insert(0, self._readings[-len(recent) - 1])
        paces = [(t1 - t0) / (w1 - w0) for (t0, w0), (t1, w1) in zip(recent, recent[1:], strict=False) if w1 > w0]
        return statistics.median(paces) if paces else None

    def __call__(self, index: int, stage, done: int) -> int:
        """The steps stage `index` runs, `done` of them run: its own, or fewer when the plan cannot fit."""
        steps = min(stage.steps, self._steps.get(index, stage.steps))
        if done and done % self.CHECK_EVERY:
            return steps
        now = self.clock()
        done_work = sum(self._run_steps(i) * self.step_seconds(i) for i in range(index))
        self._readings.append((now, done_work + done * self.step_seconds(index)))
        self._steps[index] = steps
        pace = self.pace()
        if pace is not None and now - self.start >= self.settle_seconds():
            self._fit(index, done, now, pace)
        planned = [s.steps for s in self.recipe.stages]
        for i, run in self._steps.items():
            if run < planned[i]:
                self.shortened[self.recipe.stages[i].name] = (planned[i], run)
            else:
                self.shortened.pop(self.recipe.stages[i].name, None)
        return self._steps[index]

    def _fit(self, index: int, done: int, now: float, pace: float) -> None:
        """Set the steps of stage `index` (`done` run) and of the later ones to what fits at `pace`."""
        planned = [s.steps for s in self.recipe.stages]
        cost = [self.step_seconds(i) for i in range(len(planned))]
        later = range(index + 1, len(planned))
        steps = self._steps[index]
        left = (steps - done) * cost[index] + sum(self._run_steps(i) * cost[i] for i in later)
        end = self.deadline + self.overrun
        budget = self.MARGIN * max(end - now, 0.0) / pace  # planned seconds that still fit
        rest = sum(planned[i] * cost[i] for i in later)
        if now + pace * left > end:
            # one share g of every stage's planned steps: (g N_i - done) s_i + sum_j g N_j s_j = budget
            share = (budget + done * cost[index]) / (planned[index] * cost[index] + rest)
            if share * planned[index] < done and rest > 0:  # this stage has run past its share: it ends
                share = budget / rest  # now, and the later stages share what is left
            share = max(share, self.MIN_SHARE)
            self._steps[index] = min(steps, max(done, 2, round(share * planned[index])))
            for i in later:
                self._steps[i] = min(planned[i], max(2, round(share * planned[i])))
            return
        # Ahead of a shortened plan (a slowdown has passed): the stages not begun get steps back.
        waiting = [*later] if done else [index, *later]
        if not any(self._run_steps(i) < planned[i] for i in waiting):
            return
        running = (steps - done) * cost[index] if done else 0.0
        share = (budget - running) / sum(planned[i] * cost[i] for i in waiting)
        for i in waiting:
            more = min(planned[i], round(share * planned[i]))
            if more >= self._run_steps(i) + self.GIVE_BACK * planned[i]:
                self._steps[i] = more

    def _run_steps(self, index: int) -> int:
        return self._steps.get(index, self.recipe.stages[index].steps)

"""`groundlm demo`: train the `shapes` recipe from scratch, evaluate every task, write a report, keep the model.

The recipe's steps set each stage's share of the training; `--minutes N` (default `DEFAULT_MINUTES`) scales
them all by one factor so that training, evaluation, the speed probe and start-up fill N minutes on this
machine. The factor comes from this machine's speed per stage, measured once by a few real steps and cached
(`calibrate.py`), so the same seed gives the same model and the same metrics on the same machine, and the
budget holds on a machine twice as fast or twice as slow. A shared machine does not always keep the pace of
its probe (runs here held 0.7 to 1.04 of it), so the run checks the clock as each stage starts and every 25
steps: a stage that would overrun the budget at the pace measured so far is shortened to fit (`StageFitter`;
`demo.json` lists it under `shortened`, and such a run is not comparable step for step with a steady one).

What a run writes into OUT (default `runs/demo`):

    report.md          training summary, the metrics table against the targets, loss curves, then the
                       evaluation report (best and worst predictions of every task, drawn)
    loss.png           loss per step, per task, stage boundaries dashed
    model/             the trained model: `groundlm ask OUT/model IMAGE "[refer] the red circle"`
    metrics.json       the evaluation metrics; predictions.jsonl, examples/*.png, data/ (the test split)
    metrics.jsonl      the training log; recipe.yaml, checkpoints/ (end of each stage)
    demo.json          budget, steps, wall times and the headline scores
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .calibrate import stage_speeds, training_minutes
from .evaluate.runner import EvalConfig, evaluate
from .train import load_recipe, train
from .train.control import TrainHooks
from .train.recipe import Recipe

# The budget of `groundlm demo` without --minutes: speed probe, training, evaluation and start-up.
DEFAULT_MINUTES = 15.0
QUICK_MINUTES = 2.0
# Evaluating 100 test scenes (800 prompts) took 14-18 s on this project's machines; it does not scale with the
# budget, so it is taken out (with a margin) before the training steps are scaled.
EVAL_MINUTES = 0.4
QUICK_EVAL_SCENES = (
    25  # --quick evaluates the first 25 test scenes (200 prompts), so training keeps its share
)
# The speed probe (`calibrate.py`: 40 steps and a model build; 18 s measured in bf16, more in fp32) runs
# inside the budget on a machine's first demo. Its time is reserved on every run, measured or cached, so that
# the steps, and so the metrics, do not depend on whether this run measured.
PROBE_MINUTES = 0.75
# Model building, saving and the report (~5 s measured), with a margin.
OVERHEAD_MINUTES = 0.25
# The schedule plans at this share of the probed speed. Runs on 2026-12-03 held 0.7 to 1.04 of their probe's
# pace; `StageFitter` shortens whatever a slower run cannot fit, so this only sets how often that happens.
SUSTAINED_SPEED = 0.95
EVAL_SCENES = 100
# The targets, by task: (metric shown in the table, the least acceptable score).
TARGETS: dict[str, float] = {
    "refer": 0.80,
    "vqa": 0.90,
    "identify": 0.80,
    "grounding": 0.70,
    "detection": 0.70,
}
MARKER = "demo.json"


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


def _prepare_out(out: Path) -> None:
    """Start from an empty OUT: a previous demo's folder is cleared, any other non-empty folder refused."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise FileExistsError(f"{out} is not empty and holds no previous demo; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _stage_summary(out: Path) -> list[dict]:
    """Steps, samples and last smoothed loss per stage, from the training log."""
    from .train.monitor import read_metrics

    stages: dict[str, dict] = {}
    for row in read_metrics(out / "metrics.jsonl"):
        s = stages.setdefault(row["stage"], {"stage": row["stage"], "steps": 0, "losses": []})
        s["steps"] += 1
        if row.get("loss") is not None:
            s["losses"].append(row["loss"])
    for s in stages.values():
        tail = s.pop("losses")[-20:]
        s["final_loss"] = round(sum(tail) / len(tail), 4) if tail else None
    return list(stages.values())


def targets_table(metrics: dict[str, dict]) -> str:
    """The headline scores next to the issue's targets."""
    lines = ["| task | metric | score | target | met |", "|---|---|---|---|---|"]
    for task, m in metrics.items():
        target = TARGETS.get(task)
        met = "" if target is None else ("yes" if m["score"] >= target else "no")
        shown = "reported" if target is None else f"≥ {target:.2f}"
        lines.append(f"| {task} | {m['metric']} | {m['score']:.4f} | {shown} | {met} |")
    return "\n".join(lines)


def _write_report(out: Path, info: dict, metrics: dict) -> Path:
    """Put the demo's summary in front of the evaluation report that `evaluate` wrote to OUT/report.md."""
    evaluation = (out / "report.md").read_text() if (out / "report.md").exists() else ""
    stage_rows = "\n".join(f"| {s['stage']} | {s['steps']} | {s['final_loss']} |" for s in info["stages"])
    parts = [
        "# groundlm demo",
        "",
        f"Recipe `{info['recipe']}`, seed {info['seed']}, budget {info['budget_minutes']:g} min "
        f"(the recipe's steps × {info['step_factor']:.3f}, fitted to this machine's speed). "
        f"Wall time: speed probe {info['probe_seconds'] / 60:.1f} min, training "
        f"{info['train_seconds'] / 60:.1f} min, evaluation {info['eval_seconds'] / 60:.1f} min, total "
        f"{info['total_seconds'] / 60:.1f} min.",
        "",
        "| stage | steps | loss (mean of the last 20 steps) |",
        "|---|---|---|",
        stage_rows,
        "",
        f"## Scores on the ShapesWorld test split ({info['eval_scenes']} scenes, every task)",
        "",
        targets_table(metrics),
        "",
        "## Loss curves",
        "",
        "![loss per step](loss.png)",
        "",
        "Try the model: `groundlm ask " + str(out / "model") + ' IMAGE "[refer] the red circle"` or '
        "`groundlm serve " + str(out / "model") + "`.",
        "",
    ]
    # The evaluation report's own title and table are replaced by the ones above; its examples follow.
    examples = evaluation.split("\n## ", 1)
    if len(examples) == 2:
        parts += ["# Predictions (best and worst per task; green: ground truth)", "", "## " + examples[1]]
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path


def run_demo(config: DemoConfig) -> dict:
    """Train, evaluate and report; returns the evaluation metrics (also in OUT/metrics.json)."""
    out = Path(config.out)
    _prepare_out(out)
    minutes = budget_minutes(config)
    scenes = config.scenes()
    recipe = load_recipe(config.recipe)
    start = time.perf_counter()
    # The first demo on a machine measures its speed; that time counts in the budget (PROBE_MINUTES).
    speeds, measured = stage_speeds(recipe, progress=config.progress)
    probed = time.perf_counter()
    recipe, factor = scale_recipe(recipe, minutes, seed=config.seed, speeds=speeds, eval_scenes=scenes)
    # Training ends in time for the evaluation and the report; the probe's share is already spent (or unused).
    deadline = start + 60 * (minutes - fixed_minutes(scenes) + PROBE_MINUTES)
    fit = StageFitter(recipe, speeds, start=probed, deadline=deadline)
    model_dir = train(recipe, out, progress=config.progress, hooks=TrainHooks(stage_steps=fit))
    trained = time.perf_counter()

    from .inference import load

    eval_config = EvalConfig(benchmark="shapes", scenes=scenes)
    metrics = evaluate(load(model_dir), out, eval_config)
    done = time.perf_counter()
    info = {
        "recipe": recipe.name,
        "seed": config.seed,
        "budget_minutes": minutes,
        "step_factor": factor,
        "stage_speeds": speeds,  # samples/s per stage on this machine (calibrate.py), cached
        "speeds_measured_now": measured,
        "steps": {s.name: fit.shortened.get(s.name, (0, s.steps))[1] for s in recipe.stages},
        "shortened": {name: {"planned": p, "run": r} for name, (p, r) in fit.shortened.items()},
        "eval_scenes": scenes,
        "stages": _stage_summary(out),
        "probe_seconds": round(probed - start, 1),
        "train_seconds": round(trained - probed, 1),
        "eval_seconds": round(done - trained, 1),
        "total_seconds": round(done - start, 1),
        "scores": {task: m["score"] for task, m in metrics.items()},
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
    }
    _write_report(out, info, metrics)
    (out / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    return metrics


def print_summary(metrics: dict, out: Path) -> str:
    """The table the command prints."""
    return f"{targets_table(metrics)}\n\nreport: {out / 'report.md'}   model: {out / 'model'}"


__all__ = ["DemoConfig", "budget_minutes", "print_summary", "run_demo", "scale_recipe"]

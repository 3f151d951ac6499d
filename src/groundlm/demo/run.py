"""`groundlm demo`: train the `shapes` recipe from scratch, evaluate every task, write a report, keep the model.

The schedule is fitted to the budget by `schedule.py` from this machine's speeds (`calibrate.py`), so the same
seed gives the same model and the same metrics on the same machine.

What a run writes into OUT (default `runs/demo`):

    report.md          training summary, the metrics table against the targets (floor and goal; refer also
                       per expression kind), the web page's examples answered by the model, loss curves, then
                       the evaluation report (best and worst predictions of every task, drawn)
    loss.png           loss per step, per task, stage boundaries dashed
    model/             the trained model: `groundlm ask OUT/model IMAGE "[refer] the red circle"`
    metrics.json       the evaluation metrics; predictions.jsonl, examples/*.png, data/ (the test split)
    metrics.jsonl      the training log; recipe.yaml, checkpoints/ (end of each stage)
    demo.json          budget, steps, wall times and the headline scores
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from ..evaluate.report import LEGEND
from ..evaluate.runner import EvalConfig, evaluate
from ..train import load_recipe, train
from ..train.control import TrainHooks
from .calibrate import record_run_speeds, stage_speeds
from .page_examples import ask_examples, examples_section
from .schedule import (
    OVERRUN_MINUTES,
    DemoConfig,
    StageFitter,
    budget_minutes,
    fixed_minutes,
    scale_recipe,
)

# The targets by task: (floor, goal). The floor is the least acceptable score, the goal what the demo
# aims at; a task without an entry (caption) is reported only.
TARGETS: dict[str, tuple[float, float]] = {
    "refer": (0.80, 0.95),
    "segmentation": (0.75, 0.95),
    "vqa": (0.75, 0.95),
    "identify": (0.60, 0.90),
    "grounding": (0.60, 0.90),
    "detection": (0.60, 0.90),
    "region_chat": (0.60, 0.90),
}
MARKER = "demo.json"
# A run's own pace is recorded only from a run this long (a short run is still in its slower first steps).
RECORD_AFTER_SECONDS = 300



def _prepare_out(out: Path) -> None:
    """Start from an empty OUT: a previous demo's folder is cleared, any other non-empty folder refused."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise FileExistsError(f"{out} is not empty and holds no previous demo; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _stage_summary(out: Path) -> list[dict]:
    """Steps, samples and last smoothed loss per stage, from the training log."""
    from ..train.monitor import read_metrics

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


def _score_rows(metrics: dict[str, dict]):
    """(name, metric, score, (floor, goal) or None) per table row: every task with its targets, then refer's
    score per expression kind and caption's CIDEr, reported."""
    for task, m in metrics.items():
        yield task, m["metric"], m["score"], TARGETS.get(task)
        for kind, k in m.get("by_kind", {}).items():
            yield f"{task}: {kind} ({k['total']})", m["metric"], k["score"], None
        if isinstance(m.get("CIDEr"), float):
            yield task, "CIDEr", m["CIDEr"], None


def targets_table(metrics: dict[str, dict]) -> str:
    """The scores next to the issue's floors and goals (met: `goal`, `floor` or `no`)."""
    lines = ["| task | metric | score | floor | goal | met |", "|---|---|---|---|---|---|"]
    for name, metric, score, target in _score_rows(metrics):
        if target is None:
            lines.append(f"| {name} | {metric} | {score:.4f} | reported | | |")
            continue
        floor, goal = target
        met = "goal" if score >= goal else "floor" if score >= floor else "no"
        lines.append(f"| {name} | {metric} | {score:.4f} | {floor:.2f} | {goal:.2f} | {met} |")
    return "\n".join(lines)


def _write_report(out: Path, info: dict, metrics: dict, page: str) -> Path:
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
        *[f"The run fell behind its plan: stage `{name}` ran {s['run']} of its {s['planned']} steps "
          "(`demo/schedule.py` StageFitter)." for name, s in info["shortened"].items()],
        "",
        "| stage | steps | loss (mean of the last 20 steps) |",
        "|---|---|---|",
        stage_rows,
        "",
        f"## Scores on the ShapesWorld test split ({info['eval_scenes']} scenes, every task)",
        "",
        targets_table(metrics),
        "",
        page,
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
        parts += ["# Predictions (best and worst per task)", "", LEGEND, "", "## " + examples[1]]
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
    # The first demo on a machine measures its speed, and that time counts in the budget; a demo planning from
    # the cache spent none, so its steps (and metrics) depend only on the cached speeds, not on the clock.
    speeds, measured = stage_speeds(recipe, progress=config.progress)
    probed = time.perf_counter()
    spent = (probed - start) / 60 if measured else 0.0
    recipe, factor = scale_recipe(
        recipe, minutes, seed=config.seed, speeds=speeds, eval_scenes=scenes, spent_minutes=spent
    )
    # Training ends in time for the evaluation and the report.
    deadline = start + 60 * (minutes - fixed_minutes(scenes))
    fit = StageFitter(recipe, speeds, start=probed, deadline=deadline, overrun=60 * OVERRUN_MINUTES)
    model_dir = train(recipe, out, progress=config.progress, hooks=TrainHooks(stage_steps=fit))
    trained = time.perf_counter()
    recorded = None
    if not fit.shortened and trained - probed >= RECORD_AFTER_SECONDS:
        # A whole run that kept its plan records the pace it really kept, once (later demos plan from it).
        from ..train.monitor import read_metrics

        recorded = record_run_speeds(recipe, read_metrics(out / "metrics.jsonl"))

    from ..inference import load

    lm = load(model_dir)
    metrics = evaluate(lm, out, EvalConfig(benchmark="shapes", scenes=scenes))
    page = ask_examples(lm)  # the web page's examples, answered by this model
    done = time.perf_counter()
    info = {
        "recipe": recipe.name,
        "seed": config.seed,
        "budget_minutes": minutes,
        "step_factor": factor,
        "stage_speeds": speeds,  # samples/s per stage on this machine (calibrate.py), cached
        "speeds_measured_now": measured,
        "run_speeds_recorded": recorded,  # what this run kept, cached for the next demos (None: not recorded)
        "steps": {s.name: fit.shortened.get(s.name, (0, s.steps))[1] for s in recipe.stages},
        "shortened": {name: {"planned": p, "run": r} for name, (p, r) in fit.shortened.items()},
        "eval_scenes": scenes,
        "stages": _stage_summary(out),
        "probe_seconds": round(probed - start, 1),
        "train_seconds": round(trained - probed, 1),
        "eval_seconds": round(done - trained, 1),
        "total_seconds": round(done - start, 1),
        "scores": {task: m["score"] for task, m in metrics.items()},
        "page_examples": {"right": sum(r["right"] for r in page), "total": len(page)},
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
    }
    _write_report(out, info, metrics, examples_section(page, out / "model"))
    (out / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    return metrics


def print_summary(metrics: dict, out: Path) -> str:
    """The table the command prints."""
    return f"{targets_table(metrics)}\n\nreport: {out / 'report.md'}   model: {out / 'model'}"

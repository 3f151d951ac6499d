"""`groundlm demo` at a tiny budget: every stage runs, every task is evaluated, the report and model exist.

This checks the plumbing, not the accuracy (docs/recipes.md has the measured numbers of the full demo).
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import groundlm
from groundlm.cli import app
from groundlm.demo import (
    DEFAULT_MINUTES,
    EVAL_SCENES,
    SUSTAINED_SPEED,
    DemoConfig,
    StageFitter,
    calibrate,
    fixed_minutes,
    run_demo,
    scale_recipe,
)
from groundlm.demo.calibrate import stage_speeds
from groundlm.train import load_recipe, train
from groundlm.train.control import TrainHooks
from groundlm.train.monitor import read_metrics
from groundlm.train.optim import WarmupCosine
from groundlm.train.recipe import from_dict

from .train_helpers import one_thread, tiny_recipe  # noqa: F401 (fixture)


def test_the_budget_scales_every_stage_deterministically():
    recipe = load_recipe("shapes")
    # Speeds at which the recipe's own steps take exactly the default budget's training time.
    fixed = fixed_minutes(EVAL_SCENES)
    speeds = {"vision": 1.0, "tasks": 1.0}
    seconds = sum(s.steps * s.batch_size for s in recipe.stages)
    speeds = {k: seconds / ((DEFAULT_MINUTES - fixed) * 60 * SUSTAINED_SPEED) for k in speeds}
    full, factor = scale_recipe(recipe, DEFAULT_MINUTES, seed=0, speeds=speeds)
    assert factor == pytest.approx(1.0)
    assert [s.steps for s in full.stages] == [s.steps for s in recipe.stages]
    # A machine twice as fast gets twice the steps in the same budget.
    double, factor = scale_recipe(
        recipe, DEFAULT_MINUTES, seed=0, speeds={k: 2 * v for k, v in speeds.items()}
    )
    assert factor == pytest.approx(2.0)
    half, factor = scale_recipe(recipe, DEFAULT_MINUTES / 2, seed=5, speeds=speeds)
    assert 0.4 < factor < 0.5 and half.seed == 5
    assert [s.steps for s in half.stages] == [round(s.steps * factor) for s in recipe.stages]
    assert scale_recipe(recipe, 0.01, seed=0, speeds=speeds)[0].stages[0].steps == 2  # every stage still runs
    with pytest.raises(ValueError, match="positive"):
        scale_recipe(recipe, 0, seed=0, speeds=speeds)
    with pytest.raises(ValueError, match="no speed"):
        scale_recipe(recipe, 10, seed=0, speeds={"vision": 1.0})


def test_a_stage_behind_the_planned_pace_is_shortened_to_fit_the_budget():
    recipe = load_recipe("shapes")  # vision 900 x 64, tasks 700 x 64
    speeds = {"vision": 64.0, "tasks": 64.0}  # one step per second: vision planned 900 s, tasks 700 s
    now = [0.0]
    fit = StageFitter(recipe, speeds, start=0.0, deadline=1800.0, clock=lambda: now[0])
    vision, tasks = recipe.stages
    assert fit(0, vision, 0) == 900  # the first stage starts as planned
    now[0] = 990.0  # 1.1x slower than planned: the tasks stage needs 770 s, 810 are left
    assert fit(1, tasks, 0) == 700 and fit.shortened == {}
    now[0] = 1260.0  # 1.4x slower: 980 s needed, 540 left -> the steps that fit, less 2%
    assert fit(1, tasks, 0) == int(0.98 * 540 / 1.4) and fit.shortened == {"tasks": (700, 378)}
    now[0] = 5000.0  # past the budget: the least a stage runs
    assert fit(1, tasks, 0) == 2


def test_a_running_stage_is_checked_at_its_own_pace():
    recipe = load_recipe("shapes")
    speeds = {"vision": 64.0, "tasks": 64.0}
    now = [0.0]
    fit = StageFitter(recipe, speeds, start=0.0, deadline=1800.0, clock=lambda: now[0])
    vision, tasks = recipe.stages
    assert fit(0, vision, 0) == 900
    now[0] = 100.0  # on pace: 100 steps in 100 s
    assert fit(0, vision, 100) == 900 and fit.shortened == {}
    now[0] = 102.0
    assert fit(0, vision, 101) == 900  # checked every 25 steps only
    now[0] = 300.0  # 2 s a step: vision needs 1500 more s and tasks 1400, 1500 are left in all
    steps = fit(0, vision, 150)
    assert steps == 150 + int(0.98 * (1500 - 1400) / 2.0) and fit.shortened == {"vision": (900, steps)}
    now[0] = 320.0  # the shortened stage on that pace: nothing more to cut
    assert fit(0, replace_steps(vision, steps), 175) == steps
    now[0] = 1500.0  # far behind: the stage ends now
    assert fit(0, replace_steps(vision, steps), 175) == 175 and fit.shortened["vision"] == (900, 175)


def replace_steps(stage, steps):
    import dataclasses

    return dataclasses.replace(stage, steps=steps)


def test_a_stage_steps_hook_shortens_the_stage_and_the_saved_recipe_says_so(tmp_path):
    recipe = from_dict(tiny_recipe(8), "test")
    seen = []
    hooks = TrainHooks(stage_steps=lambda index, stage, done: seen.append((index, stage.steps, done)) or 5)
    train(recipe, tmp_path, hooks=hooks, progress=False)
    assert seen == [(0, 8, 0), (0, 5, 1), (0, 5, 2), (0, 5, 3), (0, 5, 4), (0, 5, 5)]
    assert [row["stage_step"] for row in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    saved = load_recipe(tmp_path / "recipe.yaml")
    assert saved.stages[0].steps == 5 and saved.stages[0].warmup_steps == 1  # 2 of 8 -> 1 of 5
    # Cut while running: from then on the cosine runs to the new last step.
    cut = TrainHooks(stage_steps=lambda index, stage, done: 4 if done >= 2 else stage.steps)
    train(recipe, tmp_path / "cut", hooks=cut, progress=False)
    rows = read_metrics(tmp_path / "cut" / "metrics.jsonl")
    assert [r["stage_step"] for r in rows] == [1, 2, 3, 4]
    stage = recipe.stages[0]
    lr = stage.train["language_model"]
    assert rows[-1]["lr"] == pytest.approx(lr * WarmupCosine(2, 4, stage.min_lr_ratio)(3))
    assert rows[-1]["lr"] < lr * WarmupCosine(2, 8, stage.min_lr_ratio)(3)
    assert load_recipe(tmp_path / "cut" / "recipe.yaml").stages[0].warmup_steps == 2  # kept once running
    with pytest.raises(ValueError, match="cannot run 9"):
        train(recipe, tmp_path / "more", hooks=TrainHooks(stage_steps=lambda i, s, d: 9), progress=False)


def test_speeds_are_measured_once_per_machine_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUNDLM_CACHE", str(tmp_path / "cache"))
    recipe = from_dict(tiny_recipe(8), "test")
    speeds, measured = stage_speeds(recipe)
    assert measured and set(speeds) == {"lm"} and speeds["lm"] > 0
    calls = []
    monkeypatch.setattr(calibrate, "measure_speeds", lambda *a, **k: calls.append(1) or {"lm": 1.0})
    assert stage_speeds(recipe) == (speeds, False) and not calls  # read back, not measured again
    (tmp_path / "cache" / "speeds.json").write_text('{"torn')  # a torn cache is measured again
    assert stage_speeds(recipe) == ({"lm": 1.0}, True) and calls == [1]


def test_the_speed_key_follows_what_sets_the_speed():
    recipe = load_recipe("shapes")
    key = calibrate.machine_key(recipe)
    assert calibrate.machine_key(load_recipe("shapes")) == key
    # The schedule's lengths do not change the speed: a scaled demo recipe reads the same record.
    assert calibrate.machine_key(scale_recipe(recipe, 3, seed=0, speeds={"vision": 1.0, "tasks": 1.0})[0]) == key
    # The data mixture does: another share of refer batches is measured again.
    mixed = load_recipe("shapes")
    mixed.stages[1].data[0].ratio += 1
    assert calibrate.machine_key(mixed) != key


def test_demo_pipeline_at_a_tiny_budget(tmp_path, monkeypatch):
    # The shapes recipe at 2 steps per stage, evaluated on 3 test scenes (one prompt per task each); the
    # first run on a "new machine" (an empty cache) measures its speeds first.
    monkeypatch.setenv("GROUNDLM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    metrics = run_demo(DemoConfig(out=out, minutes=0.01, eval_scenes=3, progress=False))
    tasks = {"caption", "vqa", "refer", "identify", "grounding", "detection", "segmentation", "region_chat"}
    assert tasks <= set(metrics)
    report = (out / "report.md").read_text()
    assert "| refer | Acc@0.5 |" in report and "![loss per step](loss.png)" in report
    assert "examples/refer-" in report and (out / "loss.png").stat().st_size > 1000
    info = json.loads((out / "demo.json").read_text())
    assert [s["stage"] for s in info["stages"]] == [s.name for s in load_recipe("shapes").stages]
    assert all(s["steps"] == 2 for s in info["stages"])
    assert info["speeds_measured_now"] and set(info["stage_speeds"]) == {"vision", "tasks"}
    # The probe ran inside the measured wall time, before training.
    assert 0 < info["probe_seconds"] < info["total_seconds"]
    assert info["total_seconds"] == pytest.approx(
        info["probe_seconds"] + info["train_seconds"] + info["eval_seconds"], abs=0.2
    )
    assert info["shortened"] == {}  # 2 steps per stage is the least a stage runs
    lm = groundlm.load(out / "model")
    assert lm.model.config.image_position_embedding == "sincos2d"
    # A second demo into the same folder replaces the first; any other non-empty folder is refused.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    result = CliRunner().invoke(app, ["demo", "--minutes", "0.01", "--out", str(tmp_path / "other")])
    assert result.exit_code == 1 and "holds no previous demo" in result.output

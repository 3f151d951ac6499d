"""`groundlm demo` at a tiny budget: every stage runs, every task is evaluated, the report and model exist.

This checks the plumbing, not the accuracy (docs/recipes.md has the measured numbers of the full demo).
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from typer.testing import CliRunner

import groundlm
from groundlm.cli import app
from groundlm.demo import (
    DEFAULT_MINUTES,
    EVAL_SCENES,
    OVERRUN_MINUTES,
    SUSTAINED_SPEED,
    DemoConfig,
    StageFitter,
    calibrate,
    fixed_minutes,
    run_demo,
    scale_recipe,
)
from groundlm.demo.calibrate import stage_speeds
from groundlm.demo.page_examples import ask_examples, examples_section, is_right
from groundlm.evaluate.runner import record_question
from groundlm.geometry import Frame
from groundlm.presets import new_model
from groundlm.serve.examples import PAGE_EXAMPLES, example_record
from groundlm.train import load_recipe, train
from groundlm.train.control import TrainHooks
from groundlm.train.monitor import read_metrics
from groundlm.train.optim import WarmupCosine
from groundlm.train.recipe import from_dict

from .train_helpers import one_thread, tiny_recipe  # noqa: F401 (fixture)


def test_the_budget_scales_every_stage_deterministically():
    recipe = two_stage()
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
    # A probe that took a minute of the budget leaves that minute's steps out
    probed, factor = scale_recipe(recipe, DEFAULT_MINUTES, seed=0, speeds=speeds, spent_minutes=1.0)
    assert factor == pytest.approx((DEFAULT_MINUTES - fixed - 1.0) / (DEFAULT_MINUTES - fixed))
    half, factor = scale_recipe(recipe, DEFAULT_MINUTES / 2, seed=5, speeds=speeds)
    assert 0.4 < factor < 0.5 and half.seed == 5
    assert [s.steps for s in half.stages] == [round(s.steps * factor) for s in recipe.stages]
    assert scale_recipe(recipe, 0.01, seed=0, speeds=speeds)[0].stages[0].steps == 2  # every stage still runs
    with pytest.raises(ValueError, match="positive"):
        scale_recipe(recipe, 0, seed=0, speeds=speeds)
    with pytest.raises(ValueError, match="no speed"):
        scale_recipe(recipe, 10, seed=0, speeds={"vision": 1.0})


def replace_steps(stage, steps):
    return dataclasses.replace(stage, steps=steps)


def _simulate(recipe, fit, now, pace) -> list[int]:
    """Run `recipe`'s stages against `fit` on the fake clock `now`, as the training loop calls its hook: each
    step takes its planned time (`fit.step_seconds`) times `pace(now)`. Returns the steps each stage ran."""
    ran = []
    for index, stage in enumerate(recipe.stages):
        stage = replace_steps(stage, fit(index, stage, 0))
        done = 0
        while done < stage.steps:
            now[0] += fit.step_seconds(index) * pace(now[0])
            done += 1
            steps = fit(index, stage, done)
            assert done <= steps <= stage.steps
            stage = replace_steps(stage, steps)
        ran.append(done)
    return ran


def two_stage():
    """A plan of two stages, vision 900 x 64 then tasks 700 x 64 (the tower's and the demo's stages): 1600 s at
    one step a second."""
    tower, demo = load_recipe("shapes-tower"), load_recipe("shapes")
    return dataclasses.replace(demo, stages=[replace_steps(tower.stages[0], 900), replace_steps(demo.stages[0], 700)])


def _fitter(recipe, now, *, budget: float | None = None):
    """A fitter whose deadline is the plan's own time at the probed speed (one step a second for `shapes`)."""
    speeds = {s.name: float(s.batch_size) for s in recipe.stages}
    plan = sum(s.steps for s in recipe.stages)
    return StageFitter(recipe, speeds, start=0.0, deadline=budget or float(plan), overrun=60 * OVERRUN_MINUTES,
                       clock=lambda: now[0])


def test_a_run_at_the_planned_pace_is_never_shortened():
    recipe = two_stage()
    now = [0.0]
    fit = _fitter(recipe, now)
    assert _simulate(recipe, fit, now, lambda t: 1.0) == [900, 700]
    assert fit.shortened == {} and now[0] == pytest.approx(1600.0)


def test_a_slow_first_minute_leaves_every_stage_most_of_its_steps():
    # 3x slower for the first 60 s (40 s lost), then the probed pace: the cumulative pace after 100 steps is
    # 1.4x, which would cut the plan by a third; the median of the recent readings sees the probed pace.
    recipe = two_stage()
    now = [0.0]
    fit = _fitter(recipe, now)
    ran = _simulate(recipe, fit, now, lambda t: 3.0 if t < 60 else 1.0)
    assert all(r >= 0.8 * s.steps for r, s in zip(ran, recipe.stages, strict=True)), ran
    assert now[0] <= 1600 + 60 * OVERRUN_MINUTES


def test_a_steadily_slow_run_shortens_every_stage_by_the_same_factor_and_ends_in_time():
    recipe = two_stage()
    now = [0.0]
    fit = _fitter(recipe, now)
    ran = _simulate(recipe, fit, now, lambda t: 1.5)
    shares = [r / s.steps for r, s in zip(ran, recipe.stages, strict=True)]
    # 1660 s at 1.5 s a step hold ~1100 steps of 1600: every stage keeps about 0.69 of its steps
    assert all(0.6 < x < 0.75 for x in shares) and max(shares) - min(shares) < 0.05, shares
    assert 1600 < now[0] <= 1600 + 60 * OVERRUN_MINUTES  # the allowed minute is used, not more
    assert fit.shortened == {s.name: (s.steps, r) for s, r in zip(recipe.stages, ran, strict=True)}


def test_one_stage_falling_behind_midway_is_shortened_to_end_within_the_overrun():
    recipe = from_dict(tiny_recipe(600), "test")  # one stage; probed speeds make a step 1 s
    now = [0.0]
    fit = _fitter(recipe, now)
    ran = _simulate(recipe, fit, now, lambda t: 1.0 if t < 200 else 2.0)
    assert 300 < ran[0] < 600 and fit.shortened == {"lm": (600, ran[0])}
    assert 600 < now[0] <= 600 + 60 * OVERRUN_MINUTES


def test_stages_not_begun_get_their_steps_back_when_a_slowdown_passes():
    recipe = two_stage()
    now = [0.0]
    fit = _fitter(recipe, now)
    # 2x slower from minute 5 to 10 (longer than the pace's window): the vision stage is cut as it happens, and
    # the tasks stage, which had been cut with it, gets its steps back once the pace is the probed one again
    ran = _simulate(recipe, fit, now, lambda t: 2.0 if 300 < t < 600 else 1.0)
    assert ran[0] < 900 and ran[1] == 700 and fit.shortened == {"vision": (900, ran[0])}
    assert now[0] <= 1600 + 60 * OVERRUN_MINUTES


def test_a_far_too_slow_run_keeps_a_floor_of_every_stage_and_overruns():
    recipe = two_stage()
    now = [0.0]
    fit = _fitter(recipe, now)
    ran = _simulate(recipe, fit, now, lambda t: 10.0)
    assert [r / s.steps for r, s in zip(ran, recipe.stages, strict=True)] == [
        pytest.approx(StageFitter.MIN_SHARE, abs=0.01)
    ] * 2


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
    mixed.stages[-1].data[0].ratio += 1
    assert calibrate.machine_key(mixed) != key


def test_a_recipe_starting_from_a_pretrained_model_is_probed_and_keyed_by_its_parts(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUNDLM_CACHE", str(tmp_path / "cache"))
    start = new_model(tmp_path / "start", "tiny", seed=1)
    spec = tiny_recipe(8)
    spec["model"] = {"init_from": str(start), "connector": "concat4"}
    recipe = from_dict(spec, "test")
    speeds, measured = stage_speeds(recipe)
    assert measured and speeds["lm"] > 0
    key = calibrate.machine_key(recipe)
    assert stage_speeds(recipe) == (speeds, False)
    # Another architecture in the same folder is another speed: measured again.
    config = json.loads((start / "config.json").read_text())
    config["text_config"]["num_hidden_layers"] = 3
    (start / "config.json").write_text(json.dumps(config))
    assert calibrate.machine_key(recipe) != key


class _ScriptedLM:
    """Answers every page example with its record's reference written in the text codec, boxes moved by `shift`
    pixels (0: every answer right; a third of the scene: every box wrong) and text answers replaced when
    `wrong`: right or wrong is then known before the report is asked."""

    def __init__(self, lm, shift: float = 0.0):
        self.lm, self.processor, self.shift = lm, lm.processor, shift
        self.references = {}
        for example in PAGE_EXAMPLES:
            _, record = example_record(example)
            self.references[record_question(record)[0]] = record.messages[1].content

    def ask(self, image, prompt, *, boxes=()):
        frame = Frame(image.width, image.height, "resize")
        moved = [[min(v + self.shift, 64.0) for v in b] for b in boxes]
        reference = self.references[prompt] if not self.shift else re.sub(r"^\w+$", "nothing", self.references[prompt])
        text = self.processor.codec.render(reference, [frame.normalize(b) for b in moved])
        return self.lm.answer_for(text, frame)


def test_the_page_examples_are_asked_and_judged_from_the_answers(tmp_path):
    lm = groundlm.load(new_model(tmp_path / "tiny", "tiny"))
    tasks = {e.task for e in PAGE_EXAMPLES}
    assert {"refer", "grounding", "vqa"} <= tasks and 4 <= len(PAGE_EXAMPLES) <= 6
    right = ask_examples(_ScriptedLM(lm))
    assert [r["right"] for r in right] == [True] * len(PAGE_EXAMPLES)
    assert right[0]["prediction"].startswith("{<") and right[0]["expected"].startswith("[")  # pixels
    wrong = ask_examples(_ScriptedLM(lm, shift=22.0))
    assert [r["right"] for r in wrong] == [False] * len(PAGE_EXAMPLES)
    # a real (untrained) model: its answers are judged by the same rule
    rows = ask_examples(lm)
    assert [r["right"] for r in rows] == [is_right(r) for r in rows]
    section = examples_section(rows, tmp_path / "tiny").splitlines()
    assert section[0] == "## The web page's examples"
    assert f"{sum(r['right'] for r in rows)} of {len(rows)}" in section[2]
    table = section[4:]
    assert table[0] == "| scene | task | prompt | answer | expected | right |" and len(table) == 2 + len(rows)
    for line, r in zip(table[2:], rows, strict=True):
        assert line.startswith(f"| {r['scene']} | {r['task']} | `{r['prompt']}` |")
        assert line.endswith("| yes |" if r["right"] else "| no |")


def test_demo_pipeline_at_a_tiny_budget(tmp_path, monkeypatch):
    # The shapes recipe at 2 steps per stage, evaluated on 3 test scenes (one prompt per task each); the
    # first run on a "new machine" (an empty cache) measures its speeds first.
    monkeypatch.setenv("GROUNDLM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    metrics = run_demo(DemoConfig(out=out, minutes=0.01, eval_scenes=3, progress=False))
    tasks = {"caption", "vqa", "refer", "identify", "grounding", "detection", "segmentation", "region_chat"}
    assert tasks <= set(metrics)
    report = (out / "report.md").read_text()
    assert "| refer | Acc@0.5 |" in report and "| 0.80 | 0.95 |" in report and "![loss per step](loss.png)" in report
    assert "## The web page's examples" in report and "thin grey, the scene's other objects" in report
    assert "examples/refer-" in report and (out / "loss.png").stat().st_size > 1000
    info = json.loads((out / "demo.json").read_text())
    assert [s["stage"] for s in info["stages"]] == [s.name for s in load_recipe("shapes").stages]
    assert all(s["steps"] == 2 for s in info["stages"])
    assert info["speeds_measured_now"] and set(info["stage_speeds"]) == {s.name for s in load_recipe("shapes").stages}
    # The probe ran inside the measured wall time, before training.
    assert 0 < info["probe_seconds"] < info["total_seconds"]
    assert info["total_seconds"] == pytest.approx(
        info["probe_seconds"] + info["train_seconds"] + info["eval_seconds"], abs=0.2
    )
    assert info["shortened"] == {}  # 2 steps per stage is the least a stage runs
    assert info["page_examples"]["total"] == len(PAGE_EXAMPLES)
    lm = groundlm.load(out / "model")
    assert lm.model.config.image_position_embedding == "sincos2d"
    # A second demo into the same folder replaces the first; any other non-empty folder is refused.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    result = CliRunner().invoke(app, ["demo", "--minutes", "0.01", "--out", str(tmp_path / "other")])
    assert result.exit_code == 1 and "holds no previous demo" in result.output


def test_a_whole_run_records_the_speed_it_kept_once_and_later_demos_plan_from_it(tmp_path, monkeypatch):
    monkeypatch.setenv("GROUNDLM_CACHE", str(tmp_path / "cache"))
    recipe = from_dict(tiny_recipe(8), "test")
    monkeypatch.setattr(calibrate, "measure_speeds", lambda *a, **k: {"lm": 50.0})
    assert stage_speeds(recipe) == ({"lm": 50.0}, True)  # the probe's reading
    # steps of 100 and 300 samples/s alternating: the stage kept 150 samples/s (total samples / total time)
    rows = [{"stage": "lm", "samples_per_s": v} for v in (100.0, 300.0) * 5]
    assert calibrate.run_speeds(rows, recipe) == {"lm": pytest.approx(150.0)}
    assert calibrate.record_run_speeds(recipe, rows) == {"lm": pytest.approx(150.0)}
    assert stage_speeds(recipe) == ({"lm": pytest.approx(150.0)}, False)  # later demos plan from the run
    slower = [{"stage": "lm", "samples_per_s": 10.0}] * 4
    assert calibrate.record_run_speeds(recipe, slower) is None  # recorded once, never rewritten
    assert stage_speeds(recipe)[0] == {"lm": pytest.approx(150.0)}

"""`groundlm demo` at a tiny budget: every stage runs, every task is evaluated, the report and model exist.

This checks the plumbing, not the accuracy (docs/recipes.md has the measured numbers of the full demo).
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import groundlm
from groundlm.cli import app
from groundlm.demo import REFERENCE_MINUTES, DemoConfig, run_demo, scale_recipe
from groundlm.train import load_recipe

from .train_helpers import one_thread  # noqa: F401 (fixture)


def test_the_budget_scales_every_stage_deterministically():
    recipe = load_recipe("shapes")
    full, factor = scale_recipe(recipe, REFERENCE_MINUTES, seed=0)
    assert factor == pytest.approx(1.0)
    assert [s.steps for s in full.stages] == [s.steps for s in recipe.stages]
    half, factor = scale_recipe(recipe, REFERENCE_MINUTES / 2, seed=5)
    assert 0.4 < factor < 0.5 and half.seed == 5
    assert [s.steps for s in half.stages] == [round(s.steps * factor) for s in recipe.stages]
    assert scale_recipe(recipe, 0.01, seed=0)[0].stages[0].steps == 2  # every stage still runs
    with pytest.raises(ValueError, match="positive"):
        scale_recipe(recipe, 0, seed=0)


def test_demo_pipeline_at_a_tiny_budget(tmp_path, monkeypatch):
    # The shapes recipe at 2 steps per stage, evaluated on 3 test scenes (one prompt per task each).
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
    lm = groundlm.load(out / "model")
    assert lm.model.config.image_position_embedding == "sincos2d"
    # A second demo into the same folder replaces the first; any other non-empty folder is refused.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    result = CliRunner().invoke(app, ["demo", "--minutes", "0.01", "--out", str(tmp_path / "other")])
    assert result.exit_code == 1 and "holds no previous demo" in result.output

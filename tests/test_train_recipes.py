"""Recipes: every shipped recipe runs in --dry-run mode; recipe errors name the file and the field; pretrained
parts load from local directories and never download; the CLI trains."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from typer.testing import CliRunner

import groundlm
from groundlm.cli import app
from groundlm.train import RecipeError, checkpoint, dry_run, load_recipe, shipped_recipes, train
from groundlm.train.monitor import read_metrics
from groundlm.train.recipe import from_dict, to_yaml

from .train_helpers import one_thread, tiny_recipe, write_recipe  # noqa: F401 (fixture)


def test_the_four_recipes_are_shipped():
    assert {"shapes", "minigpt4", "minigptv2", "llava"} <= set(shipped_recipes())


@pytest.mark.parametrize("name", shipped_recipes())
def test_every_shipped_recipe_dry_runs(name, tmp_path):
    recipe = load_recipe(name)
    train(dry_run(recipe), tmp_path, progress=False)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["stage"] for r in rows] == [s.name for s in recipe.stages for _ in range(2)]
    assert all(math.isfinite(r["loss"]) and r["task_loss"] for r in rows)
    lm = groundlm.load(tmp_path / "model")
    assert lm.processor.config.template == recipe.model.template
    assert (tmp_path / "loss.png").stat().st_size > 1000
    # The resolved recipe sits beside every checkpoint and reads back to the same recipe.
    saved = (checkpoint.latest(tmp_path) / "recipe.yaml").read_text()
    assert saved == to_yaml(dry_run(recipe))
    assert to_yaml(from_dict(yaml.safe_load(saved))) == saved


def test_published_hyper_parameters_are_in_the_recipes():
    v2 = load_recipe("minigptv2")
    assert len(v2.stages) == 3
    assert all(s.lora is not None and (s.lora.r, s.lora.alpha) == (64, 16) for s in v2.stages)
    assert all(s.lora.target_modules == ["q_proj", "v_proj"] for s in v2.stages)
    assert sum(d.ratio for d in v2.stages[2].data) == 730  # the released stage-3 sample ratios
    llava = load_recipe("llava")
    assert [s.template for s in llava.stages] == ["plain", None] and llava.model.frame == "pad"
    assert llava.stages[0].train == {"connector": 1e-3}
    assert llava.stages[1].train == {"connector": 2e-5, "language_model": 2e-5}
    assert llava.stages[0].grad_accum * llava.stages[0].batch_size == 256
    # LLaVA's scripts/v1_5: ZeRO-2 for the projector alignment, ZeRO-3 for the full fine-tune, bf16 on 8 x A100
    assert [(s.strategy, s.deepspeed_config) for s in llava.stages] == [("deepspeed", "zero2"), ("deepspeed", "zero3")]
    assert llava.model.dtype == "bfloat16" and {s.precision for s in llava.stages} == {"bf16"}
    m4 = load_recipe("minigpt4")
    assert [list(s.train) for s in m4.stages] == [["connector"], ["connector"]] and len(m4.stages) == 2


def _error(tmp_path, recipe: dict) -> str:
    path = write_recipe(tmp_path / "bad.yaml", recipe)
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert message.startswith(str(path)), message
    return message


def test_recipe_errors_name_the_file_and_the_field(tmp_path):
    assert "stages[0]: unknown field(s) ['stepz']" in _error(tmp_path, tiny_recipe(stepz=3))
    assert "stages[0].batch_size: expected an integer" in _error(tmp_path, tiny_recipe(batch_size="big"))
    assert "stages[0].train.connector: expected a number" in _error(
        tmp_path, tiny_recipe(train={"connector": "fast"})
    )
    assert "precision: 'fp16' is not one of" in _error(tmp_path, tiny_recipe(precision="fp16"))
    assert "objective: 'mlm' is not one of" in _error(tmp_path, tiny_recipe(objective="mlm"))
    bad_model = {**tiny_recipe(), "model": {"preset": "tiny", "language_model": "x"}}
    assert "model: give either preset or" in _error(tmp_path, bad_model)
    bad_task = tiny_recipe(data=[{"shapes": {"tasks": ["juggling"]}}])
    assert "stages[0] (lm).data[0].shapes.tasks: unknown ['juggling']" in _error(tmp_path, bad_task)


def test_errors_found_at_run_time_name_the_field(tmp_path):
    with pytest.raises(RecipeError, match=r"stages\[0\]\.train\.conector: matches no parameter"):
        train(from_dict(tiny_recipe(train={"conector": 1e-3})), tmp_path / "a", progress=False)
    missing = tiny_recipe(data=[{"records": str(tmp_path / "nope.jsonl")}])
    with pytest.raises(RecipeError, match=r"stages\[0\]\.data\[0\]\.records: .*nope.jsonl not found"):
        train(from_dict(missing), tmp_path / "b", progress=False)
    # --dry-run stands ShapesWorld in for data that is not on this machine.
    train(dry_run(from_dict(missing)), tmp_path / "c", progress=False)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """A tiny CLIP tower and a tiny Llama with a tokenizer (no <image> token), saved like hub checkpoints."""
    from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

    from groundlm.location import TextLocationCodec
    from groundlm.tasks import TAGGED as TASKS
    from groundlm.tokenizer import build_word_tokenizer
    from groundlm.train.build import WORD_LISTS

    root = tmp_path_factory.mktemp("parts")
    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
    )
    CLIPVisionModel(vision).save_pretrained(root / "tower")
    tok = build_word_tokenizer(
        WORD_LISTS["shapes"](),
        tokens=TextLocationCodec().special_tokens() + [f"[{t}]" for t in TASKS],
        special_tokens=["[INST]", "[/INST]", "<Img>", "</Img>"],
    )
    tok.save_pretrained(root / "lm")
    text = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    LlamaForCausalLM(text).save_pretrained(root / "lm")
    return root


def test_pretrained_parts_train_with_lora_and_save(parts, tmp_path):
    recipe = tiny_recipe(
        2, train={"connector": 1e-3}, lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    )
    recipe["model"] = {
        "vision_tower": str(parts / "tower"),
        "language_model": str(parts / "lm"),
        "connector": "mlp2x_gelu",
        "template": "llama2",
        "frame": "pad",
    }
    train(from_dict(recipe), tmp_path, progress=False)
    lm = groundlm.load(tmp_path / "model")
    assert lm.processor.config.frame == "pad" and lm.model.config.connector == "mlp2x_gelu"
    assert not any("lora" in n for n, _ in lm.model.named_parameters())  # merged before saving
    assert lm.model.config.num_image_tokens == 16  # (32 / 8)^2 patches, CLS dropped


def test_missing_pretrained_parts_fail_clearly_without_downloading(parts, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = tiny_recipe(1)
    recipe["model"] = {"vision_tower": str(parts / "tower"), "language_model": "nobody/no-such-model-xyz"}
    with pytest.raises(FileNotFoundError, match="never downloads"):
        train(from_dict(recipe), tmp_path, progress=False)


def test_cli_trains_a_recipe(tmp_path):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(4))
    result = CliRunner().invoke(app, ["train", str(path), "--out", str(tmp_path / "run"), "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert len(read_metrics(tmp_path / "run" / "metrics.jsonl")) == 2
    again = CliRunner().invoke(app, ["train", str(path), "--out", str(tmp_path / "run"), "--steps", "2"])
    assert again.exit_code == 1 and "--resume" in again.output
    bad = CliRunner().invoke(app, ["train", "no-such-recipe"])
    assert bad.exit_code == 1 and "shipped recipe" in bad.output


def test_records_and_shapes_sources_mix(tmp_path):
    from groundlm.data.shapes import write_shapes

    records = write_shapes(tmp_path / "data", 6, "train", tasks=["caption", "refer"], progress=False)
    recipe = tiny_recipe(
        6,
        data=[
            {"name": "file", "ratio": 1, "records": str(records)},
            {"name": "live", "ratio": 1, "shapes": {"tasks": ["vqa"], "scenes": 50}},
        ],
    )
    train(from_dict(recipe), tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    sources = {s for r in rows for s in r["source"]}
    tasks = {t for r in rows for t in r["task_loss"]}
    assert sources == {"file", "live"}  # seed 3 draws both within 6 steps
    assert tasks == {"caption", "refer", "vqa"}  # records keep their meta.task

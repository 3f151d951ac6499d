"""Recipes that start from a Qwen2.5-VL or PaliGemma checkpoint (`init_from: {kind: FAMILY, path: DIR}`) and
train through groundlm's own loop (train/loop.py): ShapesWorld records rendered in the family's location format
with labels on the answer only, LoRA (peft) or full fine-tuning, the model saved in the family's own layout and
loaded back by `groundlm.load`, PaliGemma's prefix-LM kept in the batches and the forward, Ctrl-C and resume,
`--dry-run`, and the recipe errors of what these checkpoints cannot do."""

from __future__ import annotations

import dataclasses
import os
import signal

import pytest
import torch
import yaml
from PIL import Image, ImageDraw
from safetensors.torch import load_file

import groundlm
from groundlm.backends import load_for_training
from groundlm.data.shapes.records import write_shapes
from groundlm.records import write_jsonl
from groundlm.train import RecipeError, TrainHooks, TrainingStopped, checkpoint, dry_run, load_recipe, train
from groundlm.train.build import build_for_recipe
from groundlm.train.monitor import read_metrics
from groundlm.train.objectives import forward, lm_token_losses
from groundlm.train.params import parts
from groundlm.train.sources import build_sources
from tests.backend_models import build_family

FAMILIES = ["paligemma", "qwen2_5_vl"]
# every projection of the language model's layers (both families' text models name them alike)
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


pytestmark = pytest.mark.usefixtures("module_one_thread")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    return {family: build_family(family, root / family, seed=1) for family in FAMILIES}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Two ShapesWorld refer records (`groundlm data shapes`' writer): with batches of 2, every step sees the
    same batch, so the loss curve measures learning, not the draw."""
    return write_shapes(tmp_path_factory.mktemp("shapes"), 2, tasks=["refer"], progress=False)


def write_recipe(tmp_path, checkpoint_dir, family, records, **stage) -> object:
    stage = {"name": "ft", "data": [{"records": str(records)}], "steps": 20, "batch_size": 2,
             "max_grad_norm": None, "min_lr_ratio": 1.0, **stage}
    recipe = {"name": f"{family}-ft", "model": {"init_from": {"kind": family, "path": str(checkpoint_dir)}},
              "stages": [stage]}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return load_recipe(path)


def losses(out) -> list[float]:
    return [row["loss"] for row in read_metrics(out / "metrics.jsonl")]


def batch_of(recipe, model_dir=None, rows=(0, 1)):
    """The recipe's first micro-batch as the loop builds it (its sources, the family's `pad`), and the model."""
    spec = recipe.model
    if model_dir is not None:
        spec = dataclasses.replace(spec, init_from=dataclasses.replace(spec.init_from, path=str(model_dir)))
    model, processor = build_for_recipe(spec, seed=recipe.seed)
    data = build_sources(recipe.stages[0].data, processor, "test")
    name = recipe.stages[0].data[0].name
    return model.eval(), processor, processor.pad(data.samples(name, list(rows)), side="right")


def mean_loss(model, batch) -> float:
    with torch.no_grad():
        per_token = lm_token_losses(model, batch)  # [B, T-1]
    return float(per_token.sum() / (batch["labels"][:, 1:] != -100).sum())


def answers(model_dir):
    lm = groundlm.load(model_dir)
    out = lm.ask(Image.new("RGB", (64, 48), (200, 40, 40)), "[refer] give me the location of the red circle",
                 max_new_tokens=6)
    return lm, out


# A record's answer in each family's format: box (30, 20, 90, 60) of a 120 x 80 image
ANSWER = {
    "paligemma": "<loc0256><loc0256><loc0767><loc0767> red circle<eos>",
    "qwen2_5_vl": '```json\n[{"bbox_2d": [28, 21, 84, 63], "label": "red circle"}]\n```<|im_end|>',
}


@pytest.mark.parametrize("family", FAMILIES)
def test_records_train_in_the_family_format_with_labels_on_the_answer_only(tmp_path, checkpoints, family):
    image = Image.new("RGB", (120, 80), (240, 240, 240))
    ImageDraw.Draw(image).ellipse([30, 20, 90, 60], fill=(200, 30, 30))
    image.save(tmp_path / "a.png")
    write_jsonl(tmp_path / "records.jsonl", [{
        "id": "a", "image": "a.png", "objects": [{"box": [30, 20, 90, 60], "label": "red circle"}],
        "messages": [{"role": "user", "content": "[refer] give me the location of the red circle"},
                     {"role": "assistant", "content": "<p>red circle</p><box:0>"}],
    }])
    recipe = write_recipe(tmp_path, checkpoints[family], family, tmp_path / "records.jsonl",
                          train={"model.language_model": 1e-3})
    _, processor, batch = batch_of(recipe, rows=[0])
    labelled = batch["input_ids"][0][batch["labels"][0] != -100].tolist()
    assert processor.tokenizer.decode(labelled) == ANSWER[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_lora_recipe_lowers_the_loss_and_saves_the_merged_model_in_the_family_layout(
    tmp_path, checkpoints, records, family
):
    lora = {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": PROJECTIONS, "lr": 1e-2}
    recipe = write_recipe(tmp_path, checkpoints[family], family, records, lora=lora)
    out = train(recipe, tmp_path / "out", progress=False)
    curve = losses(tmp_path / "out")
    # measured: PaliGemma 7.12 -> 6.70, Qwen2.5-VL 5.60 -> 5.18. LoRA cannot go much lower here: the frozen
    # random output layer (std 0.02, 32 wide) keeps every logit within about +-0.6
    assert len(curve) == 20 and curve[-1] < curve[0] - 0.3, curve
    # merged: the saved weights are the checkpoint's keys, and only the language model's projections moved
    before, after = load_file(checkpoints[family] / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.split(".")[-2] in PROJECTIONS and "vision" not in k and "visual" not in k for k in moved)
    lm, answer = answers(out)
    assert type(lm.processor).__name__ != "GroundLMProcessor" and isinstance(answer.text, str)
    # the saved model is the trained one: lower loss on the training batch than the checkpoint it started from
    start, _, batch = batch_of(recipe)
    trained, _, _ = batch_of(recipe, out)
    assert mean_loss(trained, batch) < mean_loss(start, batch) - 0.3


@pytest.mark.parametrize("family", FAMILIES)
def test_full_recipe_trains_every_part_and_halves_the_loss(tmp_path, checkpoints, records, family):
    model, _ = load_for_training(family, checkpoints[family], None)
    every = dict.fromkeys(parts(model), 1e-2)
    recipe = write_recipe(tmp_path, checkpoints[family], family, records, train=every)
    out = train(recipe, tmp_path / "out", progress=False)
    curve = losses(tmp_path / "out")
    # measured: PaliGemma 7.12 -> 0.80, Qwen2.5-VL 5.60 -> 2.06
    assert curve[-1] < 0.5 * curve[0], curve
    before, after = load_file(checkpoints[family] / "model.safetensors"), load_file(out / "model.safetensors")
    towers = [k for k in before if "visual." in k or "vision_tower." in k]
    assert towers and any(not torch.equal(before[k], after[k]) for k in towers)  # the tower trained too
    answers(out)


def test_paligemma_batches_carry_token_types_and_the_forward_attends_the_prefix_both_ways(
    tmp_path, checkpoints, records
):
    recipe = write_recipe(tmp_path, checkpoints["paligemma"], "paligemma", records, train={"model.language_model": 1e-3})
    model, processor, batch = batch_of(recipe)
    answer = (batch["labels"] != -100) & batch["attention_mask"].bool()
    types = batch["token_type_ids"]
    # 0 on the prefix (image, prompt), 1 on the answer and its <eos>; padding is neither
    assert torch.equal(types.bool() & batch["attention_mask"].bool(), answer)
    labelled = batch["input_ids"][0][batch["labels"][0] != -100].tolist()
    text = processor.tokenizer.decode(labelled)
    assert text.startswith("<loc") and text.endswith("<eos>")  # PaliGemma's own location tokens
    # The training forward (objectives.forward) keeps the prefix-LM: an earlier prefix position sees a later one
    prefix = int((types[0] == 0).sum())
    changed = {k: v.clone() for k, v in batch.items()}
    changed["input_ids"][0, prefix - 2] = processor.tokenizer.convert_tokens_to_ids("<loc0000>")
    with torch.no_grad():
        a, b = forward(model, batch).logits, forward(model, changed).logits
        assert not torch.allclose(a[0, prefix - 4], b[0, prefix - 4])  # bidirectional on the prefix
        # ... and the answer causally: its last token changes no earlier position
        last = int(batch["attention_mask"][0].sum()) - 1
        late = {k: v.clone() for k, v in batch.items()}
        late["input_ids"][0, last] = processor.tokenizer.convert_tokens_to_ids("<loc0000>")
        assert torch.allclose(a[0, :last], forward(model, late).logits[0, :last], atol=1e-6)


@pytest.mark.parametrize("family", FAMILIES)
def test_ctrl_c_mid_lora_stage_resumes_to_the_uninterrupted_losses(tmp_path, checkpoints, records, family):
    lora = {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"], "lr": 1e-2}
    recipe = write_recipe(tmp_path, checkpoints[family], family, records, lora=lora, steps=5,
                          train={"model.multi_modal_projector" if family == "paligemma" else "model.visual.merger": 1e-3})
    train(recipe, tmp_path / "full", progress=False)

    def interrupt(step, loss):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    with pytest.raises(TrainingStopped, match="interrupted at step 3"):
        train(recipe, tmp_path / "cut", hooks=TrainHooks(loss=interrupt), progress=False)
    assert checkpoint.latest(tmp_path / "cut").name == "step-00000003"
    train(recipe, tmp_path / "cut", resume=True, progress=False)
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")
    full = load_file(tmp_path / "full" / "model" / "model.safetensors")
    cut = load_file(tmp_path / "cut" / "model" / "model.safetensors")
    assert all(torch.equal(full[k], cut[k]) for k in full)


@pytest.mark.parametrize("family", FAMILIES)
def test_dry_run_trains_a_tiny_model_of_the_family_with_the_checkpoint_processor_and_no_weights(
    tmp_path, checkpoints, records, family
):
    files = tmp_path / "files-only"
    files.mkdir()
    for f in checkpoints[family].iterdir():
        if f.name != "model.safetensors":  # a dry run needs the config, tokenizer and processor files only
            (files / f.name).write_bytes(f.read_bytes())
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    recipe = write_recipe(tmp_path, files, family, tmp_path / "missing.jsonl", lora=lora, steps=50, batch_size=8)
    quick = dry_run(recipe)
    assert quick.model.init_from.options == {"tiny": True} and quick.stages[0].steps == 2
    train(quick, tmp_path / "out", progress=False)
    rows = read_metrics(tmp_path / "out" / "metrics.jsonl")
    assert len(rows) == 2 and all(r["loss"] > 0 for r in rows)
    # the stand-in ShapesWorld source asks only the tasks the family has prompts for
    assert set(quick.stages[0].data[0].shapes.tasks) == {"caption", "vqa", "refer", "detection"} | (
        {"identify", "grounding"} if family == "qwen2_5_vl" else set())
    answers(tmp_path / "out" / "model")
    with pytest.raises(RecipeError, match="init_from.path: .*not found"):
        recipe.model.init_from.path = str(tmp_path / "nowhere")
        dry_run(recipe)


@pytest.mark.parametrize(
    ("model", "stage", "message"),
    [
        ({"template": "vicuna"}, {}, r"model\.template: a paligemma checkpoint brings its own"),
        ({"location_codec": "tokens"}, {}, r"model\.location_codec: a paligemma checkpoint brings its own"),
        ({}, {"template": "plain"}, r"stages\[0\] \(ft\)\.template: a paligemma checkpoint writes"),
        ({}, {"strategy": "fsdp"}, r"\.strategy: a paligemma checkpoint trains with strategy: ddp only"),
        ({}, {"packing": True}, r"\.packing: a paligemma checkpoint"),
        ({}, {"coordinate_sigma": 1.0}, r"\.coordinate_sigma: a paligemma checkpoint"),
        ({}, {"data": [{"shapes": {"tasks": ["refer", "grounding"]}}]},
         r"data\[0\]\.shapes\.tasks: paligemma has no prompt for \['grounding'\]"),
        ({"init_from": {"kind": "paligemma", "path": "x", "options": {"eva": "y"}}}, {},
         r"init_from\.options: a paligemma checkpoint takes only \['tiny'\]"),
    ],
)
def test_recipe_errors_name_the_field_a_family_checkpoint_cannot_take(tmp_path, checkpoints, records, model, stage,
                                                                       message):
    data = {"name": "ft", "data": [{"records": str(records)}], "train": {"model.language_model": 1e-3}, **stage}
    spec = {"init_from": {"kind": "paligemma", "path": str(checkpoints["paligemma"])}, **model}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "model": spec, "stages": [data]}))
    with pytest.raises(RecipeError, match=message):
        load_recipe(path)


def test_a_checkpoint_of_another_family_is_refused_naming_the_kind(tmp_path, checkpoints, records):
    recipe = write_recipe(tmp_path, checkpoints["paligemma"], "qwen2_5_vl", records, train={"model.language_model": 1})
    with pytest.raises(ValueError, match=r"is a paligemma checkpoint, not qwen2_5_vl; set init_from.kind"):
        train(recipe, tmp_path / "out", progress=False)

"""The dense_patches stage: per-patch targets from masks or boxes, the loss, and a recipe that trains it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import groundlm
from groundlm.data.shapes import scene_at
from groundlm.geometry import Frame
from groundlm.presets import build_model
from groundlm.train import TrainHooks, checkpoint, load_recipe, train
from groundlm.train.dense import DenseObject, DenseTargets, build_dense_model, dense_losses
from groundlm.train.monitor import read_metrics
from groundlm.train.recipe import DenseSpec, RecipeError, from_dict

from .train_helpers import one_thread, tiny_recipe  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def processor():
    return build_model("tiny")[1]


def test_a_patch_belongs_to_the_object_covering_enough_of_it(processor):
    mask = np.zeros((64, 64), bool)
    mask[8:24, 0:12] = True  # covers patches (1, 0), (2, 0) fully and half of (1, 1), (2, 1)
    mask[40:42, 40:42] = True  # a speck: 4 of a patch's 64 pixels
    obj = DenseObject((0, 8, 12, 42), "large red circle", mask)
    words, fg, boxes = DenseTargets(processor.tokenizer, 64, 8).sample([obj], Frame(64, 64, "resize"))
    assert fg.reshape(8, 8).nonzero().tolist() == [[1, 0], [1, 1], [2, 0], [2, 1]]  # the speck is < 10%
    strict = DenseTargets(processor.tokenizer, 64, 8, min_cover=0.6).sample([obj], Frame(64, 64, "resize"))[1]
    assert strict.reshape(8, 8).nonzero().tolist() == [[1, 0], [2, 0]]
    ids = processor.tokenizer.convert_tokens_to_ids(["large", "red", "circle"])
    assert words[8, ids].tolist() == [1, 1, 1] and words[8].sum() == 3 and words[0].sum() == 0
    assert torch.allclose(boxes[8], torch.tensor([0, 8, 12, 42]) / 64)


def test_boxes_only_and_frames(processor):
    targets = DenseTargets(processor.tokenizer, 64, 8)
    # A 128 x 64 image resized to 64 x 64: the box [0, 0, 64, 32] covers the left half, top half.
    big = DenseObject((0, 0, 64, 32), "blue square")
    small = DenseObject((0, 0, 16, 16), "red circle")  # inside the big box: the smaller box wins
    words, fg, boxes = targets.sample([big, small], Frame(128, 64, "resize"))
    grid = fg.reshape(8, 8)
    assert grid[:4, :4].all() and not grid[4:].any() and not grid[:, 4:].any()
    red = processor.tokenizer.convert_tokens_to_ids("red")
    assert words[0, red] == 1 and words[3 * 8 + 3, red] == 0
    assert torch.allclose(boxes[3 * 8 + 3], torch.tensor([0, 0, 0.5, 0.5]))
    # An RLE mask of the original image is mapped through the pad frame like the pixels.
    from groundlm.masks import rle_encode

    mask = np.zeros((32, 64), bool)
    mask[:, :32] = True
    _, fg_pad, _ = targets.sample([DenseObject((0, 0, 32, 32), "x", rle_encode(mask))], Frame(64, 32, "pad"))
    grid = fg_pad.reshape(8, 8)
    assert grid[2:6, :4].all() and not grid[:2].any() and not grid[6:].any() and not grid[:, 4:].any()


def test_the_loss_trains_the_tower(processor):
    model, _ = build_model("tiny", seed=0)
    spec = DenseSpec()
    dense = build_dense_model(model, spec, len(processor.tokenizer), seed=0)
    targets = DenseTargets(processor.tokenizer, 64, 8)
    scenes = [scene_at("train", i) for i in range(4)]
    pixels = torch.stack([processor.transform(s.image)[0] for s in scenes])
    parts = [targets.sample([DenseObject(o.box, o.label, o.mask) for o in s.objects], Frame(64, 64, "resize"))
             for s in scenes]
    batch = {"pixel_values": pixels, "dense_words": torch.stack([p[0] for p in parts]),
             "dense_fg": torch.stack([p[1] for p in parts]), "dense_boxes": torch.stack([p[2] for p in parts])}
    optimizer = torch.optim.AdamW(dense.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        loss = dense_losses(dense, batch, spec).mean()
        first = first if first is not None else float(loss.detach())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.5 * first
    assert model.vision_tower.embeddings.patch_embedding.weight.grad is not None


def _dense_recipe(steps: int = 3) -> dict:
    recipe = tiny_recipe(steps)
    lm = recipe["stages"][0]
    vision = {**lm, "name": "vision", "objective": "dense_patches", "train": {"vision_tower": 1e-3},
              "dense": {"box_weight": 2.0}}
    lm = {**lm, "train": {"connector": 1e-3, "language_model": 1e-3}}
    recipe["stages"] = [vision, lm]
    return recipe


def test_a_dense_stage_then_a_frozen_tower(tmp_path, one_thread):  # noqa: F811
    recipe = from_dict(_dense_recipe())
    assert recipe.stages[0].dense.box_weight == 2.0 and recipe.stages[1].dense is None
    before = build_model("tiny", seed=3)[0].vision_tower.state_dict()
    towers = {}

    def snapshot(step, model):  # before the step's update: at step 4, the tower the dense stage left
        towers[step] = {k: v.detach().clone() for k, v in model.vision_tower.state_dict().items()}

    train(recipe, tmp_path, progress=False, hooks=TrainHooks(after_backward=snapshot))
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["stage"] for r in rows] == ["vision"] * 3 + ["lm"] * 3
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert set(rows[0]["task_loss"]) == {"dense_patches"} and set(rows[0]["lr_groups"]) == {"vision_tower", "dense_head"}
    assert set(rows[3]["lr_groups"]) == {"connector", "language_model"}
    lm = groundlm.load(tmp_path / "model")
    after = lm.model.vision_tower.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the dense stage trained the tower
    # The lm stage left it exactly as the dense stage did.
    assert set(towers[4]) == set(after) and all(torch.equal(towers[4][k], after[k]) for k in after)
    # The head is training-only: not in the saved model; in the dense stage's checkpoint only.
    assert not any("dense_head" in k for k in lm.model.state_dict())
    last = checkpoint.read(checkpoint.latest(tmp_path), 0)
    assert not any(k.startswith("dense_head.") for k in last.weights)


def test_a_dense_stage_resumes_exactly(tmp_path, one_thread):  # noqa: F811
    recipe = _dense_recipe(steps=4)
    recipe["stages"] = recipe["stages"][:1]
    recipe["stages"][0]["save_every"] = 2
    full = tmp_path / "full"
    train(from_dict(recipe), full, progress=False)
    part = tmp_path / "part"

    class Stop(Exception):
        pass

    def after(step, model):
        if step == 3:
            raise Stop

    with pytest.raises(Stop):
        train(from_dict(recipe), part, progress=False, hooks=TrainHooks(after_backward=after))
    assert any(k.startswith("dense_head.") for k in checkpoint.read(checkpoint.latest(part), 0).weights)
    train(from_dict(recipe), part, resume=True, progress=False)
    losses = [[r["loss"] for r in read_metrics(d / "metrics.jsonl")] for d in (full, part)]
    assert losses[0] == losses[1]


def test_dense_settings_only_on_dense_stages():
    recipe = tiny_recipe()
    recipe["stages"][0]["dense"] = {"box_weight": 1.0}
    with pytest.raises(RecipeError, match="only a dense_patches stage"):
        from_dict(recipe)


def test_the_tower_recipe_pretrains_the_tower_alone_and_the_demo_keeps_it_frozen():
    tower = load_recipe("shapes-tower")
    assert [s.objective for s in tower.stages] == ["dense_patches"] and set(tower.stages[0].train) == {"vision_tower"}
    demo = load_recipe("shapes")
    assert demo.model.vision_tower == "groundlm:demo/parts/shapes-tower"
    assert all("vision_tower" not in s.train for s in demo.stages)


def test_a_dense_stage_renders_images_without_conversations(processor):
    from groundlm.train.recipe import ShapesSpec
    from groundlm.train.sources import ShapesSource

    spec = ShapesSpec(split="train", tasks=["identify"], scenes=50)
    full, lean = ShapesSource(spec, processor), ShapesSource(spec, processor, images_only=True)
    for i in (0, 7, 49):
        a, b = full[i], lean[i]
        assert a.input_ids and b.input_ids == [] and b.labels == []
        assert torch.equal(a.pixel_values, b.pixel_values) and a.frame == b.frame
        assert [(o.box, o.label) for o in a.meta["objects"]] == [(o.box, o.label) for o in b.meta["objects"]]
    targets = DenseTargets(processor.tokenizer, 64, 8)
    batch = processor.pad([lean[i] for i in range(4)], side="right")
    batch.update(targets.batch([lean[i] for i in range(4)]))
    assert batch["pixel_values"].shape == (4, 3, 64, 64) and batch["input_ids"].shape == (4, 0)
    assert torch.equal(batch["dense_fg"], targets.batch([full[i] for i in range(4)])["dense_fg"])

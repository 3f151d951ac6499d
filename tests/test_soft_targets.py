"""Soft coordinate targets: the one-hot loss in the limit, hand-checked values, near misses cost less."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import groundlm
from groundlm.presets import build_model
from groundlm.train.recipe import RecipeError, from_dict
from groundlm.train.soft_targets import coordinate_token_ids, soft_coordinate_losses

from .train_helpers import tiny_recipe

IGNORE = -100


def test_a_tiny_sigma_is_the_one_hot_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 12)
    targets = torch.tensor([[3, 4, IGNORE, 9, 1], [IGNORE, 5, 6, 7, 8]])
    coords = torch.tensor([4, 5, 6, 7, 8])  # tokens 4..8 are coordinates 0..4
    soft = soft_coordinate_losses(logits, targets, coords, 1e-3, IGNORE)
    hard = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE, reduction="none")
    assert torch.allclose(soft, hard, atol=1e-6)


def test_gaussian_target_by_hand():
    logits = torch.zeros(1, 1, 6)  # uniform over 6 tokens: every log-prob is -log 6
    logits[0, 0, 3] = 2.0
    coords = torch.tensor([2, 3, 4])  # three coordinate tokens; target is the middle one
    loss = soft_coordinate_losses(logits, torch.tensor([[3]]), coords, 1.0, IGNORE)
    log_z = math.log(5 + math.exp(2.0))
    w_side = math.exp(-0.5) / (1 + 2 * math.exp(-0.5))
    w_mid = 1 / (1 + 2 * math.exp(-0.5))
    expected = -(w_mid * (2.0 - log_z) + 2 * w_side * (0.0 - log_z))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_a_near_miss_costs_less_than_a_far_one():
    coords = torch.arange(10, 30)  # 20 coordinate tokens
    target = torch.tensor([[20]])  # value 10
    near = torch.full((1, 1, 40), -5.0)
    near[0, 0, 21] = 5.0  # predicts value 11
    far = torch.full((1, 1, 40), -5.0)
    far[0, 0, 28] = 5.0  # predicts value 18
    for sigma in (1.0, 2.0):
        assert soft_coordinate_losses(near, target, coords, sigma, IGNORE) < soft_coordinate_losses(
            far, target, coords, sigma, IGNORE
        )
    # one-hot cannot tell them apart
    assert F.cross_entropy(near[0], target[0]) == pytest.approx(F.cross_entropy(far[0], target[0]).item())


def test_coordinate_ids_of_the_text_codec_are_in_value_order():
    _, processor = build_model("tiny")
    ids = coordinate_token_ids(processor)
    assert processor.tokenizer.convert_ids_to_tokens(ids[:3].tolist()) == ["<0>", "<1>", "<2>"]
    assert len(ids) == processor.codec.bins + 1


def test_the_recipe_field_is_checked():
    assert from_dict(tiny_recipe(2, coordinate_sigma=2.0), "r.yaml").stages[0].coordinate_sigma == 2.0
    with pytest.raises(RecipeError, match="coordinate_sigma"):
        from_dict(tiny_recipe(2, coordinate_sigma=0), "r.yaml")


def test_the_loop_trains_a_stage_on_soft_coordinates(tmp_path, monkeypatch):
    """The logged loss of a step is the soft-target loss of what the model output, not the one-hot one."""
    from groundlm.train import objectives, train
    from groundlm.train.monitor import read_metrics

    seen = []

    def spy(model, batch):  # the objective's forward, recording the logits and labels of each micro-batch
        out = forward(model, batch)
        seen.append((out.logits.detach().clone(), batch["labels"].clone()))
        return out

    forward = objectives.forward
    monkeypatch.setattr(objectives, "forward", spy)
    torch.set_num_threads(1)
    refer = [{"name": "refer", "shapes": {"tasks": ["refer"], "scenes": 50}}]
    train(from_dict(tiny_recipe(1, coordinate_sigma=2.0, data=refer), "r.yaml"), tmp_path / "run", progress=False)
    (row,) = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert "coordinate_sigma: 2.0" in (tmp_path / "run" / "recipe.yaml").read_text()

    (logits, labels), processor = seen[0], groundlm.load(tmp_path / "run" / "model").processor
    targets = labels[:, 1:]
    coords = coordinate_token_ids(processor)
    assert torch.isin(targets, coords).sum() >= 4  # the answers hold boxes, or the test proves nothing
    units = (targets != IGNORE).sum()
    soft = soft_coordinate_losses(logits[:, :-1], targets, coords, 2.0, IGNORE).sum() / units
    hard = F.cross_entropy(logits[:, :-1].transpose(1, 2), targets, ignore_index=IGNORE, reduction="sum") / units
    assert row["loss"] == pytest.approx(float(soft), rel=1e-6)
    assert abs(float(soft) - float(hard)) > 1e-3  # a loop that ignored coordinate_sigma would log `hard`

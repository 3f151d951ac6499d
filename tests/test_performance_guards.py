"""The speed-ups change speed, never results: grouped and packed batches give the padded batch's loss, fused
AdamW the unfused update, and `group_by_length` the same training step.

Batched and one-at-a-time generation giving the same answers is tests/test_inference.py's
`test_batched_answers_equal_one_at_a_time`.
"""

from __future__ import annotations

import copy

import pytest
import torch

from groundlm.presets import ModelSpec, build_model
from groundlm.train import TrainHooks, train
from groundlm.train.monitor import read_metrics
from groundlm.train.objectives import lm_token_losses
from groundlm.train.optim import adamw, is_fused
from groundlm.train.packing import length_groups, pack, per_sample_sums, split_by_length
from groundlm.train.params import named_parameters
from groundlm.train.recipe import ShapesSpec, from_dict, to_yaml
from groundlm.train.sources import ShapesSource

from .train_helpers import one_thread, tiny_recipe  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def setup():
    """The tiny model (no token merge, so image tokens are many) and 8 samples of every ShapesWorld task."""
    torch.set_num_threads(1)
    model, processor = build_model(ModelSpec(connector="mlp2x_gelu"), seed=0)
    source = ShapesSource(ShapesSpec(scenes=50), processor)
    samples = [source[i] for i in range(8)]
    lengths = [len(s.input_ids) for s in samples]
    assert len(set(lengths)) > 2  # a spread of lengths, or the test proves nothing
    return model, processor, samples


def _padded_losses(model, processor, samples) -> torch.Tensor:
    batch = processor.pad(samples, side="right")
    with torch.no_grad():
        return lm_token_losses(model, batch).sum(1)  # [B]


def test_length_groups_partition_and_cost():
    lengths = [300, 120, 118, 305, 119, 290]
    groups = length_groups(lengths, split_cost=20)
    assert sorted(i for g in groups for i in g) == list(range(6))
    assert [sorted(g) for g in groups] == [[0, 3, 5], [1, 2, 4]]
    assert length_groups(lengths, split_cost=10_000) == [[3, 0, 5, 1, 4, 2]]  # a split that never pays


def test_grouped_batches_give_the_padded_loss(setup):
    model, processor, samples = setup
    padded = _padded_losses(model, processor, samples)
    batch = processor.pad(samples, side="right")
    parts = split_by_length(batch, processor.image_token_id, split_cost=0)
    assert len(parts) > 1
    grouped = torch.zeros(len(samples))
    with torch.no_grad():
        for part in parts:
            grouped[part.rows] = lm_token_losses(model, part.batch).sum(1)
    assert torch.allclose(grouped, padded, rtol=1e-5, atol=1e-5)
    assert float(grouped.sum()) == pytest.approx(float(padded.sum()), rel=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_rows_give_the_padded_loss(setup, attention):
    model, processor, samples = setup
    model = copy.deepcopy(model)
    model.set_attn_implementation(attention)
    padded = _padded_losses(model, processor, samples)
    lengths = [len(s.input_ids) for s in samples]
    packed = pack(samples, processor.tokenizer.pad_token_id, row_tokens=2 * max(lengths))
    assert packed.batch["input_ids"].shape[0] < len(samples)  # rows really hold several samples
    with torch.no_grad():
        token_losses = lm_token_losses(model, packed.batch)  # [R, L-1]
    per_sample = per_sample_sums(token_losses, packed.owner, len(samples))
    assert torch.allclose(per_sample, padded, rtol=1e-5, atol=1e-5)


def test_fused_adamw_equals_unfused():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
    nets = [net, copy.deepcopy(net)]
    fused = adamw([{"params": list(nets[0].parameters()), "lr": 1e-2, "weight_decay": 0.1}])
    plain = torch.optim.AdamW([{"params": list(nets[1].parameters()), "lr": 1e-2, "weight_decay": 0.1}])
    assert is_fused(fused) and not is_fused(plain)  # torch 2.13 supports fused AdamW on CPU
    x, y = torch.randn(64, 16), torch.randn(64, 4)
    for _ in range(10):
        for model, optimizer in zip(nets, (fused, plain), strict=True):
            optimizer.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def _first_step(out, group: bool) -> tuple[dict, dict]:
    grads = {}

    def grab(step, model):
        grads.update({n: p.grad.clone() for n, p in named_parameters(model).items() if p.grad is not None})

    recipe = from_dict(tiny_recipe(steps=1, batch_size=6, warmup_steps=0, group_by_length=group))
    train(recipe, out, hooks=TrainHooks(after_backward=grab), progress=False)
    (row,) = read_metrics(out / "metrics.jsonl")
    return row, grads


def test_group_by_length_trains_the_same_step(tmp_path, monkeypatch):
    from groundlm.train import loop

    splits = []

    def split(*args, **_):
        splits.append(parts := split_by_length(*args, split_cost=0))  # split wherever it saves padding
        return parts

    monkeypatch.setattr(loop, "split_by_length", split)
    plain, g_plain = _first_step(tmp_path / "plain", False)
    assert not splits
    grouped, g_grouped = _first_step(tmp_path / "grouped", True)
    assert len(splits) == 1 and len(splits[0]) > 1  # the step really ran several sub-batches
    assert grouped["loss"] == pytest.approx(plain["loss"], rel=1e-5)
    assert grouped["task_loss"].keys() == plain["task_loss"].keys()
    for task, value in plain["task_loss"].items():
        assert grouped["task_loss"][task] == pytest.approx(value, rel=1e-5)
    assert g_plain.keys() == g_grouped.keys()
    for name, g in g_plain.items():
        assert torch.allclose(g_grouped[name], g, rtol=1e-4, atol=1e-6), name


def test_speed_fields_at_default_stay_out_of_the_saved_recipe():
    # so runs checkpointed before group_by_length existed still resume (resume compares this YAML)
    assert "group_by_length" not in to_yaml(from_dict(tiny_recipe()))
    assert "group_by_length: true" in to_yaml(from_dict(tiny_recipe(group_by_length=True)))


def test_the_warmup_cosine_schedule_equals_transformers():
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    from groundlm.train.optim import WarmupCosine, warmup_cosine

    def lrs(make):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
        sched = make(opt)
        out = []
        for _ in range(30):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    ours = lrs(lambda o: warmup_cosine(o, WarmupCosine(5, 30, 0.1)))
    theirs = lrs(lambda o: get_cosine_with_min_lr_schedule_with_warmup(o, 5, 30, min_lr_rate=0.1))
    assert ours == theirs and ours[0] == 0.0 and ours[5] == 2.0 and ours[-1] > 0.2

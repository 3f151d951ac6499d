"""What trains in a stage: parameters outside its `train:` stay bit-identical; merging LoRA keeps the outputs."""

from __future__ import annotations

import torch

import groundlm
from groundlm.presets import build_model
from groundlm.train import TrainHooks, train
from groundlm.train.params import merge_lora, set_lora
from groundlm.train.recipe import LoraSpec, from_dict

from .train_helpers import one_thread, tiny_recipe  # noqa: F401 (fixture)


def test_parameters_outside_a_stages_train_map_stay_bit_identical(tmp_path):
    recipe = tiny_recipe(2)
    first = recipe["stages"][0]
    recipe["stages"] = [
        {**first, "name": "connector", "train": {"connector": 1e-3}},
        {**first, "name": "layer0", "train": {"language_model.model.layers.0": 1e-3, "vision_tower": 1e-3}},
    ]
    snapshots = {}

    def snapshot(step, model):  # before the step's update: steps 1 and 3 see the model each stage started from
        snapshots[step] = {n: p.detach().clone() for n, p in model.named_parameters()}

    train(from_dict(recipe), tmp_path, progress=False, hooks=TrainHooks(after_backward=snapshot))
    final = {n: p.detach() for n, p in groundlm.load(tmp_path / "model").model.named_parameters()}
    for before, after, trained in (
        (snapshots[1], snapshots[3], ("connector.",)),
        (snapshots[3], final, ("language_model.model.layers.0.", "vision_tower.")),
    ):
        assert set(before) == set(after)
        changed = {n for n in before if not torch.equal(before[n], after[n])}
        assert changed and all(n.startswith(trained) for n in changed), sorted(changed)[:5]
        # Every trained module moved (each has a weight that learns from the first step).
        assert all(any(n.startswith(t) for n in changed) for t in trained)


def test_merging_lora_keeps_the_outputs():
    model, processor = build_model("tiny", seed=0)
    set_lora(model, None, LoraSpec(r=4, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():  # LoRA B starts at zero (the adapter adds nothing); give it something to merge
        for name, p in model.language_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.eval()
    input_ids = torch.randint(5, len(processor.tokenizer), (2, 12))
    with torch.no_grad():
        adapted = model(input_ids=input_ids).logits
        with model.language_model.disable_adapter():
            plain = model(input_ids=input_ids).logits
        changed = merge_lora(model)
        merged = model(input_ids=input_ids).logits
    assert changed
    assert (adapted - plain).abs().max() > 1e-3  # the adapters change the outputs, so the merge has work to do
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert (merged - adapted).abs().max() <= 1e-5

"""Fine-tuning dry runs of the families groundlm can train (backends/finetune.py): a records file is encoded in
each family's own location format with labels on the answer only (and PaliGemma's prefix / suffix token
types), and 20 AdamW steps with LoRA (peft) or in full lower the loss on a fixed batch."""

from __future__ import annotations

import pytest
import torch
from PIL import Image, ImageDraw

import groundlm
from groundlm.backends.finetune import batch_loss, train_steps, with_lora
from groundlm.data.dataset import RecordDataset
from groundlm.records import write_jsonl
from groundlm.train.recipe import LoraSpec
from tests.backend_models import build_family

ANSWER = {  # the answer of the first record, in each family's format (box 30,20,90,60 of a 120 x 80 image)
    "paligemma": "<loc0256><loc0256><loc0767><loc0767> red circle<eos>",
    "qwen2_5_vl": '```json\n[{"bbox_2d": [28, 21, 84, 63], "label": "red circle"}]\n```<|im_end|>',
}
# every projection of the language model's layers (both families' text models name them alike)
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    rows = []
    for name, size, box in (("a", (120, 80), [30, 20, 90, 60]), ("b", (90, 90), [10, 40, 50, 80])):
        image = Image.new("RGB", size, (240, 240, 240))
        ImageDraw.Draw(image).ellipse(box, fill=(200, 30, 30))
        image.save(root / f"{name}.png")
        rows.append({
            "id": name, "image": f"{name}.png", "objects": [{"box": box, "label": "red circle"}],
            "messages": [{"role": "user", "content": "[refer] give me the location of the red circle"},
                         {"role": "assistant", "content": "<p>red circle</p><box:0>"}],
        })
    write_jsonl(root / "records.jsonl", rows)
    return root / "records.jsonl"


def family_lm(tmp_path, family):
    return groundlm.load(build_family(family, tmp_path / family, seed=1))


@pytest.mark.parametrize("family", ["paligemma", "qwen2_5_vl"])
def test_records_train_in_the_family_format_with_labels_on_the_answer_only(tmp_path, records, family):
    lm = family_lm(tmp_path, family)
    sample = RecordDataset(records, lm.processor)[0]
    labelled = [t for t, y in zip(sample.input_ids, sample.labels, strict=True) if y != -100]
    assert lm.processor.tokenizer.decode(labelled) == ANSWER[family]
    batch = lm.processor.pad([sample, RecordDataset(records, lm.processor)[1]], side="right")
    if family == "paligemma":  # the prefix attends both ways (type 0), the answer causally (type 1)
        answer = batch["labels"] != -100
        types = batch["token_type_ids"].bool() & batch["attention_mask"].bool()
        assert torch.equal(types, answer)


@pytest.mark.parametrize("family", ["paligemma", "qwen2_5_vl"])
def test_twenty_full_steps_halve_the_loss_on_a_fixed_batch(tmp_path, records, family):
    torch.manual_seed(0)
    lm = family_lm(tmp_path, family)
    data = RecordDataset(records, lm.processor)
    batch = [data[0], data[1]]
    losses = train_steps(lm.model, lm.processor, batch, steps=20, lr=1e-2)
    after = float(batch_loss(lm.model, lm.processor, batch))
    assert after < 0.5 * losses[0], (losses[0], after)  # measured: 7.25 → 1.6 (PaliGemma), 5.60 → 1.3 (Qwen)


@pytest.mark.parametrize("family", ["paligemma", "qwen2_5_vl"])
def test_twenty_lora_steps_lower_the_loss_and_leave_the_model_unchanged(tmp_path, records, family):
    torch.manual_seed(0)
    lm = family_lm(tmp_path, family)
    data = RecordDataset(records, lm.processor)
    batch = [data[0], data[1]]
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    model = with_lora(lm.model, LoraSpec(r=16, alpha=32, dropout=0.0, target_modules=PROJECTIONS))
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n and "language_model" in n for n in trained)
    losses = train_steps(model, lm.processor, batch, steps=20, lr=1e-2)
    after = float(batch_loss(model, lm.processor, batch))
    # a 2-layer, 32-wide random model moves slowly through rank-16 adapters: measured 7.25 → 6.9 and 5.60 → 5.2
    assert after < losses[0] - 0.2, (losses[0], after)
    frozen = {n.replace(".base_layer", ""): p for n, p in model.get_base_model().named_parameters() if "lora_" not in n}
    assert frozen.keys() == before.keys() and all(torch.equal(p, before[n]) for n, p in frozen.items())

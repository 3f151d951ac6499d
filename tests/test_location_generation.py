"""Generation with the embedding codec: the trigger's box is decoded and fed back as the slot's embedding,
batched decoding equals one prompt at a time, and `ask` returns the decoded boxes as grounded objects."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch
from PIL import Image

import groundlm.decoding as decoding
from groundlm.data.shapes import scene_at
from groundlm.inference import GroundLM
from groundlm.presets import build_model, get_preset

FORCED_STEPS = (0, 3)  # the chooser below emits the trigger at these decoding steps


@pytest.fixture(scope="module")
def lm():
    model, processor = build_model(dataclasses.replace(get_preset("tiny"), location_codec="embedding"), seed=1)
    return GroundLM(model, processor)


@pytest.fixture
def forced_triggers(monkeypatch, lm):
    """Greedy decoding that emits the trigger at FORCED_STEPS (a random model would rarely choose it)."""
    step = {"n": 0}
    original = decoding.choose
    trigger = _ids(lm)["trigger_token_id"]

    def choose(logits, sampling, generator):
        out = original(logits, sampling, generator)
        if step["n"] in FORCED_STEPS:
            out = torch.full_like(out, trigger)
        step["n"] += 1
        return out

    monkeypatch.setattr(decoding, "choose", choose)
    return step


def _ids(lm) -> dict:
    return lm.processor.codec.head_settings(lm.processor.tokenizer)


def _decode(lm, batch, max_new_tokens):
    """The decoding loop with the codec's hook: new ids per row, decoded boxes per row, the model inputs."""
    proc = lm.processor
    inputs = {k: v for k, v in proc.pad(batch, side="left").items() if k != "labels"}
    hook = proc.codec.decode_hook(lm.model, len(batch))
    steps = list(decoding.generate(
        lm.model, inputs, max_new_tokens=max_new_tokens, stop_token_ids={proc.stop_token_id},
        pad_token_id=proc.tokenizer.pad_token_id, hook=hook,
    ))
    ids = [[s.tokens[row] for s in steps if s.tokens[row] is not None] for row in range(len(batch))]
    return ids, [hook.decoded(row) for row in range(len(batch))], inputs


def _prompts(lm, texts, boxes):
    images = [scene_at("val", i).image for i in range(len(texts))]
    return [lm.processor.prompt(img, [{"role": "user", "content": t}], b)
            for img, t, b in zip(images, texts, boxes, strict=True)]


def test_trigger_box_is_decoded_and_fed_back(lm, forced_triggers):
    model = lm.model
    (enc,) = _prompts(lm, ["[identify] what is <box:0>"], [[[4, 6, 30, 40]]])
    (ids,), (boxes,), inputs = _decode(lm, [enc], max_new_tokens=6)
    trigger, slot = _ids(lm)["trigger_token_id"], _ids(lm)["slot_token_id"]
    assert ids[0] == ids[3] == trigger and ids[1] == ids[4] == slot
    assert len(boxes) == 2
    # Teacher-force the whole sequence with the decoded boxes in the generated slots: the box at each trigger
    # position is the one the loop decoded, so the second box saw the first box's encoding as its slot input.
    full = torch.tensor([enc.input_ids + ids])
    prompt_slots = torch.tensor(enc.locations["slot_boxes"]).reshape(-1, 4)

    def boxes_with(slot_inputs):
        out = model(
            input_ids=full, attention_mask=torch.ones_like(full), pixel_values=inputs["pixel_values"],
            location_inputs={"slot_boxes": torch.cat([prompt_slots, slot_inputs])}, output_hidden_states=True,
        )
        return model.location_heads.decode(out.hidden_states[-1][full == trigger])

    with torch.no_grad():
        replay = boxes_with(torch.tensor(boxes[:2]))
        assert torch.allclose(replay, torch.tensor(boxes), atol=1e-4)
        other = boxes_with(torch.tensor([[0.9, 0.9, 1.0, 1.0], boxes[1]]))
    assert torch.allclose(other[0], replay[0], atol=1e-5)  # nothing before the first trigger changed
    assert not torch.allclose(other[1], replay[1], atol=1e-4)  # the fed-back box matters downstream


def test_batched_generation_equals_one_at_a_time(lm, forced_triggers):
    texts = ["[refer] the red circle", "[identify] what is <box:0>", "[refer] where is the large blue square"]
    boxes = [[], [[10, 12, 40, 50]], []]
    batch = _prompts(lm, texts, boxes)
    forced_triggers["n"] = 0
    together_ids, together_boxes, _ = _decode(lm, batch, max_new_tokens=7)
    for row, enc in enumerate(batch):
        forced_triggers["n"] = 0
        (alone_ids,), (alone_boxes,), _ = _decode(lm, [enc], max_new_tokens=7)
        assert alone_ids == together_ids[row]
        assert torch.allclose(torch.tensor(alone_boxes), torch.tensor(together_boxes[row]), atol=1e-4)


def test_ask_returns_the_decoded_boxes_as_grounded_objects(lm, forced_triggers):
    image = scene_at("val", 0).image
    answer = lm.ask(image, "[refer] the red circle", max_new_tokens=6)
    assert answer.text.startswith("<at><boxes>")  # as the model wrote it (MiniGPT-v2 spacing: no space between)
    assert len(answer.objects) == 2 and all(o.box is not None and len(o.box) == 4 for o in answer.objects)
    assert "<at>" not in answer.plain_text
    forced_triggers["n"] = 0
    (ids,), (boxes,), _ = _decode(lm, [_prompts(lm, ["[refer] the red circle"], [[]])[0]], 6)
    text = lm.processor.decode(ids)
    clamp = [tuple(min(max(v, 0.0), 1.0) for v in (*sorted(b[0::2])[:1], *sorted(b[1::2])[:1],
                                                   *sorted(b[0::2])[1:], *sorted(b[1::2])[1:])) for b in boxes]
    assert text == answer.text and [o.box_norm for o in answer.objects] == clamp
    forced_triggers["n"] = 0
    assert [g.answer.text for g in lm.generate([_prompts(lm, ["[refer] the red circle"], [[]])[0]], 6)] == [
        answer.text
    ]


@pytest.fixture(scope="module")
def mask_lm():
    preset = dataclasses.replace(get_preset("tiny"), location_codec="embedding", location_head={"mask_decoder": True})
    model, processor = build_model(preset, seed=1)
    return GroundLM(model, processor)


def _mask_forced(monkeypatch, lm):
    """Greedy decoding that emits the trigger at the first step."""
    original = decoding.choose
    trigger = _ids(lm)["trigger_token_id"]
    step = {"n": 0}

    def choose(logits, sampling, generator):
        out = original(logits, sampling, generator)
        step["n"] += 1
        return torch.full_like(out, trigger) if step["n"] == 1 else out

    monkeypatch.setattr(decoding, "choose", choose)
    return step


def test_ask_and_the_api_return_the_same_decoded_masks(mask_lm, monkeypatch):
    from fastapi.testclient import TestClient

    from groundlm.masks import decode_mask
    from groundlm.serve import create_app
    from tests.serve_helpers import chat_body, png_bytes

    step = _mask_forced(monkeypatch, mask_lm)
    image = Image.open(io.BytesIO(png_bytes()))  # what chat_body sends: 80 x 60
    answer = mask_lm.ask(image, "[refer] the red circle", max_new_tokens=4)
    (obj, *_) = answer.objects
    assert obj.mask is not None and obj.mask["size"] == [60, 80]
    assert decode_mask(obj.mask, 60, 80).shape == (60, 80)
    step["n"] = 0
    with TestClient(create_app(mask_lm, ui=False)) as client:
        body = client.post("/v1/chat/completions", json=chat_body(max_tokens=4)).json()
    api_objects = body["choices"][0]["message"]["objects"]
    assert api_objects == [o.to_dict() for o in answer.objects]
    assert api_objects[0]["mask"]["size"] == [60, 80]

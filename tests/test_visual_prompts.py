"""Visual prompts: a click becomes a small box and enters the user turn in every codec; region questions work
through `ask(..., boxes=)` and `ask(..., points=)`; the NExT-Chat and LLaVA-Grounding recipes."""

from __future__ import annotations

import dataclasses
import math

import pytest

from groundlm import load
from groundlm.data.shapes import scene_at
from groundlm.geometry import Frame
from groundlm.inference import GroundLM
from groundlm.presets import build_model, get_preset
from groundlm.train import dry_run, load_recipe, train
from groundlm.train.monitor import read_metrics
from groundlm.train.recipe import ShapesSpec, SourceSpec
from groundlm.visual_prompts import POINT_BOX_SIDE, point_to_box, with_points


@pytest.mark.parametrize("frame", [Frame(200, 100, "resize"), Frame(200, 100, "pad")])
def test_a_click_is_a_small_square_box_in_the_frame(frame):
    box = point_to_box((50, 40), frame)
    n = frame.normalize(box)
    assert math.isclose(n[2] - n[0], POINT_BOX_SIDE) and math.isclose(n[3] - n[1], POINT_BOX_SIDE)
    assert math.isclose((box[0] + box[2]) / 2, 50) and math.isclose((box[1] + box[3]) / 2, 40)
    corner = point_to_box((0, 0), frame)  # clipped to the image
    assert corner[0] == 0 and corner[1] == 0


def test_point_slots_become_box_slots_after_the_given_boxes():
    frame = Frame(64, 64, "resize")
    prompt, boxes = with_points("what is <box:0> next to <point:1> and <point:0>", [[1, 2, 3, 4]],
                                [[10, 10], [20, 30]], frame)
    assert prompt == "what is <box:0> next to <box:2> and <box:1>" and len(boxes) == 3
    with pytest.raises(ValueError, match="has no point"):
        with_points("<point:1>", [], [[1, 1]], frame)
    with pytest.raises(ValueError, match="need an image"):
        with_points("<point:0>", [], [[1, 1]], None)
    assert with_points("no slots", [[1, 2, 3, 4]], [], None) == ("no slots", [[1, 2, 3, 4]])


@pytest.mark.parametrize("codec", ["text", "tokens", "embedding"])
def test_a_click_enters_the_user_turn_in_every_codec(codec):
    model, processor = build_model(dataclasses.replace(get_preset("tiny"), location_codec=codec))
    image = scene_at("val", 1).image
    enc = processor.prompt(image, [{"role": "user", "content": "[identify] what is <point:0>"}], points=[[32, 16]])
    text = processor.tokenizer.decode(enc.input_ids)
    if codec == "text":
        assert "{<48><23><52><27>}" in text  # 0.04 of the frame around (0.5, 0.25): four bins per axis
    elif codec == "tokens":
        (obj,) = processor.codec.parse(text)
        assert obj.box_norm[0] < 0.5 < obj.box_norm[2] and obj.box_norm[1] < 0.25 < obj.box_norm[3]
    else:
        assert "<boxes>" in text and "<at>" not in text
        (box,) = enc.locations["slot_boxes"]
        assert math.isclose((box[0] + box[2]) / 2, 0.5) and math.isclose((box[1] + box[3]) / 2, 0.25)
    lm = GroundLM(model, processor)
    by_box = lm.ask(image, "[identify] what is <box:0>", boxes=[[5, 5, 30, 30]], max_new_tokens=3)
    by_point = lm.ask(image, "[identify] what is <point:0>", points=[[32, 16]], max_new_tokens=3)
    assert isinstance(by_box.text, str) and isinstance(by_point.text, str)
    chat = lm.chat(image)
    chat.send("[identify] what is <point:0>", points=[[32, 16]], max_new_tokens=2)
    chat.send("and <box:0>", boxes=[[1, 1, 9, 9]], max_new_tokens=2)
    assert len(chat.messages) == 4


def test_nextchat_and_llava_grounding_recipes():
    nextchat = load_recipe("nextchat")
    assert [s.name for s in nextchat.stages] == ["pretrain", "instruct", "segmentation"]
    assert nextchat.model.location_codec == "embedding"
    assert nextchat.model.location_head == {"l1_weight": 2.0, "giou_weight": 0.2, "cycle_weight": 1.0,
                                            "mask_decoder": True}
    assert nextchat.stages[2].train == {"location_heads.mask_decoder": 2.0e-5}
    assert all(s.global_batch == 64 for s in nextchat.stages) and nextchat.stages[0].steps == 65000
    grounding = load_recipe("llava_grounding")
    assert grounding.model.location_codec == "embedding" and len(grounding.stages) == 3
    assert "language_model" not in grounding.stages[0].train  # the LLM is frozen in alignment
    assert grounding.stages[2].train == {"location_heads.box_encoder": 1.0e-4}


def test_nextchat_dry_run_trains_boxes_then_only_the_mask_decoder(tmp_path):
    recipe = dry_run(load_recipe("nextchat"))
    segmentation = SourceSpec(name="res", ratio=1, shapes=ShapesSpec(tasks=["segmentation"], scenes=50))
    recipe.stages[2].data = [segmentation]
    train(recipe, tmp_path, progress=False)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert all({"box_l1", "box_giou"} <= set(r["location_losses"]) for r in rows if r["stage"] == "pretrain")
    assert all({"mask_dice", "mask_bce"} <= set(r["location_losses"]) for r in rows if r["stage"] == "segmentation")
    lm = load(tmp_path / "model")
    assert lm.model.location_heads.mask_decoder is not None
    answer = lm.ask(scene_at("val", 0).image, "[refer] the red circle", max_new_tokens=3)
    assert all(o.mask is not None for o in answer.objects)


def test_an_embedding_answer_sent_back_as_text_drops_its_boxless_locations():
    model, processor = build_model(dataclasses.replace(get_preset("tiny"), location_codec="embedding"))
    history = [
        {"role": "user", "content": "[refer] the red circle"},
        {"role": "assistant", "content": "<p> red circle </p> <at> <boxes>"},  # as an API client sends it back
        {"role": "user", "content": "[identify] what is <box:0>"},
    ]
    enc = processor.prompt(scene_at("val", 0).image, history, [[1, 1, 9, 9]])
    trigger_id = processor.codec.head_settings(processor.tokenizer)["trigger_token_id"]
    assert enc.input_ids.count(trigger_id) == 0 and len(enc.locations["slot_boxes"]) == 1

"""The `tokens` and `embedding` location codecs: round trips, malformed output, and the processor's tensors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from groundlm.data.shapes import scene_at, scene_records
from groundlm.location import EmbeddingLocationCodec, TextLocationCodec, TokenLocationCodec, make_codec
from groundlm.presets import build_model, get_preset
from groundlm.processor import IGNORE_INDEX, ProcessorConfig
from tests.box_strategies import boxes

# ---- tokens ----------------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(boxes(), st.sampled_from([2, 32, 100, 1000]))
def test_tokens_round_trip_within_half_a_bin(box, bins):
    codec = TokenLocationCodec(bins=bins)
    text = codec.render("<p>the cat</p><box:0>", [box])
    assert text.count("<loc_") == 4
    (obj,) = codec.parse(text)
    assert obj.phrase == "the cat"
    assert all(abs(a - b) <= 0.5 / bins + 1e-12 for a, b in zip(obj.box_norm, box, strict=True))
    # Parsing what it rendered and rendering again gives the same tokens (bin centres are fixed points).
    assert codec.render("<box:0>", [obj.box_norm]) == codec.render("<box:0>", [box])


def test_tokens_quantise_like_florence2():
    codec = TokenLocationCodec(bins=1000)
    assert codec.quantize((0.0, 0.0005, 0.9999, 1.0)) == (0, 0, 999, 999)
    assert codec.dequantize((0, 1, 998, 999)) == (0.0005, 0.0015, 0.9985, 0.9995)
    assert codec.special_tokens()[:2] == ["<p>", "</p>"] and len(codec.special_tokens()) == 1002


def test_tokens_several_boxes_and_spaces():
    codec = TokenLocationCodec(bins=100)
    text = codec.render("<p>two dogs</p><box:0><box:1> and <box:2>.", [(0.1, 0.1, 0.2, 0.2), (0.5, 0.5, 0.9, 0.9),
                                                                      (0, 0, 1, 1)])
    assert text == (
        "<p>two dogs</p><loc_10><loc_10><loc_20><loc_20><loc_50><loc_50><loc_90><loc_90> and "
        "<loc_0><loc_0><loc_99><loc_99>."
    )
    spaced = text.replace("><", "> <").replace("</p>", " </p> ").replace("<p>", " <p> ")
    objs = codec.parse(spaced)
    assert [o.phrase for o in objs] == ["two dogs", "two dogs", None]
    assert codec.strip(spaced) == "two dogs and."


@pytest.mark.parametrize(
    "text, n",
    [
        ("", 0),
        ("<loc_1><loc_2><loc_3>", 0),  # cut short: 3 coordinates
        ("<loc_1><loc_2><loc_3><loc_4><loc_5>", 1),  # the incomplete rest is dropped
        ("<loc_1><loc_2><loc_3><loc_400>", 0),  # a bin past the end
        ("<loc_99999999999999><loc_2><loc_3><loc_4>", 0),  # a runaway number is not a token
        ("<p>unclosed <loc_1><loc_2><loc_3><loc_4>", 1),
        ("<p></p><loc_1><loc_2><loc_3><loc_4>", 1),
        ("<loc_1> word <loc_2><loc_3><loc_4>", 0),  # a word breaks the run
        ("{<1><2><3><4>}", 0),  # the text codec's format is not this codec's
    ],
)
def test_tokens_parse_malformed_output(text, n):
    assert len(TokenLocationCodec(bins=100).parse(text)) == n


def test_tokens_swap_corners_and_never_raise():
    codec = TokenLocationCodec(bins=10)
    (obj,) = codec.parse("<loc_8><loc_9><loc_1><loc_2>")
    assert obj.box_norm == (0.15, 0.25, 0.85, 0.95)
    assert codec.parse(None) == [] and codec.strip(None) == ""  # type: ignore[arg-type]


# ---- embedding ----------------------------------------------------------------------------------------------


def test_embedding_render_and_slot_order():
    codec = EmbeddingLocationCodec()
    boxes_ = [(0.1, 0.2, 0.3, 0.4), (0.5, 0.5, 0.6, 0.6)]
    assert codec.render("<p>cat</p><box:1> and <box:0>", boxes_) == "<p>cat</p><at><boxes> and <at><boxes>"
    assert codec.render("what is <box:0>", boxes_, output=False) == "what is <boxes>"
    assert codec.slot_boxes("<box:1> and <box:0>", boxes_) == [boxes_[1], boxes_[0]]
    with pytest.raises(ValueError, match="has no box"):
        codec.render("<box:2>", boxes_)


def test_embedding_parse_pairs_triggers_with_decoded_boxes():
    codec = EmbeddingLocationCodec()
    decoded = [(0.1, 0.1, 0.2, 0.2), (0.3, 0.3, 0.4, 0.4), (0.5, 0.5, 0.6, 0.6)]
    text = "<p> two cats </p> <at> <boxes> <at> <boxes> near a dog <at> <boxes> ."
    objs = codec.parse(text, decoded)
    assert [(o.phrase, o.box_norm) for o in objs] == [
        ("two cats", decoded[0]), ("two cats", decoded[1]), (None, decoded[2])
    ]
    assert codec.strip(text) == "two cats near a dog."
    # Without decoded boxes nothing is known; fewer boxes than triggers keep the first ones; never raises.
    assert codec.parse(text) == [] and len(codec.parse(text, decoded[:1])) == 1
    assert codec.parse("<at> <at>", [(0, 0, 1, 1)])[0].box_norm == (0, 0, 1, 1)
    # The decoder is unconstrained: corners come back ordered and inside the frame.
    assert codec.parse("<at>", [(0.8, 1.3, 0.2, -0.1)])[0].box_norm == (0.2, 0.0, 0.8, 1.0)
    assert codec.parse(None, decoded) == [] and codec.parse("<p>x</p>", [["bad"]]) == []  # type: ignore[arg-type]


def test_make_codec_follows_the_config_name():
    assert isinstance(make_codec(ProcessorConfig()), TextLocationCodec)
    assert make_codec(ProcessorConfig(location_codec="tokens", location_bins=32)) == TokenLocationCodec(32)
    assert isinstance(make_codec(ProcessorConfig(location_codec="embedding")), EmbeddingLocationCodec)
    with pytest.raises(ValueError, match="unknown location_codec"):
        make_codec(ProcessorConfig(location_codec="pixels"))


# ---- processor and model -------------------------------------------------------------------------------------


def _encoded(processor, tasks=("refer", "identify", "grounding")):
    scene = scene_at("train", 3)
    out = []
    for r in scene_records(scene, "train", 3, list(tasks)):
        pixels, frame = processor.transform(scene.image)
        e = processor.encode(r.messages, boxes=[o.box for o in r.objects], frame=frame)
        e.pixel_values = pixels
        out.append((r, e))
    return out


def test_tokens_codec_model_trains_and_round_trips_through_the_tokenizer():
    model, processor = build_model(dataclasses.replace(get_preset("tiny"), location_codec="tokens"))
    assert model.config.location_codec == "tokens" and processor.config.location_codec == "tokens"
    tok = processor.tokenizer
    assert all(len(tok(t, add_special_tokens=False)["input_ids"]) == 1 for t in ("<loc_0>", "<loc_99>"))
    (record, enc), *_ = _encoded(processor, ("refer",))
    answer = [t for t, y in zip(enc.input_ids, enc.labels, strict=True) if y != IGNORE_INDEX]
    text = processor.decode(answer)
    (obj,) = processor.parse(text, enc.frame)
    target = record.objects[record.meta["target"]].box
    assert all(abs(a - b) <= 64 / 100 for a, b in zip(obj.box, target, strict=True))  # within a bin (64 px)
    batch = processor.pad([enc], side="right")
    assert torch.isfinite(model(**batch).loss)


def test_embedding_processor_emits_boxes_in_sequence_order_and_masks_slots():
    model, processor = build_model(dataclasses.replace(get_preset("tiny"), location_codec="embedding"))
    head = model.config.location_head
    ids = processor.codec.head_settings(processor.tokenizer)
    trigger_id, slot_id = ids["trigger_token_id"], ids["slot_token_id"]
    assert (head["trigger_token_id"], head["slot_token_id"]) == (trigger_id, slot_id)
    encoded = _encoded(processor)
    for _record, enc in encoded:
        slots = [i for i, t in enumerate(enc.input_ids) if t == slot_id]
        triggers = [i for i, t in enumerate(enc.input_ids) if t == trigger_id]
        assert len(slots) == len(enc.locations["slot_boxes"]) and len(triggers) == len(enc.locations["trigger_boxes"])
        assert all(enc.labels[i] == IGNORE_INDEX for i in slots)  # the slot is never a target
        assert all(enc.labels[i] == trigger_id for i in triggers)  # the trigger is
        assert all(enc.input_ids[i + 1] == slot_id for i in triggers)
    identify = encoded[1][1]
    assert identify.locations["trigger_boxes"] == [] and len(identify.locations["slot_boxes"]) == 1  # a user-side slot only
    batch = processor.pad([e for _, e in encoded], side="right")
    assert batch["location_inputs"]["slot_boxes"].shape == (sum(len(e.locations["slot_boxes"]) for _, e in encoded), 4)
    assert batch["location_inputs"]["trigger_boxes"].shape == (sum(len(e.locations["trigger_boxes"]) for _, e in encoded), 4)
    out = model(**batch)
    assert set(out.location_losses) == {"box_l1", "box_giou", "cycle_emb", "cycle_box"}
    assert out.location_boxes.shape == batch["location_inputs"]["trigger_boxes"].shape
    assert torch.allclose(out.location_sample_losses.sum(), out.location_loss)
    with pytest.raises(ValueError, match="slot tokens"):
        located = batch["location_inputs"]
        model(**{**batch, "location_inputs": {**located, "slot_boxes": located["slot_boxes"][:-1]}})
    # The default text codec adds no parameters and no tensors.
    text_model, text_processor = build_model("tiny")
    assert text_model.location_heads is None
    assert set(text_processor.pad([_encoded(text_processor, ("refer",))[0][1]])) == {
        "input_ids", "attention_mask", "labels", "pixel_values"
    }


def test_sincos_coordinate_init_is_refused_for_codecs_without_coordinate_tokens():
    with pytest.raises(ValueError, match="needs coordinate tokens; the 'embedding' codec has none"):
        build_model(dataclasses.replace(get_preset("tiny"), location_codec="embedding", coordinate_init="sincos"))


def test_sincos_coordinate_init_lays_the_code_on_the_tokens_codecs_location_tokens():
    from groundlm.modeling.positions import coordinate_code

    model, processor = build_model(
        dataclasses.replace(get_preset("tiny"), location_codec="tokens", coordinate_init="sincos")
    )
    ids = processor.tokenizer.convert_tokens_to_ids(processor.codec.coordinate_tokens())  # <loc_0>..<loc_99>
    for table in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        rows = table[ids].detach()  # [bins, D]
        code = coordinate_code(len(ids) - 1, rows.shape[1])  # [bins, D]
        scale = float((rows * code).sum() / (code * code).sum())
        assert scale > 0
        torch.testing.assert_close(rows, code * scale, rtol=1e-5, atol=1e-6)


def test_no_module_outside_the_location_package_asks_which_codec_it_has():
    import re
    from pathlib import Path

    import groundlm

    root = Path(groundlm.__file__).parent
    asks = re.compile(r"isinstance\([^)]*Codec|embeds_locations")
    offenders = [
        str(path.relative_to(root)) for path in root.rglob("*.py")
        if path.relative_to(root).parts[0] != "location" and asks.search(path.read_text())
    ]
    assert offenders == []

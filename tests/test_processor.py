"""The processor: image expansion, location rendering, label masks from the template, padding, parsing."""

import pytest
import torch
from PIL import Image

from groundlm.geometry import Frame
from groundlm.presets import get_preset
from groundlm.processor import IGNORE_INDEX, GroundLMProcessor
from groundlm.train.build import scratch_processor

N_IMG = 16


@pytest.fixture(scope="module")
def proc() -> GroundLMProcessor:
    return scratch_processor(get_preset("tiny"))


def _messages():
    return [
        {"role": "user", "content": "[refer] give me the location of the red circle"},
        {"role": "assistant", "content": "<box:0>"},
        {"role": "user", "content": "[identify] what is <box:1>"},
        {"role": "assistant", "content": "a blue square"},
    ]


def test_labels_are_exactly_the_answers_and_end_tokens(proc):
    frame = Frame(200, 100, "resize")
    enc = proc.encode(_messages(), boxes=[[20, 10, 60, 50], [0, 0, 200, 100]], frame=frame)
    tok = proc.tokenizer
    assert len(enc.input_ids) == len(enc.labels)
    assert enc.input_ids.count(proc.image_token_id) == N_IMG
    targets = [t for t in enc.labels if t != IGNORE_INDEX]
    # answer 1: the box in the text codec (20/200*100 = 10, 10/100*100 = 10, ...) + </s>; answer 2: words + </s>
    assert tok.convert_ids_to_tokens(targets) == [
        "{", "<10>", "<10>", "<30>", "<50>", "}", "</s>", "a", "blue", "square", "</s>",
    ]
    # the user turn's box is rendered as input, not supervised
    prompt = tok.convert_ids_to_tokens([t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab == IGNORE_INDEX])
    user_box = ["{", "<0>", "<0>", "<100>", "<100>", "}"]
    assert any(prompt[i : i + 6] == user_box for i in range(len(prompt)))


def test_pad_frame_changes_the_rendered_box(proc):
    msgs = [{"role": "user", "content": "[refer] the cup"}, {"role": "assistant", "content": "<box:0>"}]
    box = [[0, 0, 100, 50]]
    resized = proc.encode(msgs, boxes=box, frame=Frame(100, 50, "resize"))
    padded = proc.encode(msgs, boxes=box, frame=Frame(100, 50, "pad"))
    tok = proc.tokenizer
    pick = lambda e: tok.convert_ids_to_tokens([t for t in e.labels if t != IGNORE_INDEX])[1:5]  # noqa: E731
    assert pick(resized) == ["<0>", "<0>", "<100>", "<100>"]
    assert pick(padded) == ["<0>", "<25>", "<100>", "<75>"]


def test_a_conversation_without_answers_is_an_error_not_a_silent_zero(proc):
    with pytest.raises(ValueError):
        proc.encode([{"role": "user", "content": "hello"}], frame=None)
    with pytest.raises(ValueError, match=r"messages\[1\].content: empty assistant answer"):
        proc.encode([{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}], image=False)


def test_image_placeholder_in_user_text_is_refused(proc):
    with pytest.raises(ValueError, match=r"messages\[0\].content"):
        proc.encode([{"role": "user", "content": "look <image>"}], add_generation_prompt=True)


def test_boxes_without_a_frame_are_an_error(proc):
    with pytest.raises(ValueError, match="no image frame"):
        proc.encode([{"role": "user", "content": "[identify] <box:0>"}], boxes=[[1, 2, 3, 4]],
                    add_generation_prompt=True)


def test_left_padding_for_generation_and_right_padding_for_training(proc):
    img = Image.new("RGB", (30, 20), (255, 0, 0))
    a = proc.prompt(img, [{"role": "user", "content": "[vqa] what colour is the circle"}])
    b = proc.prompt(img, [{"role": "user", "content": "[caption]"}])
    left = proc.pad([a, b], side="left")
    assert left["pixel_values"].shape == (2, 3, 64, 64)
    assert left["attention_mask"][1, 0] == 0 and left["attention_mask"][1, -1] == 1
    assert left["input_ids"][1, -1] == left["input_ids"][0, -1]  # both end with the assistant marker
    right = proc.pad([a, b], side="right")
    assert right["attention_mask"][1, 0] == 1 and right["attention_mask"][1, -1] == 0
    assert torch.equal(right["input_ids"][0], left["input_ids"][0])


def test_decode_and_parse_map_boxes_back_to_pixels(proc):
    ids = proc.tokenizer("<p>red circle</p> {<10><20><30><40>}</s> trailing", add_special_tokens=False)["input_ids"]
    text = proc.decode(ids)
    objects = proc.parse(text, Frame(200, 100, "resize"))
    assert [o.phrase for o in objects] == ["red circle"]
    assert objects[0].box == pytest.approx((20, 20, 60, 40))
    assert proc.parse("no boxes here", Frame(10, 10, "resize")) == []


def test_save_and_load(proc, tmp_path):
    proc.save_pretrained(tmp_path)
    again = GroundLMProcessor.from_pretrained(tmp_path)
    msgs = _messages()[:2]
    frame = Frame(50, 50, "resize")
    assert again.encode(msgs, boxes=[[1, 2, 30, 40]], frame=frame).input_ids == \
        proc.encode(msgs, boxes=[[1, 2, 30, 40]], frame=frame).input_ids
    with pytest.raises(FileNotFoundError, match="groundlm model directory"):
        GroundLMProcessor.from_pretrained(tmp_path / "nowhere")

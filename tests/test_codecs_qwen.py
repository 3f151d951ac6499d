"""The Qwen-VL, Qwen2-VL and InternVL location codecs: published examples, round trips, literal renders,
garbage and adversarial input, stripping."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from groundlm.location.internvl import InternVLLocationCodec
from groundlm.location.objects import point_of
from groundlm.location.qwen2_5_vl import Qwen25VLLocationCodec
from groundlm.location.qwen2_vl import Qwen2VLLocationCodec
from groundlm.location.qwen_vl import QwenVLLocationCodec
from tests.box_strategies import boxes
from tests.linear_time import assert_linear

CODECS = [QwenVLLocationCodec(), Qwen2VLLocationCodec(), InternVLLocationCodec()]
IDS = ["qwen_vl", "qwen2_vl", "internvl"]
# the codecs whose output is tags around the words (Qwen2.5-VL's answer is JSON alone)
TAGGED = list(CODECS)
QWEN25 = Qwen25VLLocationCodec(size=448)
CODECS.append(QWEN25)
IDS.append("qwen2_5_vl")
EPS = 1e-12



def q999(*q):
    return tuple(v / 999 for v in q)


def q1000(*q):
    return tuple(v / 1000 for v in q)


def found(objs):
    return [(o.phrase, o.box_norm) for o in objs]


def close(got, want):
    return len(got) == len(want) and all(
        g[0] == w[0] and all(abs(a - b) <= EPS for a, b in zip(g[1], w[1], strict=True))
        for g, w in zip(got, want, strict=True)
    )


# ---- published examples -----------------------------------------------------------------------------------


def test_qwen_vl_published_examples_parse_to_their_boxes():
    codec = QwenVLLocationCodec()
    assert close(found(codec.parse("<ref>cat</ref><box>(302,257),(582,671)</box>")),
                 [("cat", q999(302, 257, 582, 671))])
    assert close(found(codec.parse("<ref>击掌</ref><box>(536,509),(588,602)</box>")),
                 [("击掌", q999(536, 509, 588, 602))])
    two = "<ref> Two apples</ref><box>(302,257),(582,671)</box><box>(603,252),(878,642)</box>"
    assert close(found(codec.parse(two)),
                 [("Two apples", q999(302, 257, 582, 671)), ("Two apples", q999(603, 252, 878, 642))])


def test_qwen_vl_reads_an_answer_to_its_eval_prompt_which_ends_at_box():
    # evaluate_grounding.py prompts '<img>..</img><ref>{}</ref><box>', so the answer starts at the corners
    codec = QwenVLLocationCodec()
    assert close(found(codec.parse("(302,257),(582,671)</box>")), [(None, q999(302, 257, 582, 671))])
    # plain text with neither tag is not a box
    assert codec.parse("see (1,2),(3,4) there") == []


def test_qwen2_vl_published_example_parses_to_its_box():
    codec = Qwen2VLLocationCodec()
    text = "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(302,257),(582,671)<|box_end|>"
    assert close(found(codec.parse(text)), [("cat", q999(302, 257, 582, 671))])
    # Qwen-VL's tags mean nothing to Qwen2-VL
    assert Qwen2VLLocationCodec().parse("<ref>cat</ref><box>(302,257),(582,671)</box>") == []


def test_internvl_published_examples_parse_to_their_boxes():
    codec = InternVLLocationCodec()
    assert close(found(codec.parse("<ref>cat</ref><box>[[302, 257, 582, 671]]</box>")),
                 [("cat", q1000(302, 257, 582, 671))])
    # several boxes in one <box>, as the demo's list parser reads them
    many = "<ref>leopards</ref><box>[[302, 257, 582, 671], [603, 252, 878, 642]]</box>"
    assert close(found(codec.parse(many)),
                 [("leopards", q1000(302, 257, 582, 671)), ("leopards", q1000(603, 252, 878, 642))])
    # the eval prompt ends at </ref>; its regex (and VLMEvalKit's) read a bare [[..]]
    assert close(found(codec.parse("[[302, 257, 582, 671]]")), [(None, q1000(302, 257, 582, 671))])


# ---- quantisation -----------------------------------------------------------------------------------------


def test_qwen_quantises_by_999_rounding_half_up():
    codec = QwenVLLocationCodec()
    assert codec.quantize((0.0, 0.5, 0.9999, 1.0)) == (0, 500, 999, 999)
    assert codec.dequantize((0, 999, 302, 1)) == (0.0, 1.0, 302 / 999, 1 / 999)
    assert codec.frame == "resize" and Qwen2VLLocationCodec().frame == "resize"


def test_internvl_quantises_by_1000_rounding_half_up():
    codec = InternVLLocationCodec()
    assert codec.quantize((0.0, 0.0005, 0.9999, 1.0)) == (0, 1, 1000, 1000)
    assert codec.dequantize((0, 1000, 302, 1)) == (0.0, 1.0, 0.302, 0.001)
    assert codec.frame == "resize"


def test_out_of_range_numbers_drop_the_box_and_swapped_corners_are_ordered():
    qwen = QwenVLLocationCodec()
    assert qwen.parse("<box>(1000,0),(5,5)</box>") == []
    assert close(found(qwen.parse("<box>(582,671),(302,257)</box>")), [(None, q999(302, 257, 582, 671))])
    ivl = InternVLLocationCodec()
    assert close(found(ivl.parse("<box>[[1001, 0, 5, 5], [582, 671, 302, 257], [1, 2, 3]]</box>")),
                 [(None, q1000(302, 257, 582, 671))])


# ---- render -----------------------------------------------------------------------------------------------

RECORD = "<p>the cat</p><box:0> and <p>two dogs</p><box:1><box:2>"
RECORD_BOXES = [(0.1, 0.2, 0.3, 0.4), (0.0, 0.0, 1.0, 1.0), (0.5, 0.25, 0.6, 0.75)]


def test_render_record_qwen_vl_literally():
    assert QwenVLLocationCodec().render(RECORD, RECORD_BOXES) == (
        "<ref>the cat</ref><box>(100,200),(300,400)</box> and "
        "<ref>two dogs</ref><box>(0,0),(999,999)</box><box>(500,250),(599,749)</box>"
    )


def test_render_record_qwen2_vl_literally():
    assert Qwen2VLLocationCodec().render(RECORD, RECORD_BOXES) == (
        "<|object_ref_start|>the cat<|object_ref_end|><|box_start|>(100,200),(300,400)<|box_end|> and "
        "<|object_ref_start|>two dogs<|object_ref_end|><|box_start|>(0,0),(999,999)<|box_end|>"
        "<|box_start|>(500,250),(599,749)<|box_end|>"
    )


def test_render_record_internvl_literally():
    assert InternVLLocationCodec().render(RECORD, RECORD_BOXES) == (
        "<ref>the cat</ref><box>[[100, 200, 300, 400]]</box> and "
        "<ref>two dogs</ref><box>[[0, 0, 1000, 1000], [500, 250, 600, 750]]</box>"
    )


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
def test_render_bare_slots_and_missing_box(codec):
    bare = codec.render("here <box:0>.", [(0.1, 0.2, 0.3, 0.4)])
    assert [o.phrase for o in codec.parse(bare)] == [None]
    with pytest.raises(ValueError):
        codec.render("<box:1>", [(0.1, 0.2, 0.3, 0.4)])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["the cat", "two dogs", "a red car", None]),
                          st.lists(boxes(), min_size=1, max_size=3)), min_size=1, max_size=4))
def test_round_trip_within_half_a_bin(groups):
    all_boxes, parts, want = [], [], []
    for phrase, group in groups:
        slots = "".join(f"<box:{len(all_boxes) + k}>" for k in range(len(group)))
        all_boxes += group
        parts.append(f"<p>{phrase}</p>{slots}" if phrase else slots)
        want += [(phrase, b) for b in group]
    # words between groups, so a bare run is not taken as the previous phrase's
    content = " and ".join(parts)
    for codec in CODECS:
        text = codec.render(content, all_boxes)
        objs = codec.parse(text)
        assert [o.phrase for o in objs] == [p for p, _ in want]
        half = 0.5 / (codec.size if codec is QWEN25 else codec.bins) + EPS
        assert all(abs(a - b) <= half for o, (_, b) in zip(objs, want, strict=True)
                   for a, b in zip(o.box_norm, b, strict=True))
        # a parsed box is a fixed point of rendering; one that quantised to zero area is written as the point
        # it is (objects.point_of), and reads back at the same place
        again = codec.render(content, [o.box_norm for o in objs])
        if not any(point_of(o.box_norm) for o in objs):
            assert again == text
        assert [(o.phrase, o.box_norm) for o in codec.parse(again)] == [(o.phrase, o.box_norm) for o in objs]


# ---- robustness -------------------------------------------------------------------------------------------


PIECES = [*"<>/()[], 0123456789x", "<ref>", "</ref>", "<box>", "</box>", "<|object_ref_start|>",
          "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "999999999999"]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.lists(st.sampled_from(PIECES), max_size=60).map("".join)))
def test_parse_and_strip_never_raise_on_garbage(text):
    for codec in CODECS:
        assert isinstance(codec.parse(text), list)
        assert isinstance(codec.strip(text), str)


def test_parse_of_non_strings_gives_nothing():
    for codec in CODECS:
        assert codec.parse(None) == [] and codec.strip(None) == ""


ADVERSARIAL = [
    '"bbox_2d": [' * 80_000,
    '{"label": "' + "x" * 1_000_000,
    '{"label": "\\' * 80_000,
    '"bbox_2d": [1, 2, 3, ' * 50_000,
    "{" * 1_000_000,
    "{ }" * 330_000,
    '{a}"label": null' * 60_000,
    "<ref>" * 200_000,
    "<box>" * 200_000,
    "<|box_start|>(" * 80_000,
    "(1," * 350_000,
    "(1,2),(" * 150_000,
    "[[1, 2, " * 130_000,
    "[[" * 500_000,
    "[[1]," * 200_000,
    "9" * 1_000_000,
    "<ref>" + "a" * 1_000_000,
    "<|object_ref_start|>" + " " * 1_000_000,
    "(" + " " * 1_000_000,
    "[[" + "1, " * 330_000,
]


@pytest.mark.parametrize("codec", CODECS, ids=IDS)
@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_megabyte_parses_and_strips_in_linear_time(codec, text):
    assert_linear(codec.parse, text, label="parse")
    assert_linear(codec.strip, text, label="strip")


# ---- strip and tokens -------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", TAGGED, ids=IDS[:3])
def test_strip_removes_the_markup(codec):
    text = codec.render(RECORD + " here <box:0>.", RECORD_BOXES)
    assert codec.strip(text) == "the cat and two dogs here."


def test_tokens():
    tags = ["<ref>", "</ref>", "<box>", "</box>"]
    numbers = [str(i) for i in range(1000)]
    # a pretrained tokenizer gains the tags; a word-level one also needs the punctuation and the numbers
    assert QwenVLLocationCodec().added_tokens() == tags
    assert QwenVLLocationCodec().special_tokens() == [*tags, "(", ")", ",", *numbers]
    assert InternVLLocationCodec().added_tokens() == tags
    assert InternVLLocationCodec().special_tokens() == [*tags, "[", "]", ",", *numbers, "1000"]
    q2 = ["<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>"]
    assert Qwen2VLLocationCodec().added_tokens() == q2
    assert Qwen2VLLocationCodec().special_tokens() == [*q2, "(", ")", ",", *numbers]
    assert QWEN25.added_tokens() == []
    assert QWEN25.special_tokens()[:13] == ["`", "json", "[", "]", "{", "}", ":", ",", '"', "bbox_2d", "point_2d",
                                            "label", "null"]
    assert QWEN25.special_tokens()[13:] == [str(i) for i in range(QWEN25.size + 1)]
    assert all(c.coordinate_tokens() is None and c.has_heads is False for c in CODECS)


# ---- Qwen2.5-VL -------------------------------------------------------------------------------------------


def test_qwen2_5_vl_published_example_parses_to_its_boxes():
    text = '```json\n[{"bbox_2d": [139, 768, 315, 954], "label": "small cake"}]\n```'
    assert close(found(Qwen25VLLocationCodec(size=1000).parse(text)), [("small cake", q1000(139, 768, 315, 954))])
    assert close(found(Qwen25VLLocationCodec(size=980).parse(text)),
                 [("small cake", tuple(v / 980 for v in (139, 768, 315, 954)))])


def test_render_record_qwen2_5_vl_literally():
    codec = Qwen25VLLocationCodec(size=1000)
    assert codec.render(RECORD, RECORD_BOXES) == (
        '```json\n[{"bbox_2d": [100, 200, 300, 400], "label": "the cat"}, '
        '{"bbox_2d": [0, 0, 1000, 1000], "label": "two dogs"}, '
        '{"bbox_2d": [500, 250, 600, 750], "label": "two dogs"}]\n```'
    )
    assert Qwen25VLLocationCodec(size=1000, fence=False).render("<box:0>", RECORD_BOXES) == (
        '[{"bbox_2d": [100, 200, 300, 400], "label": null}]'
    )
    # a prompt keeps its words and writes the box inline
    assert codec.render("what is <p>this</p> <box:0>?", RECORD_BOXES, output=False) == (
        "what is this [100, 200, 300, 400]?"
    )


def test_qwen2_5_vl_reads_broken_and_reordered_json():
    codec = Qwen25VLLocationCodec(size=100)
    text = (
        'Sure: [{"label": "a \\"big\\" dog", "bbox_2d": [50, 60, 10, 20]}, {"bbox_2d": [1, 2, 3, 4], "label": ""},'
        ' {"bbox_2d": [1, 2, 300, 4], "label": "too far"}, {"bbox_2d": [-1, 2, 3, 4]}, {"bbox_2d": [5, 6, 7, 8], "lab'
    )
    assert close(found(codec.parse(text)), [('a "big" dog', (0.1, 0.2, 0.5, 0.6)), (None, (0.01, 0.02, 0.03, 0.04)),
                                            (None, (0.05, 0.06, 0.07, 0.08))])
    strip = codec.strip
    assert strip(text) == 'a "big" dog'
    assert strip("```json\nno objects\n```") == "no objects"


def test_qwen2_5_vl_quantises_pixels_of_the_input():
    codec = Qwen25VLLocationCodec(size=448)
    assert codec.quantize((0.0, 0.5, 0.9999, 1.0)) == (0, 224, 448, 448)
    assert codec.dequantize((0, 224, 448, 112)) == (0.0, 0.5, 1.0, 0.25)
    assert codec.frame == "resize"
    with pytest.raises(TypeError):
        Qwen25VLLocationCodec()  # the input side is required
    with pytest.raises(ValueError):
        Qwen25VLLocationCodec(size=0)

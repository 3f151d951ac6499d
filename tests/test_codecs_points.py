"""Points: Qwen2.5-VL's `point_2d` JSON and cookbook XML `<points>`, Shikra's and Ferret's `[x, y]`; a point object
keeps its point through to_dict; a degenerate record box renders as a point; parsing never raises and stays
linear on 1 MB of adversarial text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from groundlm.geometry import Frame
from groundlm.location import (
    CogVLMLocationCodec,
    FerretLocationCodec,
    GroundedObject,
    LlavaLocationCodec,
    Qwen25VLLocationCodec,
    ShikraLocationCodec,
)
from groundlm.location.objects import point_of

from .box_strategies import unit
from .linear_time import assert_linear

QWEN25 = Qwen25VLLocationCodec(size=1000)
FERRET = FerretLocationCodec()
SHIKRA = ShikraLocationCodec()
POINT_CODECS = {"qwen2_5_vl": QWEN25, "ferret": FERRET, "shikra": SHIKRA}


def found(objects):
    return [(o.phrase, o.point_norm) for o in objects]


# ---- the objects --------------------------------------------------------------------------------------------


def test_a_point_object_is_a_degenerate_box_that_stays_a_point_through_to_dict():
    obj = GroundedObject.at("the cat", 0.25, 0.5)
    assert obj.is_point and obj.box_norm == (0.25, 0.5, 0.25, 0.5) and obj.point_norm == (0.25, 0.5)
    assert obj.point is None and obj.to_dict()["point"] is None
    obj.box = tuple(Frame(200, 100, "resize").denormalize(obj.box_norm))  # what the processor does
    assert obj.point == (50.0, 50.0)
    d = obj.to_dict()
    assert d["point_norm"] == [0.25, 0.5] and d["point"] == [50.0, 50.0] and d["box"] == [50.0, 50.0, 50.0, 50.0]
    box = GroundedObject("dog", (0.1, 0.2, 0.3, 0.4))
    assert not box.is_point and box.to_dict()["point_norm"] is None and box.to_dict()["point"] is None


def test_point_of_is_exactly_the_degenerate_boxes():
    assert point_of((0.3, 0.4, 0.3, 0.4)) == (0.3, 0.4)
    assert point_of((0.3, 0.4, 0.3, 0.41)) is None and point_of((0.3, 0.4, 0.31, 0.4)) is None


# ---- Qwen2.5-VL ---------------------------------------------------------------------------------------------


def test_qwen25_reads_point_2d_json_in_pixels_of_its_input():
    text = '```json\n[{"point_2d": [139, 768], "label": "small cake"}, {"point_2d": [500, 250], "label": null}]\n```'
    assert found(QWEN25.parse(text)) == [("small cake", (0.139, 0.768)), (None, (0.5, 0.25))]
    # label first, the same frame as bbox_2d (size 980: pixels of that input)
    (obj,) = Qwen25VLLocationCodec(size=980).parse('{"label": "cup", "point_2d": [490, 245]}')
    assert found([obj]) == [("cup", (0.5, 0.25))]


def test_qwen25_reads_the_cookbooks_xml_points():
    text = 'Sure. <points x1="100" y1="200" x2="300.5" y2="400" alt="two birds">birds</points> and <points x="1" y="2" alt="a cup"></points>'
    assert found(QWEN25.parse(text)) == [("birds", (0.1, 0.2)), ("birds", (0.3005, 0.4)), ("a cup", (0.001, 0.002))]


def test_qwen25_mixes_boxes_and_points_in_order_and_drops_out_of_range_points():
    text = '[{"bbox_2d": [0, 0, 500, 500], "label": "a"}, {"point_2d": [1001, 3], "label": "b"}, {"point_2d": [7, 8], "label": "c"}]'
    objs = QWEN25.parse(text)
    assert [(o.phrase, o.is_point) for o in objs] == [("a", False), ("c", True)]


def test_qwen25_renders_a_degenerate_slot_as_point_2d_and_a_prompt_point_inline():
    boxes = [(0.5, 0.25, 0.5, 0.25), (0.0, 0.0, 1.0, 0.5)]
    text = QWEN25.render("<p>the cat</p><box:0> and <p>a dog</p><box:1>", boxes)
    assert text == ('```json\n[{"point_2d": [500, 250], "label": "the cat"}, '
                    '{"bbox_2d": [0, 0, 1000, 500], "label": "a dog"}]\n```')
    assert found(QWEN25.parse(text)) == [("the cat", (0.5, 0.25)), ("a dog", None)]
    assert QWEN25.render("what is at <box:0>?", boxes, output=False) == "what is at [500, 250]?"
    assert QWEN25.strip(text) == "the cat, a dog"


# ---- Ferret and Shikra --------------------------------------------------------------------------------------


def test_ferret_reads_and_writes_points_on_its_0_999_grid():
    assert found(FERRET.parse("What is the object at [302, 257]?")) == [("What is the object at", (0.302, 0.257))]
    text = FERRET.render("<p>the cat</p><box:0> and <p>dogs</p><box:1><box:2>",
                         [(0.5, 0.25, 0.5, 0.25), (0.0, 0.0, 1.0, 0.5), (0.1, 0.1, 0.1, 0.1)])
    assert text == "the cat [500, 250] and dogs [0, 0, 999, 500], [100, 100]"
    objs = FERRET.parse(text)
    assert [(o.phrase, o.is_point) for o in objs] == [("the cat", True), ("and dogs", False), ("and dogs", True)]
    assert FERRET.strip(text) == "the cat and dogs"
    assert FERRET.parse("[1000, 3] and [999, 999]")[0].point_norm == (0.999, 0.999)  # 1000 is off the grid


def test_shikra_points_get_their_own_bracket_in_a_run():
    text = SHIKRA.render("<p>dogs</p><box:0><box:1>", [(0.0, 0.0, 1.0, 0.5), (0.1, 0.2, 0.1, 0.2)])
    assert text == "dogs [0.000,0.000,1.000,0.500], [0.100,0.200]"
    assert [(o.phrase, o.point_norm) for o in SHIKRA.parse(text)] == [("dogs", None), ("dogs", (0.1, 0.2))]
    assert found(SHIKRA.parse("[0.5,0.25]")) == [(None, (0.5, 0.25))]


def test_codecs_without_a_published_point_form_read_two_numbers_as_text_and_write_the_box():
    for codec in (LlavaLocationCodec(), CogVLMLocationCodec()):
        assert codec.parse("[0.5, 0.25] [[500,250]]") == []
        (obj,) = codec.parse(codec.render("<box:0>", [(0.5, 0.25, 0.5, 0.25)]))
        assert obj.box_norm == pytest.approx((0.5, 0.25, 0.5, 0.25)) and not obj.is_point


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(unit, unit), min_size=1, max_size=4))
def test_points_round_trip_within_half_a_step(points):
    # sentences between the points: the bracket formats take the words since the last boundary as the phrase
    content = ". ".join(f"<p>thing {k}</p><box:{k}>" for k in range(len(points)))
    boxes = [(x, y, x, y) for x, y in points]
    for codec, step in ((QWEN25, 1 / 1000), (FERRET, 1 / 1000), (SHIKRA, 1 / 1000)):
        objs = codec.parse(codec.render(content, boxes))
        assert [o.phrase for o in objs] == [f"thing {k}" for k in range(len(points))] and all(o.is_point for o in objs)
        # Ferret truncates (a whole step), the others round (half a step)
        tol = step if codec is FERRET else step / 2
        assert all(abs(a - b) <= tol + 1e-9 for o, p in zip(objs, points, strict=True)
                   for a, b in zip(o.point_norm, p, strict=True))


# ---- robustness ---------------------------------------------------------------------------------------------

ADVERSARIAL = [
    "[1, 2], [" * 100_000,
    "[1,2" * 250_000,
    "[0.5,0.5],[" * 90_909,
    "[0.5, 0." + "5" * 999_990,
    '{"point_2d": [1, 2], "label": "a"}' * 29_411,
    '"point_2d": [' * 76_923,
    '<points x1="1" y1="2"' * 50_000,
    "<points" + ' x="1" y="2"' * 83_333,
    "<points" + ' x="1" y="2"' * 83_000 + ">" + "a" * 1000,
    '<points x="1" y="2">' * 50_000,
]


@pytest.mark.parametrize("name", sorted(POINT_CODECS))
@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_point_megabyte_parses_and_strips_in_linear_time(name, text):
    codec = POINT_CODECS[name]
    assert_linear(codec.parse, text, label=f"{name} parse")
    assert_linear(codec.strip, text, label=f"{name} strip")


PIECES = ["[", "]", ", ", ",", "0", "5", "999", "0.5", "{", "}", '"point_2d": ', '"label": ', '"x"', "<points",
          ' x1="3"', ' y1="4"', ">", "</points>", "alt=", "1e5", "-1", "\n"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=40))
def test_parse_never_raises_on_point_fragments(pieces):
    text = "".join(pieces)
    for codec in POINT_CODECS.values():
        for obj in codec.parse(text):
            assert all(0.0 <= v <= 1.0 for v in obj.box_norm)
        assert isinstance(codec.strip(text), str)

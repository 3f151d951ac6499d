"""The published-format codecs `kosmos2`, `florence2` and `paligemma`: published examples, hand-written renders,
round trips, garbage and adversarial input, strip."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from groundlm.location.florence2 import Florence2LocationCodec
from groundlm.location.kosmos2 import Kosmos2LocationCodec
from groundlm.location.paligemma import PaliGemmaLocationCodec
from tests.box_strategies import boxes
from tests.linear_time import assert_linear

RECORD = "<p>the cat</p><box:0> and <p>two dogs</p><box:1><box:2>"
RECORD_BOXES = [(0.0, 0.0, 0.5, 0.5), (0.1, 0.2, 0.3, 0.4), (0.5, 0.5, 1.0, 1.0)]
CODECS = [Kosmos2LocationCodec(), Florence2LocationCodec(), PaliGemmaLocationCodec()]
# the largest round-trip error of each codec: one cell, half a bin, half a step
TOLERANCE = {"Kosmos2LocationCodec": 1 / 32, "Florence2LocationCodec": 0.5 / 1000, "PaliGemmaLocationCodec": 0.5 / 1023}


# phrases of plain words (the formats cannot hold `<`, `;` or line breaks inside a phrase)
words = st.lists(st.sampled_from(["cat", "red", "dog", "the", "big"]), min_size=1, max_size=3).map(" ".join)


@st.composite
def records(draw):
    """Record content of 1-3 phrases with 1-3 boxes each, phrase groups adjacent, and the boxes."""
    phrases = draw(st.lists(words, min_size=1, max_size=3))
    content, box_list, expected = "", [], []
    for phrase in phrases:
        content += f"<p>{phrase}</p>"
        for _ in range(draw(st.integers(1, 3))):
            box = draw(boxes())
            content += f"<box:{len(box_list)}>"
            box_list.append(box)
            expected.append((phrase, box))
    return content, box_list, expected


def close(a, b, tol):
    return all(abs(x - y) <= tol + 1e-9 for x, y in zip(a, b, strict=True))


# ---- published examples ---------------------------------------------------------------------------------


def test_kosmos2_docstring_example_parses_to_the_published_boxes_exactly():
    text = (
        "<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object>"
        " warming himself by<phrase> a fire</phrase><object><patch_index_0005><patch_index_0911></object>."
    )
    objs = Kosmos2LocationCodec().parse(text)
    assert [(o.phrase, o.box_norm) for o in objs] == [
        ("a snowman", (0.390625, 0.046875, 0.984375, 0.828125)),
        ("a fire", (0.171875, 0.015625, 0.484375, 0.890625)),
    ]


def test_kosmos2_published_snippet_and_quantisation():
    codec = Kosmos2LocationCodec()
    (obj,) = codec.parse("<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object>")
    assert obj.phrase == "a snowman"
    # encoding the decoded centres lands back on the published cells
    assert codec.quantize(obj.box_norm) == (44, 863)
    # same row: cell edges, not centres
    assert codec.dequantize(32 + 2, 32 + 5) == (2 / 32, 1 / 32, 6 / 32, 2 / 32)


def test_florence2_od_example_parses():
    objs = Florence2LocationCodec().parse("car<loc_52><loc_335><loc_998><loc_806>wheel<loc_708><loc_576><loc_865><loc_806>")
    assert [o.phrase for o in objs] == ["car", "wheel"]
    assert objs[0].box_norm == pytest.approx((0.0525, 0.3355, 0.9985, 0.8065), abs=1e-12)
    assert objs[1].box_norm == pytest.approx((0.7085, 0.5765, 0.8655, 0.8065), abs=1e-12)


def test_florence2_quantises_like_its_processor():
    codec = Florence2LocationCodec()
    assert codec.render("<box:0>", [(0.0, 0.0005, 0.9999, 1.0)]) == "<loc_0><loc_0><loc_999><loc_999>"


def test_paligemma_example_parses_y_first_over_1023():
    text = "<loc0256><loc0100><loc0768><loc0900> cat ; <loc0000><loc0010><loc1023><loc0500> dog"
    objs = PaliGemmaLocationCodec().parse(text)
    assert [o.phrase for o in objs] == ["cat", "dog"]
    assert objs[0].box_norm == pytest.approx((100 / 1023, 256 / 1023, 900 / 1023, 768 / 1023), abs=1e-12)
    assert objs[1].box_norm == pytest.approx((10 / 1023, 0.0, 500 / 1023, 1.0), abs=1e-12)


def test_paligemma_rounds_half_to_even_like_tf_round():
    # 0.5 * 1023 = 511.5 -> 512 (even); 1.5 / 1023 * 1023 = 1.5 -> 2; values outside [0, 1] are clipped
    assert PaliGemmaLocationCodec().quantize((0.5, 1.5 / 1023, 1.2, 0.5)) == (2, 512, 512, 1023)


# ---- the record render, written by hand -----------------------------------------------------------------


def test_kosmos2_renders_the_record_literally():
    assert Kosmos2LocationCodec().render(RECORD, RECORD_BOXES) == (
        "<phrase> the cat</phrase><object><patch_index_0000><patch_index_0495></object>"
        " and<phrase> two dogs</phrase><object><patch_index_0195><patch_index_0393>"
        "</delimiter_of_multi_objects/><patch_index_0528><patch_index_1023></object>"
    )


def test_florence2_renders_the_record_literally():
    assert Florence2LocationCodec().render(RECORD, RECORD_BOXES) == (
        "the cat<loc_0><loc_0><loc_500><loc_500> and two dogs"
        "<loc_100><loc_200><loc_300><loc_400><loc_500><loc_500><loc_999><loc_999>"
    )


def test_paligemma_renders_the_record_literally():
    assert PaliGemmaLocationCodec().render(RECORD, RECORD_BOXES) == (
        "<loc0000><loc0000><loc0512><loc0512> the cat and <loc0205><loc0102><loc0409><loc0307> two dogs"
        " ; <loc0512><loc0512><loc1023><loc1023> two dogs"
    )


def test_bare_slots_and_phrases_without_slots():
    box = [(0.0, 0.0, 1.0, 1.0)]
    assert Kosmos2LocationCodec().render("<p>x</p> at <box:0>", box) == (
        "x at <object><patch_index_0000><patch_index_1023></object>"
    )
    assert Florence2LocationCodec().render("<box:0>", box) == "<loc_0><loc_0><loc_999><loc_999>"
    assert PaliGemmaLocationCodec().render("<box:0><box:0>", box) == (
        "<loc0000><loc0000><loc1023><loc1023> ; <loc0000><loc0000><loc1023><loc1023>"
    )


# ---- round trips ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: type(c).__name__)
@settings(max_examples=150, deadline=None)
@given(record=records())
def test_round_trip_within_one_bin_with_several_boxes_and_phrases(codec, record):
    content, box_list, expected = record
    objs = codec.parse(codec.render(content, box_list))
    assert [o.phrase for o in objs] == [p for p, _ in expected]
    tol = TOLERANCE[type(codec).__name__]
    for obj, (_, box) in zip(objs, expected, strict=True):
        assert close(obj.box_norm, box, tol), (obj.box_norm, box)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: type(c).__name__)
def test_parse_tolerates_spaces_between_tokens(codec):
    text = codec.render(RECORD, RECORD_BOXES).replace("><", "> <")
    assert len(codec.parse(text)) == 3


def test_kosmos2_keeps_complete_pairs_of_an_object_cut_short():
    codec = Kosmos2LocationCodec()
    objs = codec.parse("<phrase> a dog</phrase><object><patch_index_0000><patch_index_0033></delimiter_of_multi_objects/><patch_index_0001>")
    # cells (0, 0) and (1, 1): different row and column, so cell centres
    assert [(o.phrase, o.box_norm) for o in objs] == [("a dog", (0.5 / 32, 0.5 / 32, 1.5 / 32, 1.5 / 32))]


def test_out_of_range_values_are_dropped():
    assert Kosmos2LocationCodec().parse("<object><patch_index_0000><patch_index_1024></object>") == []
    assert Florence2LocationCodec().parse("x<loc_0><loc_0><loc_1000><loc_5>") == []
    assert PaliGemmaLocationCodec().parse("<loc0000><loc0000><loc9999><loc0005> x") == []


def test_swapped_corners_are_ordered():
    swapped = [(0.9, 0.8, 0.1, 0.2)]
    for codec in CODECS:
        assert codec.render("<box:0>", swapped) == codec.render("<box:0>", [(0.1, 0.2, 0.9, 0.8)])
    (obj,) = Florence2LocationCodec().parse("a<loc_900><loc_800><loc_100><loc_200>")
    assert obj.box_norm == pytest.approx((0.1005, 0.2005, 0.9005, 0.8005))
    (obj,) = PaliGemmaLocationCodec().parse("<loc1023><loc1023><loc0000><loc0000> a")
    assert obj.box_norm == (0.0, 0.0, 1.0, 1.0)


# ---- garbage and adversarial input ----------------------------------------------------------------------


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: type(c).__name__)
@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("<>/_; \n0123456789abcdeiloprsjtxyz")), max_size=200))
def test_parse_never_raises_on_garbage(codec, text):
    objs = codec.parse(text)
    assert isinstance(objs, list)
    assert all(0 <= v <= 1 for o in objs for v in o.box_norm)


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: type(c).__name__)
def test_parse_of_non_strings_gives_nothing(codec):
    assert codec.parse(None) == [] and codec.strip(None) == ""


ADVERSARIAL = [
    "<phrase>" * 130_000,
    "<phrase> a" * 110_000,
    "<object>" * 130_000,
    "<object><patch_index_0001>" * 40_000,
    "<patch_index_" + "9" * 1_000_000,
    "</delimiter_of_multi_objects/>" * 33_000,
    "<loc_" * 200_000,
    "<loc_" + "1" * 1_000_000,
    "a<loc_1>" * 125_000,
    "<loc" * 250_000,
    "<loc0001>" * 111_000,
    "<loc0001>" + "x" * 1_000_000,
    "<p>" * 330_000,
    "1" * 1_000_000,
]


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: type(c).__name__)
@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_megabyte_parses_and_strips_in_linear_time(codec, text):
    assert_linear(codec.parse, text, label="parse")
    assert_linear(codec.strip, text, label="strip")


# ---- strip and tokens -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("codec", "expected"),
    [
        (CODECS[0], "the cat and two dogs"),
        (CODECS[1], "the cat and two dogs"),
        (CODECS[2], "the cat and two dogs; two dogs"),
    ],
    ids=["kosmos2", "florence2", "paligemma"],
)
def test_strip_removes_the_markup(codec, expected):
    assert codec.strip(codec.render(RECORD, RECORD_BOXES)) == expected


def test_token_lists():
    kosmos, florence, pali = CODECS
    assert kosmos.coordinate_tokens() is None
    assert kosmos.added_tokens()[6:8] == ["<patch_index_0000>", "<patch_index_0001>"] and len(kosmos.added_tokens()) == 1030
    assert florence.coordinate_tokens()[:2] == ["<loc_0>", "<loc_1>"] and florence.coordinate_tokens()[-1] == "<loc_999>"
    assert florence.added_tokens() == florence.special_tokens() == florence.coordinate_tokens()
    assert pali.coordinate_tokens()[:2] == ["<loc0000>", "<loc0001>"] and len(pali.coordinate_tokens()) == 1024
    assert all(c.has_heads is False and c.frame == "resize" for c in CODECS)


def test_codecs_are_frozen_with_published_defaults():
    assert Kosmos2LocationCodec().num_patches_per_side == 32
    assert Florence2LocationCodec().bins == 1000
    with pytest.raises(ValueError):
        Kosmos2LocationCodec(num_patches_per_side=0)
    with pytest.raises(AttributeError):
        Florence2LocationCodec().bins = 5  # type: ignore[misc]

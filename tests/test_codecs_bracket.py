"""The bracket location codecs (Shikra, LLaVA-1.5, Ferret, CogVLM): published examples, round trips, safety."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from groundlm.location.brackets import (
    CogVLMLocationCodec,
    FerretLocationCodec,
    LlavaLocationCodec,
    ShikraLocationCodec,
)
from tests.box_strategies import boxes
from tests.linear_time import assert_linear

CODECS = {
    "shikra": ShikraLocationCodec(),
    "llava": LlavaLocationCodec(),
    "ferret": FerretLocationCodec(),
    "cogvlm": CogVLMLocationCodec(),
}
# one bin of each format: the largest error a render→parse round trip may make
BIN = {"shikra": 0.0005, "llava": 0.005, "ferret": 0.001, "cogvlm": 0.001}
EPS = 1e-12



def close(a, b, tol=EPS):
    return all(abs(x - y) <= tol for x, y in zip(a, b, strict=True))


# ---- published examples -----------------------------------------------------------------------------------


def test_shikra_published_examples():
    codec = CODECS["shikra"]
    (obj,) = codec.parse("Answer: [0.123,0.456,0.789,0.999] .")
    assert obj.phrase is None  # "Answer:" ends at a boundary: no words ground the box
    assert close(obj.box_norm, (0.123, 0.456, 0.789, 0.999))
    two = codec.parse("[0.1,0.2,0.3,0.4;0.5,0.6,0.7,0.8]")
    assert [o.box_norm for o in two] == [(0.1, 0.2, 0.3, 0.4), (0.5, 0.6, 0.7, 0.8)]


def test_llava_published_example():
    (obj,) = CODECS["llava"].parse("[0.39, 0.12, 0.59, 0.87]")
    assert obj.box_norm == (0.39, 0.12, 0.59, 0.87) and obj.phrase is None


def test_ferret_published_example():
    (obj,) = CODECS["ferret"].parse("[302, 257, 582, 671]")
    assert obj.box_norm == (0.302, 0.257, 0.582, 0.671)


def test_cogvlm_published_examples():
    codec = CODECS["cogvlm"]
    (obj,) = codec.parse("[[086,540,400,760]]")
    assert obj.box_norm == (0.086, 0.54, 0.4, 0.76)
    (agent,) = codec.parse("click the button at the box [[212,498,787,564]]")
    assert agent.box_norm == (0.212, 0.498, 0.787, 0.564)
    assert agent.phrase == "click the button at the box"
    two = codec.parse("[[086,540,400,760;212,498,787,564]]")
    assert [o.box_norm for o in two] == [(0.086, 0.54, 0.4, 0.76), (0.212, 0.498, 0.787, 0.564)]


def test_phrase_is_the_words_since_the_last_box_or_sentence_boundary():
    codec = CODECS["shikra"]
    box = "[0.100,0.200,0.300,0.400]"
    text = f"There is a cat. <p>The dog</p> {box} sits; a bird {box}, {box} flies: {box}"
    assert [o.phrase for o in codec.parse(text)] == ["The dog", "a bird", "a bird", None]


# ---- quantisation -----------------------------------------------------------------------------------------


def test_shikra_rounds_to_three_decimals_and_clamps():
    codec = CODECS["shikra"]
    assert codec.render("<box:0>", [(0.12345, 0.4566, -0.2, 1.3)]) == "[0.123,0.457,0.000,1.000]"


def test_ferret_and_cogvlm_truncate_and_clamp_to_999():
    assert CODECS["ferret"].quantize((0.0019, 0.5999, 0.999, 1.0)) == (1, 599, 999, 999)
    assert CODECS["cogvlm"].render("<box:0>", [(0.0019, 0.05, 0.29, 1.0)]) == "[[001,050,290,999]]"
    # exact grid values stay on their bin despite float rounding (q / 1000 * 1000 can land a hair below q)
    codec = CODECS["ferret"]
    assert all(codec.quantize((q / 1000,) * 4)[0] == q for q in range(1000))


# ---- render -----------------------------------------------------------------------------------------------

RECORD = "<p>the cat</p><box:0> and <p>two dogs</p><box:1><box:2>"
RECORD_BOXES = [(0.1, 0.2, 0.3, 0.4), (0.5, 0.5, 0.9, 0.95), (0.0, 0.0, 1.0, 1.0)]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("shikra", "the cat [0.100,0.200,0.300,0.400] and two dogs "
                   "[0.500,0.500,0.900,0.950;0.000,0.000,1.000,1.000]"),
        ("llava", "the cat [0.10, 0.20, 0.30, 0.40] and two dogs [0.50, 0.50, 0.90, 0.95;0.00, 0.00, 1.00, 1.00]"),
        ("ferret", "the cat [100, 200, 300, 400] and two dogs [500, 500, 900, 950], [0, 0, 999, 999]"),
        ("cogvlm", "the cat [[100,200,300,400]] and two dogs [[500,500,900,950;000,000,999,999]]"),
    ],
)
def test_render_record_content_literally(name, expected):
    codec = CODECS[name]
    text = codec.render(RECORD, RECORD_BOXES)
    assert text == expected
    objs = codec.parse(text)
    # the second phrase starts after the previous box, so it takes "and" with it (module docstring)
    assert [o.phrase for o in objs] == ["the cat", "and two dogs", "and two dogs"]


def test_render_bare_slot_and_phrase_without_box():
    codec = CODECS["cogvlm"]
    assert codec.render("<p>a dog</p> runs to <box:0>.", [(0, 0, 0.5, 0.5)]) == "a dog runs to [[000,000,500,500]]."
    with pytest.raises(ValueError):
        codec.render("<box:1>", [(0, 0, 1, 1)])


# ---- round trip -------------------------------------------------------------------------------------------

WORDS = st.lists(st.sampled_from(["cat", "red", "dog", "the", "man", "sky"]), min_size=1, max_size=3).map(" ".join)


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(sorted(CODECS)),
    st.lists(st.tuples(WORDS, st.lists(boxes(), min_size=1, max_size=3)), min_size=1, max_size=4),
)
def test_render_parse_round_trip_within_one_bin(name, phrases):
    codec = CODECS[name]
    parts, all_boxes, expected = [], [], []
    for words, bs in phrases:
        slots = "".join(f"<box:{len(all_boxes) + k}>" for k in range(len(bs)))
        parts.append(f"<p>{words}</p>{slots}")
        all_boxes += bs
        expected += [(words, b) for b in bs]
    objs = codec.parse(codec.render(". ".join(parts) + ".", all_boxes))
    assert [o.phrase for o in objs] == [w for w, _ in expected]
    for obj, (_, box) in zip(objs, expected, strict=True):
        assert close(obj.box_norm, box, BIN[name] + EPS)


# ---- malformed and adversarial text ----------------------------------------------------------------------


def test_out_of_range_dropped_and_swapped_corners_ordered():
    assert CODECS["shikra"].parse("[0.1,0.2,1.5,0.4]") == []
    assert CODECS["ferret"].parse("[100, 200, 1000, 400]") == []
    (obj,) = CODECS["cogvlm"].parse("[[400,760,086,540]]")
    assert obj.box_norm == (0.086, 0.54, 0.4, 0.76)
    assert CODECS["ferret"].parse("[1, 2, 3]") == []


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(CODECS)), st.text(alphabet=st.sampled_from("[],;. 0123456789<>/pab\n"), max_size=80))
def test_parse_never_raises_on_garbage(name, text):
    objs = CODECS[name].parse(text)
    assert all(0 <= v <= 1 for o in objs for v in o.box_norm)
    assert isinstance(CODECS[name].strip(text), str)


def test_joints_read_in_every_codec_and_bad_fields_raise():
    semicolons, pairs = "[[1,2,3,4;5,6,7,8]]", "[[1, 2, 3, 4], [5, 6, 7, 8]]"
    expected = [(0.001, 0.002, 0.003, 0.004), (0.005, 0.006, 0.007, 0.008)]
    for text in (semicolons, pairs):
        assert [o.box_norm for o in CODECS["cogvlm"].parse(text)] == expected
    # Ferret's joint inside double brackets (InternVL's `[[..], [..]]` shape) still round-trips
    codec = FerretLocationCodec(double=True)
    assert codec.render("<box:0><box:1>", expected) == pairs
    assert [o.box_norm for o in codec.parse(pairs)] == expected
    with pytest.raises(ValueError):
        ShikraLocationCodec(joint="|")
    with pytest.raises(ValueError):
        FerretLocationCodec(separator=" ")
    with pytest.raises(ValueError):
        ShikraLocationCodec(decimals=0)


def test_parse_of_non_string_is_empty():
    assert CODECS["shikra"].parse(None) == [] and CODECS["shikra"].strip(None) == ""


ADVERSARIAL = [
    "[" * 1_000_000,
    "[[" + "1" * 999_998,
    "[0." + "1" * 999_997,
    "[0,0,0,0;" * 111_111,
    "[[086,540,400,760;" * 55_555,
    "[1, 2, 3, " * 100_000,
    "[1,2,3,4],[" * 90_909,
    "[[1,2,3,4],[" * 83_333,
    "[[0.1,0.2,0.3,0.4;" * 52_631,
    "[0." + " " * 999_997,
    "[ [ 1 , 2 , 3 , 4 ] , [ " * 40_000,
    "[0 . 1 , " * 111_111,
    "<p>" * 333_333,
    "the cat " * 125_000,
    "[0.5, 0.5, 0.5, 0.5] " * 47_619,
    "." * 1_000_000,
]


@pytest.mark.parametrize("name", sorted(CODECS))
@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_megabyte_parses_and_strips_in_linear_time(name, text):
    codec = CODECS[name]
    assert_linear(codec.parse, text, label=f"{name} parse")
    assert_linear(codec.strip, text, label=f"{name} strip")


# ---- strip and tokens -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CODECS))
def test_strip_removes_locations(name):
    codec = CODECS[name]
    text = codec.render(RECORD + ", and a <p>bird</p><box:0>.", RECORD_BOXES)
    assert codec.strip(text) == "the cat and two dogs, and a bird."


def test_plain_text_tokens():
    for codec in CODECS.values():
        assert codec.added_tokens() == [] and codec.coordinate_tokens() is None
        assert codec.special_tokens()[:2] == ["<p>", "</p>"] and codec.has_heads is False
    # tags, `[ ] , ; .`, the integer parts `0` `1`, the fractions `000` … `999`
    assert len(CODECS["shikra"].special_tokens()) == 2 + 5 + 2 + 1000
    assert CODECS["llava"].special_tokens()[-100:] == [f"{i:02d}" for i in range(100)]
    assert "086" in CODECS["cogvlm"].special_tokens() and "86" not in CODECS["cogvlm"].special_tokens()
    assert "999" in CODECS["ferret"].special_tokens() and "1000" not in CODECS["ferret"].special_tokens()


@pytest.mark.parametrize("name", sorted(CODECS))
def test_word_level_tokenizer_round_trip(name):
    """A from-scratch model's tokenizer keeps every written piece (no <unk>) and its spaced decoding parses."""
    from groundlm.tokenizer import build_word_tokenizer

    codec = CODECS[name]
    tokenizer = build_word_tokenizer(["the", "cat", "and", "two", "dogs"], tokens=codec.special_tokens())
    text = codec.render(RECORD, RECORD_BOXES)
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    # the decoding joins what the pre-tokenizer split: no `[ 0 . 100 ,`, at most a space after `,` and `;`
    assert "[ " not in decoded and " ." not in decoded and ". " not in decoded and " ," not in decoded
    assert [(o.phrase, o.box_norm) for o in codec.parse(decoded)] == [(o.phrase, o.box_norm) for o in codec.parse(text)]
    assert codec.strip(decoded) == "the cat and two dogs"
    assert [CODECS[n].frame for n in ("shikra", "llava", "ferret", "cogvlm")] == ["pad", "pad", "resize", "resize"]

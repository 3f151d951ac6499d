"""`to_slots`, the inverse of `render`, on every location codec: round trips through each format, published
example strings to the record content they hold, agreement with `parse`, garbage and 1 MB adversarial text."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from groundlm.location import CODEC_NAMES, Qwen25VLLocationCodec, make_codec
from groundlm.processor import ProcessorConfig
from tests.box_strategies import boxes
from tests.linear_time import assert_linear

CODECS = {name: make_codec(ProcessorConfig(location_codec=name, image_size=448)) for name in CODEC_NAMES}
WRITTEN = [name for name in CODEC_NAMES if name != "embedding"]
# one bin of each format: the largest error a render→to_slots round trip may make
BIN = {
    "text": 1 / 100, "tokens": 1 / 100, "kosmos2": 1 / 32, "florence2": 1 / 1000, "paligemma": 1 / 1023,
    "qwen_vl": 1 / 999, "qwen2_vl": 1 / 999, "qwen2_5_vl": 1 / 448, "internvl": 1 / 1000,
    "shikra": 1 / 1000, "llava": 1 / 100, "ferret": 1 / 1000, "cogvlm": 1 / 1000,
}
# What stands between two phrase groups in content each format can hold: free words become part of the next
# phrase in Florence-2 and PaliGemma, and of a bracket box's phrase up to a sentence boundary; PaliGemma and
# Qwen2.5-VL write adjacent detections with their own separator (or only the JSON).
BETWEEN = {"florence2": " ", "paligemma": "", "qwen2_5_vl": "", "shikra": ". ", "llava": ". ", "ferret": ". ",
           "cogvlm": ". "}
TAIL = {"paligemma": "", "qwen2_5_vl": ""}  # words after the last group: the phrase of PaliGemma's last box
PHRASES = ["the cat", "two dogs", "a red car", "sky", "the man on the left"]


def slot_phrases(content: str) -> list[str | None]:
    """The phrase of each slot of record content, in slot order: the `<p>words</p>` its run directly follows."""
    phrases = []
    for m in re.finditer(r"(?:<p>([^<]*)</p>)?((?:<box:\d+>)+)", content):
        phrases += [m.group(1)] * len(re.findall(r"<box:\d+>", m.group(2)))
    return phrases


def near(got, want, tol):
    return len(got) == len(want) and all(
        abs(a - b) <= tol + 1e-9 for g, w in zip(got, want, strict=True) for a, b in zip(g, w, strict=True)
    )


@st.composite
def contents(draw, name):
    """Record content in the shape `name` can hold: 1-4 groups, each a distinct phrase or none with 1-3 slots."""
    n = draw(st.integers(1, 4))
    phrases = draw(st.lists(st.sampled_from(PHRASES), min_size=n, max_size=n, unique=True))
    bare = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    groups, all_boxes = [], []
    for k, (phrase, no_phrase) in enumerate(zip(phrases, bare, strict=True)):
        # Florence-2: a bare run after a group continues that group's run (the format has no boundary)
        if no_phrase and (name != "florence2" or k == 0):
            phrase = None
        group = draw(st.lists(boxes(), min_size=1, max_size=3))
        slots = "".join(f"<box:{len(all_boxes) + i}>" for i in range(len(group)))
        all_boxes += group
        groups.append(f"<p>{phrase}</p>{slots}" if phrase else slots)
    between = BETWEEN.get(name, " and ")
    return "Look: " * (name not in TAIL and name != "florence2") + between.join(groups) + TAIL.get(name, "."), all_boxes


# ---- round trips --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", WRITTEN)
@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_to_slots_of_a_render_gives_the_content_back_and_the_boxes_within_one_bin(name, data):
    codec = CODECS[name]
    content, all_boxes = data.draw(contents(name))
    slots, got = codec.to_slots(codec.render(content, all_boxes))
    assert slots == content
    assert near(got, all_boxes, BIN[name])


@pytest.mark.parametrize("name", WRITTEN)
@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_to_slots_marks_the_phrases_and_boxes_parse_reads(name, data):
    codec = CODECS[name]
    content, all_boxes = data.draw(contents(name))
    text = codec.render(content, all_boxes)
    slots, got = codec.to_slots(text)
    assert [o.box_norm for o in codec.parse(text)] == got
    # each slot's phrase in the content is the object's phrase
    assert slot_phrases(slots) == [o.phrase for o in codec.parse(text)]


@pytest.mark.parametrize("name", WRITTEN)
def test_bare_slots_right_after_a_phrase_stay_out_of_it_as_parse_reads_them(name):
    codec = CODECS[name]
    text = codec.render("<p>the cat</p><box:0> <box:1> and <box:2>", [(0.1, 0.2, 0.3, 0.4)] * 3)
    slots, got = codec.to_slots(text)
    assert slot_phrases(slots) == [o.phrase for o in codec.parse(text)]


@pytest.mark.parametrize("name", WRITTEN)
def test_slots_are_numbered_from_first(name):
    codec = CODECS[name]
    text = codec.render("<p>the cat</p><box:0>", [(0.1, 0.2, 0.3, 0.4)])
    slots, got = codec.to_slots(text, first=3)
    assert slots == "<p>the cat</p><box:3>" and len(got) == 1


def test_embedding_gives_the_text_unchanged_and_no_boxes():
    codec = CODECS["embedding"]
    text = codec.render("<p>the cat</p><box:0> is here", [(0.1, 0.2, 0.3, 0.4)])
    assert codec.to_slots(text) == (text, [])


# ---- published example strings --------------------------------------------------------------------------

EXAMPLES = [
    ("text", "<p>a man</p> {<12><30><56><91>}", "<p>a man</p><box:0>", [(0.12, 0.30, 0.56, 0.91)]),
    ("text", "[identify] what is this {<4><50><30><65>}", "[identify] what is this <box:0>",
     [(0.04, 0.5, 0.3, 0.65)]),
    ("shikra", "Answer: [0.123,0.456,0.789,0.999] .", "Answer: <box:0> .", [(0.123, 0.456, 0.789, 0.999)]),
    ("shikra", "Two people [0.1,0.2,0.3,0.4;0.5,0.6,0.7,0.8] are talking.",
     "<p>Two people</p><box:0><box:1> are talking.", [(0.1, 0.2, 0.3, 0.4), (0.5, 0.6, 0.7, 0.8)]),
    ("llava", "[0.39, 0.12, 0.59, 0.87]", "<box:0>", [(0.39, 0.12, 0.59, 0.87)]),
    ("ferret", "There is a dog [302, 257, 582, 671] on the grass.", "<p>There is a dog</p><box:0> on the grass.",
     [(0.302, 0.257, 0.582, 0.671)]),
    ("cogvlm", "a man at the box [[212,498,787,564]]", "<p>a man at the box</p><box:0>",
     [(0.212, 0.498, 0.787, 0.564)]),
    ("qwen_vl", "<ref>击掌</ref><box>(536,509),(588,602)</box>", "<p>击掌</p><box:0>",
     [(536 / 999, 509 / 999, 588 / 999, 602 / 999)]),
    ("qwen_vl", "<ref> Two apples</ref><box>(302,257),(582,671)</box><box>(603,252),(878,642)</box>",
     "<p>Two apples</p><box:0><box:1>",
     [(302 / 999, 257 / 999, 582 / 999, 671 / 999), (603 / 999, 252 / 999, 878 / 999, 642 / 999)]),
    ("qwen2_vl", "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(302,257),(582,671)<|box_end|>",
     "<p>cat</p><box:0>", [(302 / 999, 257 / 999, 582 / 999, 671 / 999)]),
    ("internvl", "<ref>the cat</ref><box>[[302, 257, 582, 671]]</box>", "<p>the cat</p><box:0>",
     [(0.302, 0.257, 0.582, 0.671)]),
    ("internvl", "Please provide the bounding box coordinate of the region this sentence describes: <ref>the cat</ref>",
     "Please provide the bounding box coordinate of the region this sentence describes: <p>the cat</p>", []),
    ("qwen2_5_vl", '```json\n[\n\t{"bbox_2d": [139, 768, 315, 954], "label": "small cake"}\n]\n```',
     "<p>small cake</p><box:0>", [(139 / 1000, 768 / 1000, 315 / 1000, 954 / 1000)]),
    ("kosmos2", "<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863>"
     "</object> warming himself by<phrase> a fire</phrase><object><patch_index_0005><patch_index_0911></object>.",
     "<grounding> An image of <p>a snowman</p><box:0> warming himself by <p>a fire</p><box:1>.",
     [(0.390625, 0.046875, 0.984375, 0.828125), (0.171875, 0.015625, 0.484375, 0.890625)]),
    ("florence2", "car<loc_52><loc_335><loc_998><loc_806>wheel<loc_708><loc_576><loc_865><loc_806>",
     "<p>car</p><box:0><p>wheel</p><box:1>",
     [(0.0525, 0.3355, 0.9985, 0.8065), (0.7085, 0.5765, 0.8655, 0.8065)]),
    ("paligemma", "<loc0256><loc0100><loc0768><loc0900> cat ; <loc0000><loc0000><loc1023><loc1023> dog",
     "<p>cat</p><box:0><p>dog</p><box:1>", [(100 / 1023, 256 / 1023, 900 / 1023, 768 / 1023), (0, 0, 1, 1)]),
]


@pytest.mark.parametrize(("name", "text", "content", "expected"), EXAMPLES,
                         ids=[f"{e[0]}-{i}" for i, e in enumerate(EXAMPLES)])
def test_published_examples_become_record_content(name, text, content, expected):
    # the cookbook's cake example is in pixels of a larger input than the 448 of the other tests
    codec = Qwen25VLLocationCodec(size=1000) if name == "qwen2_5_vl" else CODECS[name]
    slots, got = codec.to_slots(text)
    assert slots == content
    assert near(got, expected, 1e-9)


def test_qwen2_5_vl_keeps_words_outside_the_json_and_drops_objects_without_a_valid_bbox():
    codec = CODECS["qwen2_5_vl"]
    text = 'Sure.\n```json\n[{"label": "cat", "bbox_2d": [0, 0, 448, 448]}, {"bbox_2d": [1, 2, 3]}]\n```\nDone.'
    slots, got = codec.to_slots(text)
    assert slots.startswith("Sure.\n<p>cat</p><box:0>") and slots.endswith("Done.") and got == [(0, 0, 1, 1)]
    assert codec.to_slots('[{"bbox_2d": [1, 2, 3, 9999], "label": "x"}]') == (
        '[{"bbox_2d": [1, 2, 3, 9999], "label": "x"}]', [])


def test_brackets_tie_a_phrase_only_across_spaces():
    codec = CODECS["ferret"]
    assert codec.to_slots("the cat, [1, 2, 3, 4] sat")[0] == "the cat, <box:0> sat"
    assert codec.to_slots("Where: [1, 2, 3, 4]")[0] == "Where: <box:0>"


def test_locations_without_a_valid_box_stay_as_written():
    for name, text in [("text", "<p>x</p> {<1><2><3>}"), ("qwen_vl", "<box>(1,2),(3,1000)</box>"),
                       ("internvl", "<box>[[1, 2, 3]]</box>"), ("shikra", "[0.1,0.2,1.5,0.4]"),
                       ("tokens", "<loc_1><loc_2><loc_3>"), ("paligemma", "<loc0001><loc0002> cat"),
                       ("kosmos2", "<object><patch_index_9999><patch_index_0001></object>"),
                       ("florence2", "cat<loc_1><loc_2>")]:
        assert CODECS[name].to_slots(text) == (text, []), name


# ---- robustness -------------------------------------------------------------------------------------------

PIECES = ["<p>", "</p>", "<ref>", "</ref>", "<box>", "</box>", "(1,2),(3,4)", "[[1, 2, 3, 4]]", "[0.1,0.2,0.3,0.4]",
          "{<1><2><3><4>}", "<delim>", "<loc_5>", "<loc0005>", "<phrase>", "</phrase>", "<object>", "</object>",
          "<patch_index_0001>", '"bbox_2d": [1, 2, 3, 4]', '"label": "a"', "{", "}", "[", "]", ";", ", ", " ",
          "cat", ".", "\n", "```json", "<box:0>"]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=60), st.lists(st.sampled_from(PIECES), max_size=40).map("".join)))
def test_to_slots_never_raises_and_agrees_with_parse_on_garbage(text):
    for name in CODEC_NAMES:
        slots, got = CODECS[name].to_slots(text)
        assert isinstance(slots, str)
        if name != "embedding":
            assert got == [o.box_norm for o in CODECS[name].parse(text)], name


def test_to_slots_of_a_non_string_is_empty():
    for name in CODEC_NAMES:
        assert CODECS[name].to_slots(None) == ("", [])


# ~1 MB each; the runs of valid locations are padded with words (a box every ~50 characters) so the growth
# measures scanning, not the per-box work of 60,000 boxes
ADVERSARIAL = [
    "<p>" * 333_333,
    "<p>a</p> " * 111_111,
    "{<1><2><3><4>} with some words " * 33_333,
    "<loc_1>" * 140_000,
    "<ref>a</ref>" + "<box>(1,2),(3,4)</box> and some more " * 25_000,
    "[[1, 2, 3, 4]] with some words here " * 27_000,
    "the cat [0.1,0.2,0.3,0.4] is next to it. " * 24_000,
    "[1, 2, 3, 4]; " * 70_000,
    "<phrase> a</phrase><object><patch_index_0001>" * 20_000,
    "a<loc_1><loc_2><loc_3><loc_4>" * 30_000,
    "<loc0001><loc0002><loc0003><loc0004> a ; " * 25_000,
    '{"bbox_2d": [1, 2, 3, 4], "label": "a"}, ' * 25_000,
    "```json\n[" * 100_000,
    "[ { " * 250_000,
    "[" + " " * 1_000_000,
    "." * 1_000_000,
]


@pytest.mark.parametrize("name", CODEC_NAMES)
@pytest.mark.parametrize("text", ADVERSARIAL, ids=range(len(ADVERSARIAL)))
def test_adversarial_megabyte_converts_in_linear_time(name, text):
    assert_linear(CODECS[name].to_slots, text, label=name)


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_a_qwen2_5_vl_user_turns_inline_arrays_read_back_with_output_false(data):
    """Qwen2.5-VL writes a prompt's locations otherwise than an answer's (inline arrays, no JSON, no phrase
    tags): the user turn's `render(output=False)` comes back as its slots and boxes with `to_slots(output=False)`
    (the other formats write both turns alike, which the round trips above cover)."""
    name = "qwen2_5_vl"
    codec = CODECS[name]
    group = data.draw(st.lists(boxes(), min_size=1, max_size=3))
    content = "what is " + " and ".join(f"<box:{i}>" for i in range(len(group))) + "?"
    slots, got = codec.to_slots(codec.render(content, group, output=False), output=False)
    assert slots == content
    assert near(got, group, BIN[name])


def test_qwen2_5_vl_prompt_arrays_adversarial_megabyte_is_linear():
    codec = CODECS["qwen2_5_vl"]
    text = "[1, 2, 3, " * 100_000 + "[ 5 ,  6" * 50_000
    assert codec.to_slots(text, output=False) == (text, [])
    assert_linear(lambda t: codec.to_slots(t, output=False), text)

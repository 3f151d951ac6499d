import json
import os

import pytest

from groundlm.records import (
    BOX_SLOT,
    GroundTruthObject,
    Message,
    Problem,
    Record,
    RecordValidationError,
    iter_jsonl,
    read_jsonl,
    validate_record,
    write_jsonl,
)


def good(**overrides):
    d = {
        "id": "refcoco-val-123",
        "image": "COCO_train2014_000000581857.jpg",
        "objects": [{"box": [103.9, 299.0, 226.4, 476.9], "label": "the lady", "mask": None}],
        "messages": [
            {"role": "user", "content": "[refer] give me the location of the lady"},
            {"role": "assistant", "content": "<box:0>"},
        ],
        "meta": {"split": "val"},
    }
    d.update(overrides)
    return d


def fields(d):
    return [p.field for p in validate_record(d)]


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---- data classes --------------------------------------------------------------------------------------


def test_dict_round_trip():
    d = good()
    r = Record.from_dict(d)
    assert r.objects[0] == GroundTruthObject((103.9, 299.0, 226.4, 476.9), "the lady", None)
    assert r.messages[1] == Message("assistant", "<box:0>")
    assert r.to_dict() == d
    assert validate_record(r.to_dict()) == []


def test_optional_keys_default():
    r = Record.from_dict({"id": "a", "messages": [{"role": "user", "content": "hi"}]})
    assert r.image is None and r.objects == [] and r.meta == {}
    assert validate_record({"id": "a", "messages": [{"role": "user", "content": "hi"}]}) == []


def test_box_slot_regex():
    text = "<p>two dogs</p><box:0><box:1> and <box:12>"
    assert [int(m) for m in BOX_SLOT.findall(text)] == [0, 1, 12]


def test_problem_str():
    p = Problem("data/train.jsonl", 12, "messages[1].role", "expected 'user' or 'assistant', got 'bot'")
    assert str(p) == "data/train.jsonl:12: messages[1].role: expected 'user' or 'assistant', got 'bot'"
    assert str(Problem(None, None, "id", "bad")) == "id: bad"


# ---- validation ----------------------------------------------------------------------------------------


def test_valid_record_has_no_problems():
    assert validate_record(good()) == []
    with_masks = good(
        objects=[
            {"box": [0, 0, 10, 10], "label": None, "mask": {"size": [20, 30], "counts": "abc"}},
            {"box": [0, 0, 10, 10], "mask": {"size": [20, 30], "counts": [0, 5, 595]}},
            {"box": [0, 0, 10, 10], "mask": [[0, 0, 10, 0, 10, 10]]},
        ]
    )
    assert validate_record(with_masks) == []


def test_bad_ids_images_and_keys():
    assert fields(good(id="")) == ["id"]
    assert fields(good(id=5)) == ["id"]
    assert fields(good(image=3)) == ["image"]
    assert fields(good(image=None)) == []
    assert fields(good(imgae="x.jpg")) == ["imgae"]
    assert fields(good(meta=[1])) == ["meta"]
    assert fields([1, 2]) == ["<record>"]
    d = good()
    del d["messages"]
    assert fields(d) == ["messages"]


@pytest.mark.parametrize(
    "box",
    [
        [1, 2, 3],
        [0, 0, "1", 1],
        [0, 0, float("nan"), 1],
        [5, 0, 1, 1],
        [0, 5, 1, 1],
        [-1, 0, 1, 1],
        [0, 0, True, 1],
    ],
)
def test_bad_boxes(box):
    assert fields(good(objects=[{"box": box}])) == ["objects[0].box"]


def test_bad_objects():
    assert fields(good(objects={"box": [0, 0, 1, 1]})) == ["objects", "messages[1].content"]
    assert fields(good(objects=[{"bbox": [0, 0, 1, 1]}])) == ["objects[0].bbox", "objects[0].box"]
    assert fields(good(objects=[{"box": [0, 0, 1, 1], "label": 7}])) == ["objects[0].label"]
    assert fields(good(objects=[{"box": [0, 0, 1, 1], "mask": "rle"}])) == ["objects[0].mask"]
    assert fields(good(objects=[{"box": [0, 0, 1, 1], "mask": {"size": [2, 2]}}])) == ["objects[0].mask"]
    assert fields(good(objects=[{"box": [0, 0, 1, 1], "mask": {"size": [2], "counts": 3}}])) == [
        "objects[0].mask.size",
        "objects[0].mask.counts",
    ]
    assert fields(good(objects=[{"box": [0, 0, 1, 1], "mask": [[0, 0, 1, 1]]}])) == ["objects[0].mask[0]"]
    assert fields(good(objects=[{"box": [0, 0, 1, 1], "mask": []}])) == ["objects[0].mask"]


def test_box_slot_out_of_range():
    d = good(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": "<box:0><box:3>"}])
    problems = validate_record(d)
    assert [(p.field, p.message) for p in problems] == [
        ("messages[1].content", "<box:3> refers to objects[3] but the record has 1 object")
    ]
    # A user turn pointing at a missing object is caught the same way.
    assert fields(good(messages=[{"role": "user", "content": "what is <box:1>?"}])) == ["messages[0].content"]
    # Near-miss slot spellings are flagged rather than silently treated as text.
    assert fields(good(messages=[{"role": "user", "content": "what is <box: 0>?"}])) == [
        "messages[0].content"
    ]


def test_role_alternation():
    def roles(*rs):
        return validate_record(good(messages=[{"role": r, "content": "x"} for r in rs]))

    assert roles("user") == []
    assert roles("system", "user", "assistant", "user", "assistant") == []
    [p] = roles("user", "bot")
    assert (p.field, p.message) == ("messages[1].role", "expected 'user' or 'assistant', got 'bot'")
    [p] = roles("assistant", "user")
    assert p.field == "messages[0].role" and "start with the user" in p.message
    [p] = roles("user", "system", "assistant")
    assert p.field == "messages[1].role" and "only allowed first" in p.message
    # One missing turn gives one problem, not one per following message.
    [p] = roles("user", "user", "assistant", "user", "assistant")
    assert p.field == "messages[1].role" and p.message == "expected 'assistant', got 'user'"
    assert [p.field for p in roles("user", "assistant", "assistant")] == ["messages[2].role"]
    assert fields(good(messages=[])) == ["messages"]
    assert fields(good(messages=[{"role": "user", "content": 3}])) == ["messages[0].content"]
    assert fields(good(messages=[{"role": "user", "text": "x"}])) == [
        "messages[0].text",
        "messages[0].content",
    ]


# ---- files ---------------------------------------------------------------------------------------------


def test_write_read_round_trip(tmp_path):
    recs = [
        Record.from_dict(good(id="a")),
        Record("b", None, [], [Message("user", "héllo"), Message("assistant", "hi")], {"k": [1, 2]}),
    ]
    path = tmp_path / "train.jsonl"
    write_jsonl(path, recs)
    assert read_jsonl(path) == recs
    assert list(iter_jsonl(path)) == recs
    assert "héllo" in path.read_text(encoding="utf-8")  # readable, not \u-escaped
    assert [f for f in os.listdir(tmp_path)] == ["train.jsonl"]  # no temp file left behind


def test_blank_lines_skipped(tmp_path):
    path = tmp_path / "d.jsonl"
    write_lines(path, ["", json.dumps(good(id="a")), "   ", "", json.dumps(good(id="b")), ""])
    assert [r.id for r in read_jsonl(path)] == ["a", "b"]


def test_all_problems_reported_with_lines_and_fields(tmp_path):
    path = tmp_path / "bad.jsonl"
    write_lines(
        path,
        [
            json.dumps(good(id="ok")),  # 1
            '{"id": "x", "messages": [',  # 2: invalid JSON
            "",  # 3: blank
            json.dumps(
                good(id="b", messages=[{"role": "user", "content": "x"}, {"role": "bot", "content": "y"}])
            ),
            json.dumps(good(id="c", objects=[{"box": [5, 0, 1, 1]}])),  # 5: bad box (and <box:0> is fine)
            json.dumps(good(id="ok")),  # 6: duplicate id
        ],
    )
    with pytest.raises(RecordValidationError) as info:
        read_jsonl(path)
    err = info.value
    assert isinstance(err, ValueError)
    got = [(p.line, p.field) for p in err.problems]
    assert got == [(2, "<json>"), (4, "messages[1].role"), (5, "objects[0].box"), (6, "id")]
    text = str(err)
    assert "4 problems" in text
    assert f"{path}:4: messages[1].role: expected 'user' or 'assistant', got 'bot'" in text
    assert f"{path}:2: <json>: invalid JSON" in text
    # Streaming stops at the first bad line.
    with pytest.raises(RecordValidationError) as info:
        list(iter_jsonl(path))
    assert [p.line for p in info.value.problems] == [2]


def test_duplicate_ids_can_be_allowed(tmp_path):
    path = tmp_path / "d.jsonl"
    write_lines(path, [json.dumps(good()), json.dumps(good())])
    assert len(read_jsonl(path, unique_ids=False)) == 2


def test_error_message_capped_at_50(tmp_path):
    path = tmp_path / "many.jsonl"
    write_lines(path, ["not json"] * 60)
    with pytest.raises(RecordValidationError) as info:
        read_jsonl(path)
    assert len(info.value.problems) == 60
    msg = str(info.value)
    assert "... and 10 more" in msg
    assert f"{path}:50: <json>" in msg and f"{path}:51: <json>" not in msg


def test_atomic_write_keeps_original_on_failure(tmp_path):
    path = tmp_path / "train.jsonl"
    write_jsonl(path, [Record.from_dict(good(id="old"))])
    before = path.read_bytes()
    bad = [Record.from_dict(good(id=f"r{i}")) for i in range(5)]
    bad[3].meta = {"oops": object()}  # not JSON-serialisable: fails after 3 lines were written
    with pytest.raises(TypeError):
        write_jsonl(path, bad)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["train.jsonl"]


def test_write_validates(tmp_path):
    path = tmp_path / "out.jsonl"
    with pytest.raises(RecordValidationError) as info:
        write_jsonl(path, [good(id="a"), good(id="b", messages=[{"role": "assistant", "content": "x"}])])
    assert [(p.line, p.field) for p in info.value.problems] == [(2, "messages[0].role")]
    assert not path.exists()
    nan_meta = Record.from_dict(good(meta={"score": float("nan")}))
    with pytest.raises(ValueError):
        write_jsonl(path, [nan_meta])
    assert os.listdir(tmp_path) == []

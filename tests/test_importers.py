"""Importers: hand-checked records from small fixtures of every format, error/skip policy, the restricted
unpickler, and real-data counts (skipped when ../shared/realdata is absent)."""

from __future__ import annotations

import json
import os
import pickle
import random
import struct
from pathlib import Path

import pytest
from PIL import Image

from groundlm.data.importers import (
    ImportReport,
    ImportRowError,
    from_coco_captions,
    from_flickr30k_detection,
    from_flickr30k_grounding,
    from_gqa,
    from_llava,
    from_llava_caps_boxes,
    from_minigptv2_refcoco,
    from_okvqa,
    from_pope,
    from_refer_rec,
    from_refer_reg,
    from_swift,
    from_vqav2,
    load_refer,
    refer_split_matches,
)
from groundlm.data.safe_pickle import UnsafePickleError, safe_load
from groundlm.records import validate_record

REALDATA = Path(__file__).resolve().parents[1].parent / "shared/realdata"


def _realdata(*parts: str) -> Path:
    path = REALDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not present: {path}")
    return path


def _write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _turns(record):
    return [(m.role, m.content) for m in record.messages]


def _all_valid(records):
    for r in records:
        assert validate_record(r.to_dict()) == [], r.id


# --------------------------------------------------------------------------------------------------------
# MiniGPT-v2 RefCOCO evaluation JSON


def _minigpt_rows():
    return [
        {"img_id": "COCO_train2014_000000581282_10", "sents": "person bottom left",
         "bbox": [3.0, 159.0, 156.0, 312.0], "height": 480, "width": 640},
        {"img_id": "COCO_train2014_000000581282_10", "sents": "left black shirt",
         "bbox": [3.0, 159.0, 156.0, 312.0], "height": 480, "width": 640},
        {"img_id": "COCO_train2014_000000000009_3", "sents": "bowl", "bbox": [1, 2, 3, 4], "height": 10,
         "width": 20},
    ]  # fmt: skip


def test_minigptv2_refcoco(tmp_path):
    path = _write_json(tmp_path / "refcoco+_testA.json", _minigpt_rows())
    records = from_minigptv2_refcoco(path)
    _all_valid(records)
    assert [r.id for r in records] == ["refcoco+-testA-0", "refcoco+-testA-1", "refcoco+-testA-2"]
    r = records[0]
    assert r.image == "COCO_train2014_000000581282.jpg"
    assert r.objects[0].box == (3.0, 159.0, 159.0, 471.0)  # xywh -> xyxy
    assert r.objects[0].label == "person bottom left"
    assert _turns(r) == [
        ("user", "[refer] give me the location of person bottom left"),
        ("assistant", "<box:0>"),
    ]
    assert r.meta == {
        "task": "refer", "source": "minigptv2_refcoco", "dataset": "refcoco+", "split": "testA",
        "object": "COCO_train2014_000000581282_10", "image_id": 581282, "width": 640, "height": 480,
    }  # fmt: skip
    assert records[1].meta["object"] == r.meta["object"] != records[2].meta["object"]
    assert records[2].image == "COCO_train2014_000000000009.jpg"
    # With a generator the instruction comes from the training pool, reproducibly.
    a = from_minigptv2_refcoco(path, rng=random.Random(3))
    b = from_minigptv2_refcoco(path, rng=random.Random(3))
    assert _turns(a[0]) == _turns(b[0]) and a[0].messages[0].content.startswith("[refer] ")


def test_minigptv2_broken_rows_raise_or_skip(tmp_path):
    rows = _minigpt_rows()
    del rows[1]["bbox"]
    rows[2]["bbox"] = [1, 2, -3, 4]  # negative width
    rows.append({"img_id": "short_1", "sents": "x", "bbox": [0, 0, 1, 1], "height": 1, "width": 1})
    path = _write_json(tmp_path / "refcoco_val.json", rows)
    with pytest.raises(ImportRowError) as err:
        from_minigptv2_refcoco(path)
    assert str(err.value) == f"{path}: row 1: bbox: expected 4 finite numbers, got None"
    report = ImportReport()
    records = from_minigptv2_refcoco(path, on_error="skip", report=report)
    assert [r.id for r in records] == ["refcoco-val-0"]
    assert report.rows == 4 and report.records == 1
    assert report.skipped == {"bad box bbox": 2, "invalid img_id": 1}


# --------------------------------------------------------------------------------------------------------
# The refer API layout: refs pickle (Python 2) + instances.json


def _py2_pickle(obj) -> bytes:
    """A protocol-2 pickle as Python 2 writes it: `str` as byte strings, `unicode` as BINUNICODE."""

    def emit(o) -> bytes:
        if o is None:
            return b"N"
        if isinstance(o, bool):
            return b"\x88" if o else b"\x89"
        if isinstance(o, int):
            return b"J" + struct.pack("<i", o)
        if isinstance(o, float):
            return b"G" + struct.pack(">d", o)
        if isinstance(o, bytes):  # a Python 2 str
            return b"U" + bytes([len(o)]) + o if len(o) < 256 else b"T" + struct.pack("<I", len(o)) + o
        if isinstance(o, str):  # a Python 2 unicode
            data = o.encode("utf-8")
            return b"X" + struct.pack("<I", len(data)) + data
        if isinstance(o, list):
            return b"](" + b"".join(emit(v) for v in o) + b"e"
        if isinstance(o, dict):
            return b"}(" + b"".join(emit(k) + emit(v) for k, v in o.items()) + b"u"
        raise TypeError(type(o))

    return b"\x80\x02" + emit(obj) + b"."


def _ref(ref_id, ann_id, split, sents):
    return {
        b"ref_id": ref_id, b"ann_id": ann_id, b"image_id": 42, b"category_id": 1, b"split": split,
        b"file_name": b"COCO_train2014_000000000042_%d.jpg" % ann_id,
        b"sent_ids": [ref_id * 10 + k for k in range(len(sents))],
        b"sentences": [
            {b"sent": s, b"raw": s, b"tokens": s.split(), b"sent_id": ref_id * 10 + k} for k, s in enumerate(sents)
        ],
    }  # fmt: skip


@pytest.fixture
def refer_dir(tmp_path):
    root = tmp_path / "refcoco"
    root.mkdir()
    refs = [
        _ref(1, 100, b"testA", [b"man on left", "caf\u00e9 sign".encode()]),  # Py2 str holding UTF-8 bytes
        _ref(2, 101, b"testB", [b"red car"]),
        _ref(3, 102, b"testAB", ["woman in blue"]),  # a Py2 unicode sentence
        _ref(4, 100, b"train", [b"guy left"]),
    ]
    (root / "refs(unc).p").write_bytes(_py2_pickle(refs))
    instances = {
        "images": [{"id": 42, "file_name": "COCO_train2014_000000000042.jpg", "width": 640, "height": 480}],
        "annotations": [
            {"id": 100, "image_id": 42, "category_id": 1, "bbox": [10.5, 20.0, 100.0, 200.0],
             "segmentation": [[10.5, 20, 110.5, 20, 110.5, 220], [1, 2, 3, 4]]},
            {"id": 101, "image_id": 42, "category_id": 3, "bbox": [300, 100, 50, 40], "segmentation": []},
            {"id": 102, "image_id": 42, "category_id": 1, "bbox": [0, 0, 5, 5], "segmentation": None},
        ],
        "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}],
    }  # fmt: skip
    _write_json(root / "instances.json", instances)
    return root


def test_refer_rec_split_quirk_boxes_and_masks(refer_dir):
    refs, inst = refer_dir / "refs(unc).p", refer_dir / "instances.json"
    records = from_refer_rec(refs, inst, split="testA")
    _all_valid(records)
    # testA keeps every split containing "A": ref 1 (testA, 2 sentences) and ref 3 (testAB).
    assert [r.id for r in records] == [
        "refcoco-unc-testA-1-10",
        "refcoco-unc-testA-1-11",
        "refcoco-unc-testAB-3-30",
    ]
    r = records[0]
    assert r.image == "COCO_train2014_000000000042.jpg"
    assert r.objects[0].box == (10.5, 20.0, 110.5, 220.0)
    assert r.objects[0].mask == [[10.5, 20.0, 110.5, 20.0, 110.5, 220.0]]  # the 2-point ring is dropped
    assert _turns(r) == [("user", "[refer] give me the location of man on left"), ("assistant", "<box:0>")]
    assert records[1].objects[0].label == "café sign"  # UTF-8 bytes of a Py2 str decode correctly
    assert r.meta == {
        "task": "refer", "source": "refer", "dataset": "refcoco", "split_by": "unc", "split": "testA",
        "ref_id": 1, "ann_id": 100, "image_id": 42, "category": "person", "width": 640, "height": 480,
        "sent_id": 10,
    }  # fmt: skip
    assert [r.id for r in from_refer_rec(refs, inst, split="testB")] == [
        "refcoco-unc-testB-2-20",
        "refcoco-unc-testAB-3-30",
    ]
    assert len(from_refer_rec(refs, inst, split="test")) == 4
    assert len(from_refer_rec(refs, inst)) == 5
    assert len(load_refer(refs, inst, split="train")) == 1
    with pytest.raises(ValueError, match="unknown refer split 'tesA'"):
        from_refer_rec(refs, inst, split="tesA")


def test_refer_split_matches_like_the_refer_api():
    assert refer_split_matches("testAB", "testA") and refer_split_matches("testAB", "testB")
    assert not refer_split_matches("testAB", "testAC") and refer_split_matches("testAB", "testAB")
    assert refer_split_matches("testB", "test") and not refer_split_matches("val", "test")
    assert refer_split_matches("val", "val") and not refer_split_matches("train", "val")


def test_refer_reg(refer_dir):
    records = from_refer_reg(refer_dir / "refs(unc).p", refer_dir / "instances.json", split="testA")
    _all_valid(records)
    assert [r.id for r in records] == ["refcoco-unc-testA-1-reg", "refcoco-unc-testAB-3-reg"]
    r = records[0]
    assert _turns(r) == [("user", "[identify] what is this <box:0>"), ("assistant", "man on left")]
    assert r.meta["references"] == ["man on left", "café sign"]
    assert r.objects[0].label == "person" and r.objects[0].mask is not None


def test_refer_broken_ref_names_row_and_field(refer_dir, tmp_path):
    refs = [_ref(1, 100, b"val", [b"a"]), _ref(2, 999, b"val", [b"b"])]
    path = tmp_path / "refcoco" / "refs(unc).p"
    path.write_bytes(_py2_pickle(refs))
    with pytest.raises(ImportRowError, match=r"refs\(unc\)\.p: refs\[1\]: ann_id: annotation 999 is not in"):
        from_refer_rec(path, refer_dir / "instances.json")
    report = ImportReport()
    assert len(from_refer_rec(path, refer_dir / "instances.json", on_error="skip", report=report)) == 1
    assert report.skipped == {"unknown ann_id": 1}


class _Evil:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, refer_dir, protocol):
    marker = tmp_path / "pwned"
    payload = pickle.dumps([{"ref_id": 1, "x": _Evil(f"touch {marker}")}], protocol=protocol)
    path = tmp_path / "refs(unc).p"
    path.write_bytes(payload)
    with pytest.raises(
        UnsafePickleError, match=r"refs\(unc\)\.p: the pickle asks for the global \w+\.system"
    ):
        safe_load(path)
    with pytest.raises(UnsafePickleError, match="nothing was executed"):
        from_refer_rec(path, refer_dir / "instances.json")
    assert not marker.exists()


def test_safe_load_plain_data_and_corrupt_files(tmp_path):
    data = {"a": [1, 2.5, None, True, ("t", b"\xff")], "b": {"c": "d"}}
    assert safe_load(pickle.dumps(data, protocol=4)) == {
        "a": [1, 2.5, None, True, ("t", "ÿ")],
        "b": {"c": "d"},
    }
    broken = tmp_path / "broken.p"
    broken.write_bytes(b"\x80\x02]q\x00(")
    with pytest.raises(pickle.UnpicklingError, match="broken.p: not a readable pickle"):
        safe_load(broken)


# --------------------------------------------------------------------------------------------------------
# COCO captions, VQAv2 / OK-VQA / GQA, POPE


def test_coco_captions(tmp_path):
    data = {
        "images": [
            {"id": 7, "file_name": "COCO_val2014_000000000007.jpg", "width": 640, "height": 427},
            {"id": 8, "file_name": "COCO_val2014_000000000008.jpg", "width": 10, "height": 10},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "caption": "A cat on a mat. "},
            {"id": 2, "image_id": 7, "caption": "a cat sleeping"},
        ],
    }
    path = _write_json(tmp_path / "captions_val2014.json", data)
    report = ImportReport()
    (r,) = from_coco_captions(path, report=report)
    _all_valid([r])
    assert r.id == "coco-caption-7" and r.image == "COCO_val2014_000000000007.jpg" and r.objects == []
    assert _turns(r) == [("user", "[caption] please describe this image?"), ("assistant", "A cat on a mat.")]
    assert r.meta == {"task": "caption", "source": "coco_captions", "image_id": 7,
                      "captions": ["A cat on a mat.", "a cat sleeping"], "width": 640, "height": 427}  # fmt: skip
    assert report.skipped == {"no captions": 1}
    (drawn,) = from_coco_captions(path, rng=random.Random(0))
    assert drawn.messages[0].content.startswith("[caption] ")
    assert drawn.messages[1].content in r.meta["captions"]
    data["annotations"].append({"id": 3, "image_id": 8})
    _write_json(path, data)
    with pytest.raises(ImportRowError, match=r"captions_val2014.json: annotations\[2\]: caption: missing"):
        from_coco_captions(path)


def _vqa_files(tmp_path, name="v2"):
    questions = {"data_subtype": "val2014", "questions": [
        {"image_id": 42, "question": "What color is the cat?", "question_id": 420},
        {"image_id": 43, "question": "How many dogs?", "question_id": 430},
    ]}  # fmt: skip
    answers_1 = ["black"] * 4 + ["gray"] * 5 + ["dark"]
    answers_2 = ["2", "two", "2", "two", "3", "2", "two", "1", "4", "5"]  # tie: the first one seen wins
    annotations = {"annotations": [
        {"question_id": 420, "image_id": 42, "answer_type": "other", "question_type": "what color is the",
         "answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(answers_1)]},
        {"question_id": 430, "image_id": 43, "answer_type": "number", "question_type": "how many",
         "answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(answers_2)]},
    ]}  # fmt: skip
    q = _write_json(tmp_path / f"q{name}.json", questions)
    return q, _write_json(tmp_path / f"a{name}.json", annotations)


def test_vqav2_and_okvqa(tmp_path):
    q, a = _vqa_files(tmp_path)
    r1, r2 = from_vqav2(q, a)
    _all_valid([r1, r2])
    assert r1.id == "vqav2-420" and r1.image == "COCO_val2014_000000000042.jpg"
    assert _turns(r1) == [
        (
            "user",
            "[vqa] Based on the image, respond to this question with a short answer: What color is the cat?",
        ),
        ("assistant", "gray"),
    ]
    assert r1.meta["answers"] == ["black"] * 4 + ["gray"] * 5 + ["dark"] and len(r1.meta["answers"]) == 10
    assert r1.meta["answer_type"] == "other" and r1.meta["question_id"] == 420
    assert r2.messages[1].content == "2"
    (test_dev, _) = from_vqav2(q)  # no annotations: the question alone
    assert _turns(test_dev)[0][0] == "user" and len(test_dev.messages) == 1 and "answers" not in test_dev.meta
    assert [r.id for r in from_okvqa(q, a)] == ["okvqa-420", "okvqa-430"]


def test_vqa_missing_annotation_and_subtype(tmp_path):
    q, a = _vqa_files(tmp_path)
    data = json.loads(a.read_text())
    data["annotations"].pop()
    _write_json(a, data)
    with pytest.raises(
        ImportRowError, match=r"qv2.json: questions\[1\]: question_id: question 430 has no annotation"
    ):
        from_vqav2(q, a)
    qd = json.loads(q.read_text())
    del qd["data_subtype"]
    _write_json(q, qd)
    with pytest.raises(ValueError, match="data_subtype: missing"):
        from_vqav2(q)
    assert from_vqav2(q, subtype="test2015")[0].image == "COCO_test2015_000000000042.jpg"


def test_gqa(tmp_path):
    data = {
        "201307251": {
            "imageId": "n161313",
            "question": "Is it overcast?",
            "answer": "no",
            "fullAnswer": "No.",
        },
        "201640614": {"imageId": "n235859", "question": "Who is wearing a dress?"},
        "bad": {"imageId": "n1", "answer": "x"},
    }
    path = _write_json(tmp_path / "testdev_balanced_questions.json", data)
    report = ImportReport()
    r1, r2 = from_gqa(path, on_error="skip", report=report)
    _all_valid([r1, r2])
    assert r1.id == "gqa-201307251" and r1.image == "n161313.jpg" and r1.meta["answer"] == "no"
    assert _turns(r1)[1] == ("assistant", "no")
    assert len(r2.messages) == 1
    assert report.skipped == {"missing question": 1}
    with pytest.raises(ImportRowError, match=r"\['bad'\]: question: missing"):
        from_gqa(path)


def test_pope_lines_and_list(tmp_path):
    rows = [
        {"question_id": 1, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a car in the image?",
         "label": "no"},
        {"question_id": 2, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a dog in the image?",
         "label": "Yes"},
    ]  # fmt: skip
    lines = from_pope(_write_jsonl(tmp_path / "coco_pope_random.json", rows))
    listed = from_pope(_write_json(tmp_path / "gqa_pope.json", rows), template="{} Answer yes or no.")
    _all_valid(lines + listed)
    assert lines[0].id == "coco_pope_random-1"
    assert _turns(lines[0]) == [("user", "Is there a car in the image?"), ("assistant", "no")]
    assert lines[1].meta == {"task": "pope", "source": "pope", "variant": "coco_pope_random", "question_id": 2,
                             "label": "yes"}  # fmt: skip
    assert listed[0].messages[0].content == "Is there a car in the image? Answer yes or no."
    rows[1]["label"] = "maybe"
    with pytest.raises(ImportRowError, match=r"bad.json: line 2: label: expected 'yes' or 'no'"):
        from_pope(_write_jsonl(tmp_path / "bad.json", rows))


# --------------------------------------------------------------------------------------------------------
# LLaVA caps_boxes


def test_llava_caps_boxes(tmp_path):
    rows = [
        {"id": "000000000001", "image": "000000000001.jpg", "captions": ["Two cats.", "cats on a bed"],
         "instances": [{"category": "cat", "bbox": [0.1, 0.2, 0.5, 0.6]}, {"category": "bed", "bbox": [0, 0, 1, 1]},
                       {"category": "cat", "bbox": [0.5, 0.5, 0.75, 1.0]}]},
        {"id": "000000000002", "image": "000000000002.jpg", "captions": ["A dog."],
         "instances": [{"category": "dog", "bbox": [0.0, 0.0, 0.5, 0.5]}]},
        {"id": "000000000003", "image": "000000000003.jpg", "captions": ["Nothing."], "instances": []},
    ]  # fmt: skip
    path = _write_jsonl(tmp_path / "caps_boxes.jsonl", rows)
    Image.new("RGB", (40, 20)).save(tmp_path / "000000000002.jpg")
    report = ImportReport()
    records = from_llava_caps_boxes(
        path, image_sizes={"000000000001.jpg": (200, 100)}, image_root=tmp_path, report=report
    )
    _all_valid(records)
    assert [r.id for r in records] == [
        "llava-caps-000000000001-caption", "llava-caps-000000000001-detection-0",
        "llava-caps-000000000001-detection-1", "llava-caps-000000000002-caption",
        "llava-caps-000000000002-detection-0", "llava-caps-000000000003-caption",
    ]  # fmt: skip
    cap, cats = records[0], records[1]
    assert _turns(cap) == [("user", "[caption] please describe this image?"), ("assistant", "Two cats.")]
    assert cap.meta["captions"] == ["Two cats.", "cats on a bed"] and cap.meta["categories"] == ["bed", "cat"]
    assert [o.box for o in cats.objects] == [(20.0, 20.0, 100.0, 60.0), (100.0, 50.0, 150.0, 100.0)]
    assert _turns(cats) == [("user", "[detection] cat"), ("assistant", "<p>cat</p><box:0><box:1>")]
    assert records[4].objects[0].box == (0.0, 0.0, 20.0, 10.0)  # size read from the image header
    assert report.n_skipped == 0
    # Without sizes the captions remain and each (image, category) detection is counted as skipped.
    report = ImportReport()
    assert len(from_llava_caps_boxes(path, report=report)) == 3
    assert report.skipped == {"no image size": 3}


# --------------------------------------------------------------------------------------------------------
# Flickr30k Entities

_SENTENCES = """\
[/EN#18/people A man] in [/EN#19/clothing an orange hat] starring at [/EN#0/notvisual something] .
[/EN#18/people A man] hugs [/EN#20/people/other two kids] on [/EN#21/scene a street] .
[/EN#0/notvisual Nobody] is [/EN#21/scene here] .
"""

_ANNOTATION = """\
<annotation>
  <filename>1000.jpg</filename>
  <size><width>500</width><height>375</height><depth>3</depth></size>
  <object><name>18</name><bndbox><xmin>1</xmin><ymin>11</ymin><xmax>100</xmax><ymax>300</ymax></bndbox></object>
  <object><name>19</name><bndbox><xmin>30</xmin><ymin>11</ymin><xmax>60</xmax><ymax>40</ymax></bndbox></object>
  <object><name>20</name><bndbox><xmin>200</xmin><ymin>100</ymin><xmax>260</xmax><ymax>375</ymax></bndbox></object>
  <object><name>20</name><name>22</name>
    <bndbox><xmin>300</xmin><ymin>100</ymin><xmax>350</xmax><ymax>370</ymax></bndbox></object>
  <object><name>21</name><nobndbox>0</nobndbox><scene>1</scene></object>
</annotation>
"""


@pytest.fixture
def flickr_root(tmp_path):
    (tmp_path / "Sentences").mkdir()
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Sentences" / "1000.txt").write_text(_SENTENCES, encoding="utf-8")
    (tmp_path / "Annotations" / "1000.xml").write_text(_ANNOTATION, encoding="utf-8")
    return tmp_path


def test_flickr30k_grounding(flickr_root):
    report = ImportReport()
    records = from_flickr30k_grounding(flickr_root, report=report)
    _all_valid(records)
    assert [r.id for r in records] == ["flickr30k-1000-0", "flickr30k-1000-1"]
    r0, r1 = records
    assert r0.image == "1000.jpg"
    assert _turns(r0) == [
        ("user", "[grounding] describe this image in detail"),
        ("assistant", "<p>A man</p><box:0> in <p>an orange hat</p><box:1> starring at something ."),
    ]
    # VOC's 1-based inclusive pixels -> the continuous span they cover.
    assert [o.box for o in r0.objects] == [(0.0, 10.0, 100.0, 300.0), (29.0, 10.0, 60.0, 40.0)]
    assert [o.label for o in r0.objects] == ["A man", "an orange hat"]
    assert r0.meta["caption"] == "A man in an orange hat starring at something ."
    assert r0.meta["phrases"][1] == {
        "phrase": "an orange hat",
        "entity": "19",
        "types": ["clothing"],
        "boxes": [1],
    }
    # Entity 20 has two boxes (one <object> also names entity 22); the scene entity 21 stays plain text.
    assert r1.messages[1].content == "<p>A man</p><box:0> hugs <p>two kids</p><box:1><box:2> on a street ."
    assert [o.box for o in r1.objects][1:] == [(199.0, 99.0, 260.0, 375.0), (299.0, 99.0, 350.0, 370.0)]
    assert report.skipped == {"no boxed phrase": 1}


def test_flickr30k_detection(flickr_root):
    records = from_flickr30k_detection(flickr_root, ids=["1000"])
    _all_valid(records)
    assert [r.meta["phrase"] for r in records] == ["A man", "an orange hat", "two kids"]
    kids = records[2]
    assert kids.id == "flickr30k-1000-det-2"
    assert _turns(kids) == [("user", "[detection] two kids"), ("assistant", "<p>two kids</p><box:0><box:1>")]
    assert kids.meta["entities"] == ["20"] and len(kids.objects) == 2


def test_flickr30k_errors_name_the_file(flickr_root):
    xml = flickr_root / "Annotations" / "1000.xml"
    xml.write_text(_ANNOTATION.replace("<xmin>30</xmin>", "<xmin>thirty</xmin>"), encoding="utf-8")
    with pytest.raises(ImportRowError, match=r"1000.xml: xml: object\[1\].bndbox.xmin: expected an integer"):
        from_flickr30k_grounding(flickr_root)
    xml.write_text(_ANNOTATION, encoding="utf-8")
    (flickr_root / "Sentences" / "1000.txt").write_text("fine\n[/EN#3/people oops\n", encoding="utf-8")
    with pytest.raises(ImportRowError, match=r"1000.txt: line 2: caption: malformed phrase annotation"):
        from_flickr30k_grounding(flickr_root)
    report = ImportReport()
    assert from_flickr30k_grounding(flickr_root, ids=["1000", "999"], on_error="skip", report=report) == []
    assert report.skipped == {"invalid caption": 1, "missing <file>": 1}


# --------------------------------------------------------------------------------------------------------
# LLaVA / ShareGPT and ms-swift


def test_llava_conversations(tmp_path):
    rows = [
        {"id": "000000033471", "image": "coco/train2017/000000033471.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat are the colors of the bus?"},
            {"from": "gpt", "value": "White and red."},
            {"from": "human", "value": "What feature can be seen?"},
            {"from": "gpt", "value": "A sign."}]},
        {"id": "text-1", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"images": ["a.jpg"], "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "[refer] the cat\n<image>"}, {"role": "assistant", "content": "left"}]},
    ]  # fmt: skip
    path = _write_json(tmp_path / "llava_instruct.json", rows)
    r0, r1, r2 = from_llava(path)
    _all_valid([r0, r1, r2])
    assert r0.id == "llava_instruct-0" and r0.image == "coco/train2017/000000033471.jpg"
    assert _turns(r0)[:2] == [("user", "What are the colors of the bus?"), ("assistant", "White and red.")]
    assert r0.meta == {"task": "chat", "source": "llava", "source_id": "000000033471"}
    assert r1.image is None and _turns(r1) == [("user", "Hi"), ("assistant", "Hello")]
    assert r2.image == "a.jpg" and _turns(r2)[1] == ("user", "[refer] the cat") and r2.meta["task"] == "refer"
    # JSON lines work too, and broken rows name the line and field.
    bad = [rows[1], {"id": "x", "conversations": [{"from": "robot", "value": "?"}]},
           {"id": "y", "conversations": [{"from": "human", "value": "<image> no image here"}]},
           {"id": "z", "conversations": [{"from": "gpt", "value": "I speak first"}]}]  # fmt: skip
    jsonl = _write_jsonl(tmp_path / "bad.jsonl", bad)
    with pytest.raises(
        ImportRowError, match=r"bad.jsonl: line 2: conversations\[0\].from: unknown role 'robot'"
    ):
        from_llava(jsonl)
    report = ImportReport()
    assert len(from_llava(jsonl, on_error="skip", report=report)) == 1
    assert report.skipped == {
        "invalid conversations[].from": 1,
        "missing image": 1,
        "invalid record messages[].role": 1,  # the record contract refuses it: nothing invalid gets out
    }
    with pytest.raises(ImportRowError, match=r"first.jsonl: line 1: messages\[0\].role: expected .user."):
        from_llava(_write_jsonl(tmp_path / "first.jsonl", bad[3:]))


def test_swift_objects(tmp_path):
    Image.new("RGB", (300, 200)).save(tmp_path / "dog.jpg")
    rows = [
        {"messages": [{"role": "user", "content": "<image>Find <ref-object>"},
                      {"role": "assistant", "content": "<ref-object><bbox>"}],
         "images": ["cat.jpg"], "objects": {"ref": ["the cat", "the cat"], "bbox": [[10, 20, 110, 220]]}},
        {"messages": [{"role": "user", "content": "<image>What is in <bbox>?"},
                      {"role": "assistant", "content": "A dog."}],
         "images": ["dog.jpg"], "objects": {"ref": [], "bbox": [[0.5, 0.5, 1.0, 1.0]], "bbox_type": "norm1"}},
        {"messages": [{"role": "user", "content": "<image>[detection] dogs"},
                      {"role": "assistant", "content": "<ref-object> <bbox><bbox>"}],
         "images": ["x.jpg"], "width": 640, "height": 480,
         "objects": {"ref": ["dogs"], "bbox": [[0, 0, 500, 500], [500, 500, 1000, 1000]], "bbox_type": "norm1000"}},
    ]  # fmt: skip
    path = _write_jsonl(tmp_path / "swift.jsonl", rows)
    r0, r1, r2 = from_swift(path, image_root=tmp_path)
    _all_valid([r0, r1, r2])
    assert _turns(r0) == [("user", "Find the cat"), ("assistant", "<p>the cat</p><box:0>")]
    assert r0.objects[0].box == (10.0, 20.0, 110.0, 220.0) and r0.objects[0].label == "the cat"
    assert _turns(r1)[0] == ("user", "What is in <box:0>?")
    assert r1.objects[0].box == (150.0, 100.0, 300.0, 200.0)  # norm1 scaled by the image header's size
    assert r2.messages[1].content == "<p>dogs</p><box:0><box:1>" and r2.meta["task"] == "detection"
    assert [o.box for o in r2.objects] == [(0.0, 0.0, 320.0, 240.0), (320.0, 240.0, 640.0, 480.0)]
    assert [o.label for o in r2.objects] == ["dogs", None]


def test_swift_errors(tmp_path):
    base = {"messages": [{"role": "user", "content": "<image>Where is <ref-object>?"},
                         {"role": "assistant", "content": "<bbox>"}], "images": ["nowhere.jpg"]}  # fmt: skip
    norm = base | {"objects": {"ref": ["the cat"], "bbox": [[0.1, 0.1, 0.2, 0.2]], "bbox_type": "norm1"}}
    with pytest.raises(ImportRowError, match=r"line 1: objects.bbox_type: norm1 boxes need the image size"):
        from_swift(_write_jsonl(tmp_path / "a.jsonl", [norm]))
    few = base | {"objects": {"ref": ["the cat"], "bbox": []}}
    with pytest.raises(ImportRowError, match=r"line 1: objects.bbox: more <bbox> placeholders than 0 boxes"):
        from_swift(_write_jsonl(tmp_path / "b.jsonl", [few]))
    bad_box = base | {"objects": {"ref": ["the cat"], "bbox": [[5, 5, 1, 1]]}}
    with pytest.raises(ImportRowError, match=r"objects.bbox\[0\]: not a valid xyxy pixel box"):
        from_swift(_write_jsonl(tmp_path / "c.jsonl", [bad_box]))
    two = base | {"images": ["a.jpg", "b.jpg"], "objects": {"ref": ["x"], "bbox": [[0, 0, 1, 1]]}}
    with pytest.raises(ImportRowError, match=r"images: 2 images; a record holds one image"):
        from_swift(_write_jsonl(tmp_path / "d.jsonl", [two]))


def test_on_error_must_be_known(tmp_path):
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'skip'"):
        from_pope(_write_jsonl(tmp_path / "p.json", []), on_error="ignore")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------
# Real data

# (sentences, objects, images) per split, as published (docs/evaluation.md).
_PUBLISHED = {
    "refcoco_val": (10834, 3811, 1500), "refcoco_testA": (5657, 1975, 750), "refcoco_testB": (5095, 1810, 750),
    "refcoco+_val": (10758, 3805, 1500), "refcoco+_testA": (5726, 1975, 750), "refcoco+_testB": (4889, 1798, 750),
    "refcocog_val": (4896, 2573, 1300), "refcocog_test": (9602, 5023, 2600),
}  # fmt: skip


@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(_PUBLISHED))
def test_real_minigptv2_refcoco_split_sizes(name):
    records = from_minigptv2_refcoco(_realdata("refcoco_minigptv2", f"{name}.json"))
    sentences = len(records)
    objects = len({r.meta["object"] for r in records})
    images = len({r.image for r in records})
    assert (sentences, objects, images) == _PUBLISHED[name]
    dataset, split = name.rsplit("_", 1)
    assert all(r.meta["dataset"] == dataset and r.meta["split"] == split for r in records)
    assert all(r.messages[0].content.startswith("[refer] give me the location of ") for r in records)
    if name == "refcoco_testA":
        first = records[0]
        assert first.image == "COCO_train2014_000000581282.jpg"
        assert first.objects[0].box == pytest.approx((3.24, 159.31, 159.64, 472.12))


@pytest.mark.realdata
@pytest.mark.parametrize("variant", ["random", "popular", "adversarial"])
def test_real_pope(variant):
    records = from_pope(_realdata("pope", f"coco_pope_{variant}.json"))
    assert len(records) == 3000
    assert sum(r.meta["label"] == "yes" for r in records) == 1500
    assert len({r.image for r in records}) == 500
    assert [r.meta["question_id"] for r in records] == sorted(r.meta["question_id"] for r in records)
    assert records[0].messages[0].content.startswith("Is there a ")


@pytest.mark.realdata
def test_real_llava_caps_boxes():
    path = _realdata("coco_captions", "llava_caps_boxes_coco2014_val_80.jsonl")
    report = ImportReport()
    captions = from_llava_caps_boxes(path, report=report)
    assert len(captions) == 80 and report.rows == 80
    assert all(len(r.meta["captions"]) >= 5 and r.meta["task"] == "caption" for r in captions)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    pairs = {(row["image"], inst["category"]) for row in rows for inst in row["instances"]}
    assert report.skipped == {"no image size": len(pairs)}
    sizes = {row["image"]: (640, 480) for row in rows}
    records = from_llava_caps_boxes(path, image_sizes=sizes)
    detections = [r for r in records if r.meta["task"] == "detection"]
    assert len(detections) == len(pairs)
    assert sum(len(r.objects) for r in detections) == sum(len(row["instances"]) for row in rows)

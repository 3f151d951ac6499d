"""Data in and out: the COCO instances and ODVG importers, and `groundlm data import / export` end to end."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from groundlm.cli import app
from groundlm.data.importers import ImportReport, ImportRowError, from_coco_instances, from_odvg, from_swift
from groundlm.records import BOX_SLOT, read_jsonl

from .test_importers import _all_valid, _turns, _write_json, _write_jsonl

runner = CliRunner()


def resolved(record, digits: int = 3):
    """The conversation with every slot replaced by its object's box: equal for records that say the same thing
    whatever order their objects are numbered in."""

    def box(m):
        return str([round(v, digits) for v in record.objects[int(m.group(1))].box])

    return [(m.role, BOX_SLOT.sub(box, m.content)) for m in record.messages]


# --------------------------------------------------------------------------------------------------------
# COCO instances


def _coco_instances():
    return {
        "images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg", "width": 640, "height": 480},
                   {"id": 7, "file_name": "COCO_val2014_000000000007.jpg", "width": 100, "height": 50}],
        "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 42, "category_id": 18, "bbox": [10, 20, 100, 50], "iscrowd": 0,
             "segmentation": [[10, 20, 110, 20, 110, 70], [1, 2, 3, 4]]},
            {"id": 2, "image_id": 42, "category_id": 1, "bbox": [0, 0, 640.004, 480], "iscrowd": 1,
             "segmentation": {"size": [480, 640], "counts": [0, 307200]}},
            {"id": 3, "image_id": 42, "category_id": 18, "bbox": [300, 200, 40, 30], "iscrowd": 0},
            {"id": 4, "image_id": 42, "category_id": 1, "bbox": [5, 5, 10, 10], "iscrowd": 0},
            {"id": 5, "image_id": 7, "category_id": 1, "bbox": [0, 0, 100, 50.01], "iscrowd": 1},
        ],
    }  # fmt: skip


def test_coco_instances_one_detection_record_per_image_and_category(tmp_path):
    path = _write_json(tmp_path / "instances_val2014.json", _coco_instances())
    report = ImportReport()
    dog, person = from_coco_instances(path, report=report)
    _all_valid([dog, person])
    assert dog.id == "coco-det-42-18" and dog.image == "COCO_val2014_000000000042.jpg"
    assert _turns(dog) == [("user", "[detection] dog"), ("assistant", "<p>dog</p><box:0><box:1>")]
    assert [o.box for o in dog.objects] == [(10.0, 20.0, 110.0, 70.0), (300.0, 200.0, 340.0, 230.0)]
    assert dog.objects[0].mask == [[10.0, 20.0, 110.0, 20.0, 110.0, 70.0]]  # the 2-point ring is dropped
    assert dog.objects[1].mask is None and {o.label for o in dog.objects} == {"dog"}
    assert dog.meta == {"task": "detection", "source": "coco_instances", "image_id": 42, "category_id": 18,
                        "width": 640, "height": 480}  # fmt: skip
    # crowd boxes are left out by default; image 7 has only a crowd, so it gives no record
    assert [o.box for o in person.objects] == [(5.0, 5.0, 15.0, 15.0)]
    assert report.skipped == {"crowd": 2, "degenerate polygon ring": 1}
    assert report.rows == 7 and report.records == 2


def test_coco_instances_keeps_crowds_on_request_inside_the_image(tmp_path):
    path = _write_json(tmp_path / "instances_val2014.json", _coco_instances())
    records = {r.id: r for r in from_coco_instances(path, crowd="keep", masks=False)}
    person = records["coco-det-42-1"]
    assert person.meta["crowd"] == [0] and person.objects[0].box == (0.0, 0.0, 640.0, 480.0)  # clipped
    assert records["coco-det-7-1"].objects[0].box == (0.0, 0.0, 100.0, 50.0)
    assert all(o.mask is None for r in records.values() for o in r.objects)
    with pytest.raises(ValueError, match="crowd must be 'skip' or 'keep'"):
        from_coco_instances(path, crowd="merge")


def test_coco_instances_broken_annotation_names_file_row_and_field(tmp_path):
    data = _coco_instances()
    del data["annotations"][2]["bbox"]
    data["annotations"][3]["category_id"] = 99
    path = _write_json(tmp_path / "instances_val2014.json", data)
    with pytest.raises(ImportRowError, match=r"instances_val2014.json: annotations\[2\]: bbox: expected 4 finite"):
        from_coco_instances(path)
    report = ImportReport()
    records = from_coco_instances(path, on_error="skip", report=report)
    assert [r.id for r in records] == ["coco-det-42-18"] and len(records[0].objects) == 1
    assert report.skipped["bad box bbox"] == 1 and report.skipped["unknown category_id"] == 1


# --------------------------------------------------------------------------------------------------------
# ODVG


def _odvg_rows():
    # the two examples of mmdetection's configs/mm_grounding_dino/dataset_prepare.md, and a Flickr30k row as
    # Open-GroundingDino's converter writes it (one region per box, no tokens_positive)
    return [
        {"filename": "obj365_train_000000734304.jpg", "height": 512, "width": 769, "detection": {"instances": [
            {"bbox": [109.4768676992, 346.0190429696, 135.1918335098, 365.3641967616], "label": 2, "category": "chair"},
            {"bbox": [58.6123657059, 323.2281494016, 242.6005859067, 451.4166870016], "label": 8, "category": "car"},
            {"bbox": [1, 2, 3, 4], "label": 2, "category": "chair"}]}},
        {"filename": "2405116.jpg", "height": 375, "width": 500, "grounding": {
            "caption": "Two surfers walking down the shore. sand on the beach.",
            "regions": [
                {"bbox": [206, 156, 282, 248], "phrase": "Two surfers", "tokens_positive": [[0, 3], [4, 11]]},
                {"bbox": [303, 338, 443, 343], "phrase": "sand", "tokens_positive": [[36, 40]]},
                {"bbox": [[327, 223, 421, 282], [300, 200, 400, 210]], "phrase": "beach",
                 "tokens_positive": [[48, 53]]}]}},
        {"filename": "3028766968.jpg", "height": 375, "width": 500, "grounding": {
            "caption": "Man with a black shirt sits behind a desk .",
            "regions": [{"bbox": [10, 10, 200, 370], "phrase": "Man"},
                        {"bbox": [30, 100, 150, 200], "phrase": "a black shirt"},
                        {"bbox": [250, 200, 499, 374], "phrase": "a desk"},
                        {"bbox": [260, 190, 300, 210], "phrase": "a desk"}]}},
    ]  # fmt: skip


def test_odvg_detection_rows_become_one_record_per_category(tmp_path):
    path = _write_jsonl(tmp_path / "o365.jsonl", _odvg_rows()[:1])
    chair, car = from_odvg(path)
    _all_valid([chair, car])
    assert chair.id == "o365-0-det-0" and chair.image == "obj365_train_000000734304.jpg"
    assert _turns(chair) == [("user", "[detection] chair"), ("assistant", "<p>chair</p><box:0><box:1>")]
    assert chair.objects[1].box == (1.0, 2.0, 3.0, 4.0) and car.objects[0].label == "car"
    assert chair.meta == {"task": "detection", "source": "odvg", "width": 769, "height": 512}
    # without `category` the label map names the label
    rows = [{"filename": "a.jpg", "height": 10, "width": 10,
             "detection": {"instances": [{"bbox": [1, 1, 5, 5], "label": 0}]}}]  # fmt: skip
    labelled = _write_jsonl(tmp_path / "od.jsonl", rows)
    _write_json(tmp_path / "label_map.json", {"0": "cat"})
    (cat,) = from_odvg(labelled, label_map=tmp_path / "label_map.json")
    assert _turns(cat)[0] == ("user", "[detection] cat")
    with pytest.raises(ImportRowError, match=r"od.jsonl: line 1: detection.instances\[0\].category: missing"):
        from_odvg(labelled)


def test_odvg_grounding_places_phrases_at_tokens_positive(tmp_path):
    path = _write_jsonl(tmp_path / "vg.jsonl", _odvg_rows()[1:])
    surfers, flickr = from_odvg(path)
    _all_valid([surfers, flickr])
    assert surfers.id == "vg-0" and surfers.meta["task"] == "grounding"
    assert surfers.messages[1].content == (
        "<p>Two surfers</p><box:0> walking down the shore. <p>sand</p><box:1> on the <p>beach</p><box:2><box:3>."
    )
    assert [o.label for o in surfers.objects] == ["Two surfers", "sand", "beach", "beach"]
    assert surfers.objects[3].box == (300.0, 200.0, 400.0, 210.0)
    assert surfers.meta["caption"] == "Two surfers walking down the shore. sand on the beach."
    # no tokens_positive: the phrase is found in the caption; one region per box of the same phrase share it
    assert flickr.messages[1].content == (
        "<p>Man</p><box:0> with <p>a black shirt</p><box:1> sits behind <p>a desk</p><box:2><box:3> ."
    )


def test_odvg_overlapping_and_disjoint_spans(tmp_path):
    rows = [{"filename": "a.jpg", "height": 100, "width": 100, "grounding": {
        "caption": "the tall man and the man again",
        "regions": [{"bbox": [0, 0, 10, 10], "phrase": "the tall man", "tokens_positive": [[0, 12]]},
                    {"bbox": [5, 5, 20, 20], "phrase": "man", "tokens_positive": [[9, 12]]},
                    {"bbox": [50, 50, 60, 60], "phrase": "the man", "tokens_positive": [[17, 20], [21, 24]]},
                    {"bbox": [70, 70, 80, 80], "phrase": "man again", "tokens_positive": [[21, 24], [25, 30]]}]}},
            {"filename": "b.jpg", "height": 100, "width": 100, "grounding": {
        "caption": "a cat", "regions": [{"bbox": [0, 0, 1, 1], "phrase": "cat", "tokens_positive": [[2, 5]]},
                                        {"bbox": [0, 0, 2, 2], "phrase": "a cat", "tokens_positive": [[0, 5]]}]}}]  # fmt: skip
    report = ImportReport()
    a, b = from_odvg(_write_jsonl(tmp_path / "vg.jsonl", rows), report=report)
    # the nested "man" and the overlapping "man again" cannot be tagged beside the phrases placed first
    assert a.messages[1].content == "<p>the tall man</p><box:0> and <p>the man</p><box:1> again"
    assert b.messages[1].content == "<p>a cat</p><box:0>" and b.objects[0].box == (0.0, 0.0, 2.0, 2.0)
    assert report.skipped == {"overlapping tokens_positive": 3}
    # spans far apart are two mentions of the same boxes
    far = [{"filename": "c.jpg", "height": 9, "width": 9, "grounding": {"caption": "dog. a big dog", "regions": [
        {"bbox": [1, 1, 2, 2], "phrase": "dog", "tokens_positive": [[0, 3], [11, 14]]}]}}]  # fmt: skip
    (c,) = from_odvg(_write_jsonl(tmp_path / "far.jsonl", far))
    assert c.messages[1].content == "<p>dog</p><box:0>. a big <p>dog</p><box:0>"


def test_odvg_broken_rows_name_file_line_and_field(tmp_path):
    good = _odvg_rows()[1]
    bad_span = json.loads(json.dumps(good))
    bad_span["grounding"]["regions"][1]["tokens_positive"] = [[36, 400]]
    missing = {k: v for k, v in good.items() if k != "width"}
    not_in_caption = json.loads(json.dumps(good))
    del not_in_caption["grounding"]["regions"][0]["tokens_positive"]
    not_in_caption["grounding"]["regions"][0]["phrase"] = "three dogs"
    path = _write_jsonl(tmp_path / "vg.jsonl", [good, bad_span, missing, not_in_caption, {"filename": "x.jpg",
                                                "height": 1, "width": 1}])  # fmt: skip
    with pytest.raises(
        ImportRowError, match=r"vg.jsonl: line 2: grounding.regions\[1\].tokens_positive\[0\]: \[36, 400\] is not"
    ):
        from_odvg(path)
    report = ImportReport()
    assert len(from_odvg(path, on_error="skip", report=report)) == 1
    assert report.skipped == {"bad span grounding.regions[].tokens_positive[]": 1, "missing width": 1,
                              "invalid grounding.regions[].phrase": 1, "missing detection": 1}  # fmt: skip


# --------------------------------------------------------------------------------------------------------
# groundlm data import / export


def test_cli_import_coco_instances_writes_records_that_check(tmp_path):
    src = _write_json(tmp_path / "instances_val2014.json", _coco_instances())
    result = runner.invoke(app, ["data", "import", "coco-instances", str(src), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "read 7 rows, made 2 records" in result.output and "skipped 3 rows (crowd: 2" in result.output
    check = runner.invoke(app, ["data", "check", str(tmp_path / "out" / "records.jsonl")])
    assert check.exit_code == 0 and "2 valid records" in check.output and "detection" in check.output
    again = runner.invoke(app, ["data", "import", "coco-instances", str(src), "--out", str(tmp_path / "out")])
    assert again.exit_code == 1 and "exists (use --force" in again.output
    keep = ["data", "import", "coco-instances", str(src), "--out", str(tmp_path / "out"), "--crowd", "keep",
            "--force"]  # fmt: skip
    assert runner.invoke(app, keep).exit_code == 0
    assert len(read_jsonl(tmp_path / "out" / "records.jsonl")) == 3


def test_cli_import_bad_row_names_file_line_and_field_or_skips(tmp_path):
    rows = _odvg_rows()
    rows[1]["grounding"]["regions"][0]["bbox"] = [206, 156, 100, 248]
    src = _write_jsonl(tmp_path / "vg.jsonl", rows)
    failed = runner.invoke(app, ["data", "import", "odvg", str(src), "--out", str(tmp_path / "a")])
    assert failed.exit_code == 1
    assert "vg.jsonl: line 2: grounding.regions[0].bbox: not a valid xyxy pixel box" in failed.output
    assert "--on-error skip" in failed.output and not (tmp_path / "a" / "records.jsonl").exists()
    skipped = runner.invoke(app, ["data", "import", "odvg", str(src), "--out", str(tmp_path / "b"),
                                  "--on-error", "skip", "--seed", "3"])  # fmt: skip
    assert skipped.exit_code == 0, skipped.output
    assert "skipped 1 rows (bad box grounding.regions[].bbox: 1)" in skipped.output
    assert len(read_jsonl(tmp_path / "b" / "records.jsonl")) == 3  # two categories + one grounded caption


def test_cli_import_refuses_unknown_formats_and_options_that_do_not_apply(tmp_path):
    src = _write_jsonl(tmp_path / "vg.jsonl", _odvg_rows())
    unknown = runner.invoke(app, ["data", "import", "yolo", str(src), "--out", str(tmp_path)])
    assert unknown.exit_code == 1 and "unknown import format 'yolo'" in unknown.output
    wrong = runner.invoke(app, ["data", "import", "odvg", str(src), "--out", str(tmp_path), "--codec", "llava"])
    assert wrong.exit_code == 1 and "--codec does not apply to odvg" in wrong.output


def test_cli_export_swift_then_import_swift_gives_the_same_records(tmp_path):
    src = _write_jsonl(tmp_path / "vg.jsonl", _odvg_rows())
    assert runner.invoke(app, ["data", "import", "odvg", str(src), "--out", str(tmp_path / "r")]).exit_code == 0
    records = read_jsonl(tmp_path / "r" / "records.jsonl")
    result = runner.invoke(app, ["data", "export", "swift", str(tmp_path / "r" / "records.jsonl"),
                                 "--out", str(tmp_path / "swift")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "read 4 records, wrote 4 rows" in result.output
    back = runner.invoke(app, ["data", "import", "swift", str(tmp_path / "swift" / "data.jsonl"),
                               "--out", str(tmp_path / "back")])  # fmt: skip
    assert back.exit_code == 0, back.output
    again = read_jsonl(tmp_path / "back" / "records.jsonl")
    assert [resolved(r) for r in again] == [resolved(r) for r in records]
    assert [r.image for r in again] == [r.image for r in records]
    assert [r.meta["task"] for r in again] == ["detection", "detection", "grounding", "grounding"]
    assert from_swift(tmp_path / "swift" / "data.jsonl")[0].objects[0].box == records[0].objects[0].box


def test_cli_export_names_the_record_line_and_field_without_an_image_size(tmp_path):
    Image.new("RGB", (40, 20)).save(tmp_path / "here.png")
    record = {"id": "r1", "image": "here.png", "objects": [{"box": [1, 2, 30, 18]}],
              "messages": [{"role": "user", "content": "[refer] the thing"},
                           {"role": "assistant", "content": "<box:0>"}]}  # fmt: skip
    lost = {**record, "id": "r2", "image": "gone.png"}
    path = tmp_path / "records.jsonl"
    path.write_text(json.dumps(record) + "\n\n" + json.dumps(lost) + "\n", encoding="utf-8")
    failed = runner.invoke(app, ["data", "export", "llava", str(path), "--out", str(tmp_path / "x")])
    assert failed.exit_code == 1
    assert f"{path}:3: record 'r2': image: its boxes need the image size" in failed.output
    ok = runner.invoke(app, ["data", "export", "llava", str(path), "--out", str(tmp_path / "x"), "--on-error",
                             "skip", "--codec", "ferret"])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert "skipped 1 records (no image size: 1)" in ok.output
    (row,) = json.loads((tmp_path / "x" / "data.json").read_text())
    # the image header gives 40x20; ferret truncates v * 1000 in the original image's frame
    assert row["conversations"][1] == {"from": "gpt", "value": "[25, 100, 750, 900]"}
    refused = runner.invoke(app, ["data", "export", "swift", str(path), "--out", str(tmp_path / "y"),
                                  "--smart-resize"])  # fmt: skip
    assert refused.exit_code == 1 and "--smart-resize does not apply to swift" in refused.output
    heads = runner.invoke(app, ["data", "export", "llava", str(path), "--out", str(tmp_path / "z"),
                                "--codec", "embedding"])  # fmt: skip
    assert heads.exit_code == 1 and "writes no coordinates in text" in heads.output

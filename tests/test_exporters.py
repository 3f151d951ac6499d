"""Exporters: each target's layout, boxes written through every text codec in its frame and read back within one
bin, Qwen2.5-VL pixels (original and smart_resize'd), and export → import round trips."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from groundlm.data.exporters import (
    EXPORTERS,
    ExportError,
    ExportReport,
    LlamaFactoryExporter,
    LlavaExporter,
    Locations,
    Qwen25VLExporter,
    SwiftExporter,
    smart_resize,
    write_export,
)
from groundlm.data.exporters.locations import _Settings
from groundlm.data.importers import from_llava, from_swift
from groundlm.data.shapes import ShapesConfig, write_shapes
from groundlm.geometry import Frame
from groundlm.location import CODECS
from groundlm.records import GroundTruthObject, Message, Record, read_jsonl

from .test_data_io import resolved

# One bin of each text codec, as a fraction of its frame (kosmos2: a 32x32 cell; paligemma: 1/1023).
BIN = {"text": 1 / 100, "tokens": 1 / 100, "kosmos2": 1 / 32, "florence2": 1 / 1000, "paligemma": 1 / 1023,
       "qwen_vl": 1 / 999, "qwen2_vl": 1 / 999, "internvl": 1 / 1000, "shikra": 1 / 1000, "llava": 1 / 100,
       "ferret": 1 / 1000, "cogvlm": 1 / 1000}  # fmt: skip


def _record(width=300, height=200, rid="r") -> Record:
    """A non-square image (so pad and resize frames differ) with a detection answer and an input box."""
    objects = [GroundTruthObject((30.0, 20.0, 150.0, 180.0), "cat"), GroundTruthObject((200.0, 50.0, 290.0, 120.0),
               "cat"), GroundTruthObject((10.0, 10.0, 60.0, 40.0), "mug")]  # fmt: skip
    messages = [Message("system", "Be brief."), Message("user", "[detection] cats"),
                Message("assistant", "<p>cats</p><box:0><box:1>"), Message("user", "[identify] what is this <box:2>"),
                Message("assistant", "a mug")]  # fmt: skip
    return Record(rid, "img.jpg", objects, messages, {"width": width, "height": height})


@pytest.mark.parametrize("name", sorted(BIN))
def test_every_text_codec_writes_boxes_read_back_within_one_bin(name):
    record = _record()
    row = LlavaExporter(codec=name).row(record, None)
    turns = row["conversations"]
    assert turns[0] == {"from": "system", "value": "Be brief."}
    assert turns[1] == {"from": "human", "value": "<image>\n[detection] cats"}
    codec = CODECS[name](_Settings(name))  # a reader of the same format, built as the exporter builds its own
    frame = Frame(300, 200, codec.frame or "resize")
    parsed = codec.parse(turns[2]["value"])
    assert len(parsed) == 2, turns[2]["value"]
    for obj, want in zip(parsed, record.objects[:2], strict=True):
        got = frame.normalize(want.box)
        assert all(abs(a - b) <= BIN[name] + 1e-9 for a, b in zip(obj.box_norm, got, strict=True)), (obj, got)
    # the user turn's input box is written too (no slot survives)
    assert "<box:" not in turns[2]["value"] + turns[3]["value"]


def test_llava_default_is_the_padded_square_and_frame_can_be_overridden():
    record = _record()
    padded = LlavaExporter().row(record, None)["conversations"][2]["value"]
    # 300x200 padded to 300x300 with the image 50 px down: y 20 → 70/300
    assert padded == "cats [0.10, 0.23, 0.50, 0.77;0.67, 0.33, 0.97, 0.57]"
    squashed = LlavaExporter(frame="resize").row(record, None)["conversations"][2]["value"]
    assert squashed == "cats [0.10, 0.10, 0.50, 0.90;0.67, 0.25, 0.97, 0.60]"
    text = LlavaExporter(codec="text").row(record, None)["conversations"][2]["value"]
    assert text == "<p>cats</p> {<10><10><50><90>}<delim>{<66><25><96><60>}"


def test_qwen2_5_vl_writes_pixels_of_the_original_or_the_smart_resized_image():
    record = _record()
    row = Qwen25VLExporter().row(record, None)
    assert set(row) == {"id", "image", "conversations"} and row["image"] == "img.jpg"
    answer = row["conversations"][2]["value"]
    assert answer == ('```json\n[{"bbox_2d": [30, 20, 150, 180], "label": "cats"}, '
                      '{"bbox_2d": [200, 50, 290, 120], "label": "cats"}]\n```')  # fmt: skip
    assert row["conversations"][3]["value"] == "[identify] what is this [10, 10, 60, 40]"
    resized = Qwen25VLExporter(smart_resize=True).row(record, None)["conversations"][2]["value"]
    h, w = smart_resize(200, 300)
    assert (h, w) == (196, 308)
    want = [round(30 * w / 300), round(20 * h / 200), round(150 * w / 300), round(180 * h / 200)]
    assert json.loads(resized.split("\n")[1])[0]["bbox_2d"] == want


def test_smart_resize_follows_the_published_rule():
    assert smart_resize(375, 500) == (364, 504)  # each side rounded to a multiple of 28
    assert smart_resize(3000, 4000) == (2996, 4004)  # under max_pixels: only rounded
    assert smart_resize(10, 10) == (56, 56)  # below min_pixels (4*28*28): scaled up, ceiled
    assert smart_resize(1000, 1000, max_pixels=256 * 28 * 28) == (448, 448)  # above: scaled down, floored
    assert smart_resize(480, 640, max_pixels=200_000) == (364, 504)
    with pytest.raises(ValueError, match="aspect ratio"):
        smart_resize(10, 2010)


def test_llama_factory_rows_and_dataset_info(tmp_path):
    record = _record()
    path = write_export(LlamaFactoryExporter(codec="internvl"), [record], tmp_path)
    (row,) = json.loads(path.read_text())
    assert row["images"] == ["img.jpg"]
    assert row["messages"][1] == {"role": "user", "content": "<image>[detection] cats"}
    assert row["messages"][2]["content"] == "<ref>cats</ref><box>[[100, 100, 500, 900], [667, 250, 967, 600]]</box>"
    info = json.loads((tmp_path / "dataset_info.json").read_text())
    assert info["groundlm"]["file_name"] == "data.json" and info["groundlm"]["formatting"] == "sharegpt"
    assert info["groundlm"]["columns"] == {"messages": "messages", "images": "images"}
    assert info["groundlm"]["tags"]["user_tag"] == "user"
    default = LlamaFactoryExporter().row(record, None)["messages"][2]["content"]
    assert '"bbox_2d": [30, 20, 150, 180]' in default  # qwen2_5_vl by default


def test_records_without_boxes_round_trip_through_llava_and_llama_factory(tmp_path):
    records = [Record("a", "x.jpg", [], [Message("user", "[caption] please describe this image?"),
                                          Message("assistant", "a red circle")], {}),
               Record("b", None, [], [Message("user", "hi"), Message("assistant", "hello")], {})]  # fmt: skip
    for name in ("llava", "llama-factory"):
        path = write_export(EXPORTERS[name](), records, tmp_path / name)
        back = from_llava(path)
        assert [(r.image, resolved(r)) for r in back] == [(r.image, resolved(r)) for r in records], name


def test_swift_rows_are_the_inverse_of_from_swift(tmp_path):
    record = _record()
    row = SwiftExporter().row(record, None)
    assert row["messages"][1] == {"role": "user", "content": "<image>[detection] cats"}
    assert row["messages"][2]["content"] == "<ref-object><bbox><bbox>"
    assert row["messages"][3]["content"] == "[identify] what is this <bbox>"
    assert row["objects"] == {"ref": ["cats"], "bbox": [[30.0, 20.0, 150.0, 180.0], [200.0, 50.0, 290.0, 120.0],
                              [10.0, 10.0, 60.0, 40.0]], "bbox_type": "real"}  # fmt: skip
    path = write_export(SwiftExporter(), [record], tmp_path)
    (back,) = from_swift(path)
    assert resolved(back) == resolved(record) and back.image == "img.jpg"
    literal = Record("l", None, [], [Message("user", "what is <bbox>?"), Message("assistant", "a tag")], {})
    with pytest.raises(ExportError, match=r"record 0: record 'l': messages\[0\].content: holds a literal <bbox>"):
        write_export(SwiftExporter(), [literal], tmp_path / "l")


def test_shapes_world_round_trips_through_swift_with_sizes_from_the_image_files(tmp_path):
    path = write_shapes(tmp_path / "s", 3, "val", config=ShapesConfig(image_size=64), progress=False)
    records = read_jsonl(path)
    out = write_export(SwiftExporter(), records, tmp_path / "swift", image_root=path.parent)
    back = from_swift(out)
    assert len(back) == len(records)
    assert [resolved(r) for r in back] == [resolved(r) for r in records]
    # LLaVA JSON needs image sizes for its boxes: read from the ShapesWorld PNG headers
    rows = json.loads(write_export(LlavaExporter(), records, tmp_path / "llava", image_root=path.parent).read_text())
    assert len(rows) == len(records) and all("<box:" not in t["value"] for r in rows for t in r["conversations"])


def test_export_errors_name_the_record_and_field_or_are_skipped_and_counted(tmp_path):
    lost = Record("lost", "gone.jpg", [GroundTruthObject((1, 1, 5, 5))],
                  [Message("user", "[refer] it"), Message("assistant", "<box:0>")], {})  # fmt: skip
    with pytest.raises(ExportError, match=r"records.jsonl:7: record 'lost': image: its boxes need the image size"):
        write_export(LlavaExporter(), [lost], tmp_path, image_root=tmp_path, where=lambda i: "records.jsonl:7")
    Image.new("RGB", (20, 10)).save(tmp_path / "ok.jpg")
    fine = Record("fine", "ok.jpg", lost.objects, lost.messages, {})
    report = ExportReport()
    path = write_export(LlavaExporter(frame="resize"), [lost, fine], tmp_path / "o", image_root=tmp_path,
                        on_error="skip", report=report)  # fmt: skip
    assert str(report) == "read 2 records, wrote 1 rows, skipped 1 (no image size: 1)"
    (row,) = json.loads(path.read_text())
    assert row["id"] == "fine" and row["conversations"][1]["value"] == "[0.05, 0.10, 0.25, 0.50]"


def test_locations_refuse_what_cannot_be_written():
    with pytest.raises(ValueError, match="unknown codec 'nope'"):
        Locations("nope")
    with pytest.raises(ValueError, match="writes no coordinates in text"):
        Locations("embedding")
    with pytest.raises(ValueError, match="smart_resize applies to codecs written in pixels"):
        Locations("llava", smart_resize=True)
    with pytest.raises(ValueError, match="has no pad frame"):
        Locations("qwen2_5_vl", frame="pad")


@pytest.mark.parametrize("name", ["llava", "internvl", "qwen2_vl", "shikra"])
def test_llava_json_round_trips_through_from_llava_with_the_same_codec(tmp_path, name):
    Image.new("RGB", (300, 200)).save(tmp_path / "img.jpg")
    record = _record()
    path = write_export(LlavaExporter(codec=name), [record], tmp_path / name)
    (back,) = from_llava(path, codec=name, image_root=tmp_path)
    assert len(back.objects) == len(record.objects)
    side = max(300, 200)
    for got, want in zip(back.objects, record.objects, strict=True):
        assert all(abs(a - b) <= BIN[name] * side + 1e-6 for a, b in zip(got.box, want.box, strict=True))


@pytest.mark.parametrize(("target", "fmt", "codec"), [
    ("llama-factory", "llama-factory", "qwen2_5_vl"), ("llama-factory", "llama-factory", "internvl"),
    ("qwen2_5_vl", "qwen2_5_vl", None), ("llava", "llava", "llava"),
])
def test_cli_export_then_import_gives_the_boxes_back(tmp_path, target, fmt, codec):
    """`groundlm data export` then `data import` of the same format: the same conversation and pixel boxes (one
    bin of the codec; Qwen2.5-VL's pixels of the original image round to a pixel)."""
    from typer.testing import CliRunner

    from groundlm.cli import app

    Image.new("RGB", (300, 200)).save(tmp_path / "img.jpg")
    record = _record()
    records = tmp_path / "records.jsonl"
    records.write_text(json.dumps(record.to_dict()) + "\n")
    codec_args = ["--codec", codec] if codec else []
    runner = CliRunner()
    out = runner.invoke(app, ["data", "export", target, str(records), "--out", str(tmp_path / "x"),
                              "--image-root", str(tmp_path), *codec_args])  # fmt: skip
    assert out.exit_code == 0, out.output
    (exported,) = [p for p in (tmp_path / "x").iterdir() if p.name != "dataset_info.json"]
    back = runner.invoke(app, ["data", "import", fmt, str(exported), "--out", str(tmp_path / "back"),
                               "--image-root", str(tmp_path), *(codec_args if fmt != "qwen2_5_vl" else [])])  # fmt: skip
    assert back.exit_code == 0, back.output
    (again,) = read_jsonl(tmp_path / "back" / "records.jsonl")
    assert [m.role for m in again.messages] == [m.role for m in record.messages]
    assert again.messages[2].content == "<p>cats</p><box:0><box:1>"
    tolerance = 1.0 if codec is None or codec == "qwen2_5_vl" else BIN[codec] * 300
    assert len(again.objects) == len(record.objects)
    for got, want in zip(again.objects, record.objects, strict=True):
        assert all(abs(a - b) <= tolerance + 1e-6 for a, b in zip(got.box, want.box, strict=True)), (got, want)


@pytest.mark.realdata
@pytest.mark.parametrize("name", [*sorted(BIN), "qwen2_5_vl"])
def test_refcoco_boxes_exported_in_every_codec_read_back_at_iou_above_half(name):
    """Real RefCOCO testA boxes (MiniGPT-v2's evaluation JSON) written through each codec and read back by the
    same codec score Acc@0.5 = 1: the exporter's frames and pixels are right on real, non-square images."""
    from groundlm.data.importers import from_minigptv2_refcoco
    from groundlm.geometry import box_iou

    from .conftest import REALDATA

    path = REALDATA / "refcoco_minigptv2" / "refcoco_testA.json"
    if not path.is_file():
        pytest.skip(f"real data not present: {path}")
    records = from_minigptv2_refcoco(path)
    exporter = Qwen25VLExporter() if name == "qwen2_5_vl" else LlavaExporter(codec=name)
    codec = CODECS[name](_Settings(name))
    worst = 1.0
    for record in records:
        width, height = record.meta["width"], record.meta["height"]
        answer = exporter.row(record, None)["conversations"][-1]["value"]
        if name == "qwen2_5_vl":  # pixels of the original image
            (obj,) = CODECS[name](_Settings(name, image_size=max(width, height))).parse(answer)
            box = [v * max(width, height) for v in obj.box_norm]
        else:
            (obj,) = codec.parse(answer)
            box = Frame(width, height, codec.frame or "resize").denormalize(obj.box_norm)
        worst = min(worst, box_iou(box, record.objects[0].box))
    assert len(records) == 5657 and worst >= 0.5, worst

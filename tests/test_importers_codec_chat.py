"""Chat datasets whose turns write boxes in a published location format, imported with `codec`: LLaVA,
LLaMA-Factory sharegpt, InternVL's grounding JSONL and Qwen2.5-VL's fine-tuning JSON, one row per codec, and
rows that are broken (each error naming file, line and field)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from groundlm.data.importers import ImportReport, ImportRowError, from_llava, from_sharegpt
from groundlm.geometry import Frame
from groundlm.location import CODEC_NAMES, make_codec
from groundlm.processor import ProcessorConfig
from groundlm.records import validate_record


def _jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _image(folder: Path, name: str, size: tuple[int, int]) -> str:
    Image.new("RGB", size, (120, 30, 200)).save(folder / name)
    return name


def _valid(records) -> None:
    for r in records:
        assert validate_record(r.to_dict()) == [], r


def _boxes(record) -> list[tuple]:
    return [tuple(round(v, 6) for v in o.box) for o in record.objects]


def test_internvl_grounding_jsonl_imports_with_its_width_and_height(tmp_path):
    _image(tmp_path, "cat.jpg", (1000, 500))
    row = {"id": 7, "image": "cat.jpg", "width": 1000, "height": 500, "conversations": [
        {"from": "human", "value": "<image>\nPlease provide the bounding box coordinate of the region this "
                                   "sentence describes: <ref>the cat</ref>"},
        {"from": "gpt", "value": "<ref>the cat</ref><box>[[302, 257, 582, 671]]</box>"}]}  # fmt: skip
    (record,) = from_llava(_jsonl(tmp_path / "refcoco_internvl.jsonl", [row]), codec="internvl")
    _valid([record])
    assert [(m.role, m.content) for m in record.messages] == [
        ("user", "Please provide the bounding box coordinate of the region this sentence describes: "
                 "<p>the cat</p>"),
        ("assistant", "<p>the cat</p><box:0>")]  # fmt: skip
    # 0-1000 of the original image: x times 1000/1000, y times 500/1000
    assert _boxes(record) == [(302.0, 128.5, 582.0, 335.5)]
    assert record.objects[0].label == "the cat" and record.meta["source_id"] == 7


def test_qwen2_5_vl_json_reads_pixels_of_the_original_or_of_the_given_input_size(tmp_path):
    _image(tmp_path, "cake.jpg", (1000, 1200))
    _image(tmp_path, "big.jpg", (2000, 2400))
    answer = '```json\n[\n\t{"bbox_2d": [139, 768, 315, 954], "label": "small cake"},\n' \
             '\t{"bbox_2d": [500, 100, 600, 200], "label": null}\n]\n```'
    ask = "<image>\nLocate every cake, output its bbox coordinates using JSON format."
    rows = [
        {"image": "cake.jpg", "conversations": [{"from": "human", "value": ask}, {"from": "gpt", "value": answer}]},
        # the same numbers in pixels of a smart_resize'd 1000 x 1200 input of a 2000 x 2400 image
        {"image": "big.jpg", "input_width": 1000, "input_height": 1200,
         "conversations": [{"from": "human", "value": ask}, {"from": "gpt", "value": answer}]},
    ]  # fmt: skip
    original, resized = from_llava(_jsonl(tmp_path / "qwen25.json.jsonl", rows), codec="qwen2_5_vl")
    _valid([original, resized])
    # the null label's box stays bare: a space keeps it out of the phrase before it
    assert original.messages[1].content == "<p>small cake</p><box:0> <box:1>"
    assert _boxes(original) == [(139, 768, 315, 954), (500, 100, 600, 200)]
    assert [o.label for o in original.objects] == ["small cake", None]
    assert _boxes(resized) == [(278, 1536, 630, 1908), (1000, 200, 1200, 400)]


def test_llava_pad_format_maps_the_padded_square_back_to_the_image(tmp_path):
    _image(tmp_path, "wide.jpg", (200, 100))  # padded to 200 x 200, the image 50 px down
    row = {"image": "wide.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat is in [0.25, 0.25, 0.75, 0.75]?"},
        {"from": "gpt", "value": "A dog [0.00, 0.25, 0.50, 0.50]."}]}  # fmt: skip
    (record,) = from_llava(_jsonl(tmp_path / "llava.jsonl", [row]), codec="llava")
    _valid([record])
    assert record.messages[0].content == "<p>What is in</p><box:0>?"
    assert record.messages[1].content == "<p>A dog</p><box:1>."
    assert _boxes(record) == [(50, 0, 150, 100), (0, 0, 100, 50)]
    # another frame on request: the same numbers read relative to the image itself
    (resized,) = from_llava(_jsonl(tmp_path / "llava.jsonl", [row]), codec="llava", frame="resize")
    assert _boxes(resized)[0] == (50, 25, 150, 75)


def test_llama_factory_sharegpt_layouts_import_with_a_system_prompt(tmp_path):
    _image(tmp_path, "a.png", (400, 300))
    rows = [
        {"messages": [{"role": "user", "content": "<image>Where is the cat?"},
                      {"role": "assistant", "content": "<|object_ref_start|>the cat<|object_ref_end|>"
                                                       "<|box_start|>(0,0),(999,999)<|box_end|>"}],
         "images": ["a.png"], "system": "You ground objects."},
        {"conversations": [{"from": "human", "value": "<image>Find it"}, {"from": "gpt", "value": "nothing here"}],
         "images": ["a.png"]},
    ]  # fmt: skip
    first, second = from_sharegpt(_jsonl(tmp_path / "mllm_demo.json", rows), codec="qwen2_vl")
    _valid([first, second])
    assert [m.role for m in first.messages] == ["system", "user", "assistant"]
    assert first.messages[0].content == "You ground objects." and first.meta["source"] == "sharegpt"
    assert first.messages[2].content == "<p>the cat</p><box:0>" and _boxes(first) == [(0, 0, 400, 300)]
    assert second.objects == [] and second.messages[1].content == "nothing here"
    # without a codec the text stays as the model wrote it
    (plain, _) = from_sharegpt(_jsonl(tmp_path / "mllm_demo.json", rows))
    assert "<|box_start|>" in plain.messages[2].content and plain.objects == []


WRITTEN = [name for name in CODEC_NAMES if name != "embedding"]
# one bin of each format in pixels of the 500 x 500 test image
BIN = {"text": 5, "tokens": 5, "kosmos2": 500 / 32, "florence2": 0.5, "paligemma": 0.5, "qwen_vl": 0.5,
       "qwen2_vl": 0.5, "qwen2_5_vl": 0.5, "internvl": 0.5, "shikra": 0.5, "llava": 5, "ferret": 0.5,
       "cogvlm": 0.5}


@pytest.mark.parametrize("name", WRITTEN)
def test_a_row_with_a_box_in_each_codec_imports_to_its_pixel_boxes(tmp_path, name):
    _image(tmp_path, "sq.jpg", (500, 500))
    boxes = [(50.0, 100.0, 250.0, 400.0), (300.0, 20.0, 480.0, 260.0)]
    codec = make_codec(ProcessorConfig(location_codec=name, image_size=500))
    frame = Frame(500, 500, codec.frame or "resize")
    norm = [frame.normalize(b) for b in boxes]
    user = codec.render("Is <box:0> a dog?", norm, output=False) if name != "qwen2_5_vl" else "Is it a dog?"
    answer = codec.render("<p>the dog</p><box:1>", norm)
    row = {"image": "sq.jpg", "conversations": [{"from": "human", "value": "<image>\n" + user},
                                                {"from": "gpt", "value": answer}]}  # fmt: skip
    (record,) = from_llava(_jsonl(tmp_path / "rows.jsonl", [row]), codec=name)
    _valid([record])
    want = boxes if name != "qwen2_5_vl" else boxes[1:]
    assert len(record.objects) == len(want)
    for got, box in zip(record.objects, want, strict=True):
        assert all(abs(a - b) <= BIN[name] + 1e-6 for a, b in zip(got.box, box, strict=True)), (got.box, box)
    assert record.objects[-1].label == "the dog"
    assert record.messages[1].content == f"<p>the dog</p><box:{len(want) - 1}>"


def test_broken_rows_name_the_file_line_and_field(tmp_path):
    _image(tmp_path, "ok.jpg", (100, 100))
    box = "<ref>x</ref><box>[[1, 2, 3, 4]]</box>"
    rows = [
        {"image": "ok.jpg", "conversations": [{"from": "human", "value": "<image> hi"},
                                              {"from": "gpt", "value": box}]},
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": box}]},
        {"image": "missing.jpg", "conversations": [{"from": "human", "value": "<image> hi"},
                                                   {"from": "gpt", "value": box}]},
        {"image": "ok.jpg", "width": -5, "height": 10, "conversations": [
            {"from": "human", "value": "<image> hi"}, {"from": "gpt", "value": box}]},
    ]  # fmt: skip
    path = _jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(ImportRowError, match=r"bad.jsonl: line 2: conversations\[1\]: holds a location but the "
                                             r"row has no image"):
        from_llava(path, codec="internvl")
    report = ImportReport()
    assert len(from_llava(path, codec="internvl", on_error="skip", report=report)) == 1
    assert report.skipped == {"missing conversations[]": 1, "no image size width": 1, "invalid width": 1}
    with pytest.raises(ImportRowError, match=r"missing.jsonl: line 2: width: the boxes need the image size"):
        from_llava(_jsonl(tmp_path / "missing.jsonl", [rows[0], rows[2]]), codec="internvl")
    with pytest.raises(ImportRowError, match=r"negative.jsonl: line 1: width: expected a positive integer"):
        from_llava(_jsonl(tmp_path / "negative.jsonl", [rows[3]]), codec="internvl")
    qwen = {"image": "ok.jpg", "input_width": 28, "conversations": [
        {"from": "human", "value": "<image> hi"}, {"from": "gpt", "value": '[{"bbox_2d": [1, 2, 3, 4]}]'}]}
    with pytest.raises(ImportRowError, match=r"q.jsonl: line 1: input_height: missing"):
        from_llava(_jsonl(tmp_path / "q.jsonl", [qwen]), codec="qwen2_5_vl")
    with pytest.raises(ValueError, match="unknown codec 'qwen9'"):
        from_llava(path, codec="qwen9")
    with pytest.raises(ValueError, match="frame must be one of"):
        from_sharegpt(path, codec="llava", frame="crop")

"""RefCOCO as lmms-eval (lmms-lab parquet) and VLMEvalKit (TSV with base64 images) ship it → [refer] records,
and `groundlm data import refcoco-vlmevalkit`."""

import base64
import csv
import io
import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from groundlm.cli import app
from groundlm.data.importers import ImportReport, ImportRowError, from_lmms_refcoco, from_vlmevalkit_refcoco
from groundlm.records import read_jsonl


def _png(size=(40, 20), colour=(0, 128, 255)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


def _tsv(path, rows):
    columns = sorted({k for r in rows for k in r}, key=lambda c: ["index", "image", "question", "answer"].index(c)
                     if c in ("index", "image", "question", "answer") else 10)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, delimiter="\t")
        writer.writeheader()
        writer.writerows(rows)


def _row(index, **extra):
    return {"index": index, "image": base64.b64encode(_png()).decode(),
            "question": "Please provide the bounding box coordinate of the region this sentence describes: "
                        "<ref>the blue one</ref>",
            "answer": "[0.25, 0.5, 0.75, 1.0]", "category": "RefCOCO+ test-A", **extra}


def test_vlmevalkit_tsv_rows_become_refer_records_with_images_written_once(tmp_path):
    src = tmp_path / "RefCOCO.tsv"
    _tsv(src, [_row("7"), _row("8", bbox_x1=1, bbox_y1=2, bbox_x2=3, bbox_y2=4)])
    records = from_vlmevalkit_refcoco(src, tmp_path / "out")
    assert [r.id for r in records] == ["RefCOCO+_testA-7-0", "RefCOCO+_testA-8-0"]
    first = records[0]
    assert first.objects[0].box == (10, 10, 30, 20)  # [0, 1] of the 40 x 20 image → pixels
    assert records[1].objects[0].box == (1, 2, 3, 4)  # pixel columns win, as in VLMEvalKit's scorer
    assert first.messages[0].content == "[refer] give me the location of the blue one"
    assert first.meta["split"] == "RefCOCO+_testA" and first.meta["width"] == 40
    assert Image.open(tmp_path / "out" / first.image).size == (40, 20)


def test_vlmevalkit_tsv_bad_rows_name_the_line_and_field_or_are_counted(tmp_path):
    src = tmp_path / "RefCOCO.tsv"
    _tsv(src, [_row("1"), {**_row("2"), "image": "not base64!"}, {**_row("3"), "answer": "[0.1, 0.2]"}])
    with pytest.raises(ImportRowError, match=r"line 3: image: not base64"):
        from_vlmevalkit_refcoco(src, tmp_path / "out")
    report = ImportReport()
    records = from_vlmevalkit_refcoco(src, tmp_path / "out", on_error="skip", report=report)
    assert len(records) == 1 and report.n_skipped == 2


def test_cli_imports_vlmevalkit_tsv_into_the_out_folder(tmp_path):
    src = tmp_path / "RefCOCO.tsv"
    _tsv(src, [_row("1")])
    result = CliRunner().invoke(app, ["data", "import", "refcoco-vlmevalkit", str(src), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    (record,) = read_jsonl(tmp_path / "o" / "records.jsonl")
    assert (tmp_path / "o" / record.image).is_file()


def test_lmms_lab_parquet_rows_explode_into_one_record_per_expression(tmp_path):
    datasets = pytest.importorskip("datasets", reason="reading lmms-lab parquet needs `datasets` (groundlm[lmms])")
    features = datasets.Features({
        "question_id": datasets.Value("string"), "image": datasets.Image(), "question": datasets.Value("string"),
        "answer": datasets.Sequence(datasets.Value("string")), "segmentation": datasets.Sequence(datasets.Value("float32")),
        "bbox": datasets.Sequence(datasets.Value("float32")), "iscrowd": datasets.Value("int8"),
        "file_name": datasets.Value("string"),
    })
    rows = {"question_id": ["q1"], "image": [{"bytes": _png(), "path": None}], "question": ["?"],
            "answer": [["left thing", "the blue box"]], "segmentation": [[0, 0, 1, 1]], "bbox": [[4, 2, 10, 8]],
            "iscrowd": [0], "file_name": ["COCO_1.jpg"]}
    src = tmp_path / "val.parquet"
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(src))
    records = from_lmms_refcoco(src, tmp_path / "out")
    assert [r.id for r in records] == ["val-q1-0", "val-q1-1"]
    assert records[1].objects[0].box == (4, 2, 14, 10)  # COCO [x, y, w, h] → xyxy pixels
    assert records[1].meta["expression"] == "the blue box"
    assert json.dumps(records[0].to_dict())

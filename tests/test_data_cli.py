"""`groundlm data shapes | check | show` end to end, with pixel checks of the drawn picture."""

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from groundlm.cli import app
from groundlm.records import read_jsonl
from groundlm.visualize import PALETTE

runner = CliRunner()


def test_shapes_output_passes_check(tmp_path):
    result = runner.invoke(app, ["data", "shapes", "--n", "6", "--split", "val", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    check = runner.invoke(app, ["data", "check", str(tmp_path / "s" / "records.jsonl")])
    assert check.exit_code == 0, check.output
    assert "48 valid records" in check.output and "refer" in check.output


def test_check_reports_every_bad_row_and_fails(tmp_path):
    good = {"id": "a", "image": None, "objects": [],
            "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    lines = [json.dumps(good), "{not json", json.dumps({**good, "id": "b", "messages": [
        {"role": "bot", "content": "x"}]}), json.dumps({**good, "id": "c", "objects": [{"box": [5, 5, 1, 1]}]})]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 1
    for needle in ["bad.jsonl:2: <json>", "bad.jsonl:3: messages[0].role", "bad.jsonl:4: objects[0].box",
                   "3 problem(s)"]:
        assert needle in result.output, result.output


def test_show_draws_boxes_on_the_shapes(tmp_path):
    runner.invoke(app, ["data", "shapes", "--n", "4", "--split", "test", str(tmp_path / "s")])
    path = tmp_path / "s" / "records.jsonl"
    records = read_jsonl(path)
    index = max(range(len(records)), key=lambda i: len(records[i].objects))  # a scene with several objects
    record = records[index]
    out = tmp_path / "show.png"
    result = runner.invoke(app, ["data", "show", str(path), "--index", str(index), "--out", str(out)])
    assert result.exit_code == 0, result.output
    source = np.asarray(Image.open(tmp_path / "s" / record.image).convert("RGB"))
    drawn = np.asarray(Image.open(out).convert("RGB"))
    k = drawn.shape[0] // source.shape[0]  # drawing upscales small images by an integer factor
    for i, obj in enumerate(record.objects):
        x1, y1, x2, y2 = (round(v * k) for v in obj.box)
        colour = PALETTE[i % len(PALETTE)]
        # the box outline is drawn in the object's colour at the box's bottom edge (labels sit above the top)...
        assert (drawn[y2, x1 + 2 : x2 - 2] == colour).all(axis=1).mean() > 0.5
        # ...and it sits on the shape: the shape's coloured (non-grey) pixels touch all four sides of the box
        bx1, by1, bx2, by2 = (int(round(v)) for v in obj.box)
        patch = source[by1:by2, bx1:bx2].astype(int)
        coloured = (patch.max(axis=2) - patch.min(axis=2)) > 30  # backgrounds and distractors are grey
        assert coloured[0].any() and coloured[-1].any() and coloured[:, 0].any() and coloured[:, -1].any()
        assert coloured.mean() > 0.3
    bad = runner.invoke(app, ["data", "show", str(path), "--index", "9999"])
    assert bad.exit_code == 1 and "out of range" in bad.output

"""The evaluation runner: end to end on a tiny model, oracle scoring, re-scoring and resume."""

import json

import pytest
from typer.testing import CliRunner

import groundlm
from groundlm.cli import app
from groundlm.data.shapes import scene_at, scene_records
from groundlm.evaluate.runner import EvalConfig, evaluate, read_predictions, rescore
from groundlm.evaluate.scoring import score_predictions
from groundlm.geometry import Frame
from groundlm.location import CODEC_NAMES, TextLocationCodec
from tests.linear_time import PARTS, assert_linear

runner = CliRunner()


def _oracle_rows(n_scenes=6):
    """Prediction rows whose answers are the references written by the text codec: a perfect model."""
    codec = TextLocationCodec()
    rows = []
    for i in range(n_scenes):
        scene = scene_at("test", i)
        frame = Frame(scene.image.width, scene.image.height, "resize")
        for r in scene_records(scene, "test", i):
            reference = r.messages[1].content
            text = codec.render(reference, [frame.normalize(o.box) for o in r.objects])
            objects = codec.parse(text)
            for o in objects:
                o.box = frame.denormalize(o.box_norm)
            rows.append({
                "id": r.id, "task": r.meta["task"], "image": r.image, "width": 64, "height": 64,
                "frame": "resize", "prompt": r.messages[0].content, "reference": reference,
                "objects": [{"box": list(o.box), "label": o.label} for o in r.objects], "meta": r.meta,
                "prediction": text, "prediction_text": codec.strip(text),
                "prediction_objects": [o.to_dict() for o in objects],
            })
    return rows


def test_a_perfect_model_scores_one_on_every_task():
    metrics = score_predictions(_oracle_rows(), captions=False)
    assert {t for t in metrics} >= {"refer", "vqa", "identify", "grounding", "detection", "caption"}
    for task, m in metrics.items():
        assert m["score"] == pytest.approx(1.0), (task, m)


def test_wrong_answers_score_what_a_hand_count_says():
    rows = _oracle_rows(4)
    refer = [r for r in rows if r["task"] == "refer"]
    refer[0]["prediction_objects"] = []  # unparsable → a miss, still counted
    shifted = refer[1]["prediction_objects"][0]
    x1, y1, x2, y2 = shifted["box"]
    shifted["box"] = [x1 + (x2 - x1) / 2, y1, x2 + (x2 - x1) / 2, y2]  # IoU 1/3 → miss
    m = score_predictions(refer, captions=False)["refer"]
    assert (m["hits"], m["total"], m["unparsed"]) == (len(refer) - 2, len(refer), 1)


def test_end_to_end_on_a_tiny_model_and_rescore_identically(tiny_dir, tmp_path):
    lm = groundlm.load(tiny_dir)
    out = tmp_path / "run"
    metrics = evaluate(lm, out, EvalConfig(scenes=3, batch_size=8, max_new_tokens=12))
    for name in ("predictions.jsonl", "metrics.json", "report.md"):
        assert (out / name).is_file()
    assert list((out / "examples").glob("*.png"))
    rows = read_predictions(out / "predictions.jsonl")
    assert len(rows) == metrics["overall"]["total"] == 3 * 8
    again = rescore(out / "predictions.jsonl", tmp_path / "re")
    assert again == json.loads((out / "metrics.json").read_text())
    assert "| refer | Acc@0.5 |" in (out / "report.md").read_text()


def test_resume_predicts_only_what_is_missing(tiny_dir, tmp_path):
    lm = groundlm.load(tiny_dir)
    out = tmp_path / "run"
    evaluate(lm, out, EvalConfig(scenes=2, limit=8, max_new_tokens=6))
    lines = (out / "predictions.jsonl").read_text().splitlines()
    # a crash after 5 rows, the last one cut mid-write
    (out / "predictions.jsonl").write_text("\n".join(lines[:5]) + "\n" + lines[5][:20])
    calls = []
    original = lm.ask_many
    lm.ask_many = lambda *a, **k: calls.append(len(a[1])) or original(*a, **k)
    evaluate(lm, out, EvalConfig(scenes=2, limit=8, max_new_tokens=6, resume=True))
    assert sum(calls) == 3
    rows = read_predictions(out / "predictions.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(json.loads(line)["id"] for line in lines)


def test_cli_eval_and_rescore(tiny_dir, tmp_path):
    out = tmp_path / "cli"
    result = runner.invoke(app, ["eval", str(tiny_dir), "--scenes", "1", "--out", str(out), "--max-new-tokens", "4"])
    assert result.exit_code == 0, result.output
    assert "| refer |" in result.output
    re = runner.invoke(app, ["eval", "--predictions", str(out / "predictions.jsonl"), "--out", str(tmp_path / "r")])
    assert re.exit_code == 0, re.output
    assert json.loads((tmp_path / "r" / "metrics.json").read_text()) == json.loads((out / "metrics.json").read_text())
    bad = runner.invoke(app, ["eval"])
    assert bad.exit_code == 1 and "MODEL" in bad.output


def test_real_formats_run_through_their_importers(tiny_dir, tmp_path):
    from PIL import Image

    lm = groundlm.load(tiny_dir)
    Image.new("RGB", (64, 48), (9, 9, 9)).save(tmp_path / "COCO_train2014_000000000042.jpg")
    rows = [{"img_id": "COCO_train2014_000000000042_1", "sents": "the left cat", "bbox": [1, 2, 30, 20],
             "height": 48, "width": 64},
            {"img_id": "COCO_train2014_000000000042_2", "sents": "the right cat", "bbox": [33, 2, 30, 20],
             "height": 48, "width": 64}]
    (tmp_path / "refcoco_testA.json").write_text(json.dumps(rows))
    pope = [{"question_id": 1, "image": "COCO_train2014_000000000042.jpg", "text": "Is there a cat?",
             "label": "yes"}, {"question_id": 2, "image": "COCO_train2014_000000000042.jpg",
                               "text": "Is there a dog?", "label": "no"}]
    (tmp_path / "pope.json").write_text("\n".join(json.dumps(p) for p in pope))
    ref = evaluate(lm, tmp_path / "r", EvalConfig(benchmark="refcoco", data=tmp_path / "refcoco_testA.json",
                                                  max_new_tokens=6))
    assert ref["refer"]["total"] == 2
    pop = evaluate(lm, tmp_path / "p", EvalConfig(benchmark="pope", data=tmp_path / "pope.json",
                                                  max_new_tokens=4))
    counts = pop["pope"]
    assert counts["tp"] + counts["fp"] + counts["tn"] + counts["fn"] == 2
    assert counts["tp"] + counts["fn"] == 1  # one question is labelled yes
    with pytest.raises(ValueError, match="--data is required"):
        evaluate(lm, tmp_path / "x", EvalConfig(benchmark="pope"))


def _raw_rows(codec, boxes, width=200, height=100):
    """Prediction rows of `[refer]` records whose answers are raw text written by `codec` for `boxes`
    (pixels; the first answer points at the wrong half of the image)."""
    frame = Frame(width, height, "resize")
    rows = []
    for i, box in enumerate(boxes):
        answered = box if i else [width - box[2], height - box[3], width - box[0], height - box[1]]
        raw = codec.render("<p>the shape</p><box:0>", [frame.normalize(answered)])
        rows.append({
            "id": f"r{i}", "task": "refer", "image": None, "width": width, "height": height, "frame": "resize",
            "prompt": "[refer] the shape", "reference": "<p>the shape</p><box:0>",
            "objects": [{"box": box, "label": "shape"}], "meta": {},
            "prediction": raw, "prediction_text": "", "prediction_objects": [],
        })
    return rows


@pytest.mark.parametrize("name", [n for n in CODEC_NAMES if n != "embedding"])  # its boxes are not text
def test_rescore_reads_raw_answers_in_any_location_format(name, tmp_path):
    from groundlm.location import make_codec
    from groundlm.processor import ProcessorConfig

    codec = make_codec(ProcessorConfig(location_codec=name, image_size=224))
    boxes = [[10, 10, 60, 40], [20, 30, 120, 90], [100, 5, 190, 50], [5, 50, 95, 95]]
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _raw_rows(codec, boxes)))
    metrics = rescore(path, tmp_path / "out", codec=name, input_size=224)
    assert metrics["refer"]["score"] == pytest.approx(3 / 4)  # the three right answers, read in their format
    unread = rescore(path, tmp_path / "plain")  # without --codec the stored (empty) objects are scored
    assert unread["refer"]["score"] == 0.0


def test_cli_rescore_with_a_codec_and_a_clear_error_for_an_unknown_one(tmp_path):
    from groundlm.location import QwenVLLocationCodec

    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _raw_rows(QwenVLLocationCodec(), [[10, 10, 60, 40]] * 2)))
    ok = CliRunner().invoke(app, ["eval", "--predictions", str(path), "--codec", "qwen_vl", "--out", str(tmp_path / "o")])
    assert ok.exit_code == 0, ok.output
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["refer"]["score"] == 0.5
    bad = CliRunner().invoke(app, ["eval", "--predictions", str(path), "--codec", "pixels", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 1 and "unknown location_codec 'pixels'" in bad.output


def _rows_with_answers(answers, box=(20, 20, 100, 60), width=200, height=100):
    """`[refer]` prediction rows with the given raw answers, all for the same ground-truth box."""
    return [{
        "id": f"r{i}", "task": "refer", "image": None, "width": width, "height": height, "frame": "resize",
        "prompt": "[refer] the shape", "reference": "<p>the shape</p><box:0>",
        "objects": [{"box": list(box), "label": "shape"}], "meta": {},
        "prediction": raw, "prediction_text": "", "prediction_objects": [],
    } for i, raw in enumerate(answers)]


def test_minigptv2_reading_counts_only_an_answer_that_starts_with_exactly_one_box(tmp_path):
    answers = [
        "{<10><20><50><60>}",  # read: (20, 20, 100, 60) on a 200 x 100 image
        "<unk> {<10> <20><50><60>}<unk>",  # <unk> and spaces removed first: read
        "the shape {<10><20><50><60>}",  # does not start with the box: a miss
        "{<10><20><50><60>}<delim>{<10><20><50><60>}",  # eight numbers: a miss
    ]
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows_with_answers(answers)))
    strict = rescore(path, tmp_path / "strict", codec="text", reading="minigptv2")
    assert strict["refer"]["score"] == pytest.approx(2 / 4)
    anywhere = rescore(path, tmp_path / "codec", codec="text")  # the codec reads a box anywhere
    assert anywhere["refer"]["score"] == pytest.approx(4 / 4)


def test_lenient_reading_recovers_free_text_boxes_on_the_given_grid(tmp_path):
    answers = [
        "It is at [100, 200, 500, 600].",  # integers on the 0-1000 grid: (20, 20, 100, 60)
        "the shape: (0.1, 0.2), (0.5, 0.6)",  # fractions, point pairs
        "<ref>the shape</ref><box>(100,200),(500,600)</box>",  # the codec's own format comes first
        "somewhere on the left",  # nothing to read: a miss
    ]
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows_with_answers(answers)))
    lenient = rescore(path, tmp_path / "lenient", codec="qwen_vl", reading="lenient")
    assert lenient["refer"]["score"] == pytest.approx(3 / 4)
    strict = rescore(path, tmp_path / "codec", codec="qwen_vl")
    assert strict["refer"]["score"] == pytest.approx(1 / 4)
    # MiniGPT-v2's 0-100 grid
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows_with_answers(["at [10, 20, 50, 60]"])))
    assert rescore(path, tmp_path / "g", codec="text", reading="lenient", scale=100)["refer"]["score"] == 1.0


def test_readings_never_raise_and_stay_linear_on_adversarial_text():
    from groundlm.evaluate.readings import READINGS, reader
    from groundlm.location import QwenVLLocationCodec

    def adversarial(n):
        return "[1, 2, 3, " * (2 * n) + "(0.5, 0.5), (" * n + "{<1><2><3>" * n

    for name in READINGS:
        codec_name, codec = ("text", TextLocationCodec()) if name == "minigptv2" else ("qwen_vl", QwenVLLocationCodec())
        read = reader(name, codec_name, codec)
        assert read(None) == [] and read("") == []
        # VLMEvalKit's rule takes the first four numbers anywhere, so it finds a box even here
        assert (read(adversarial(50_000)) == []) != (name == "vlmevalkit")
        assert_linear(read, adversarial(50_000), adversarial(50_000 // PARTS), label=name)


def test_cli_reading_options_and_their_errors(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows_with_answers(["the shape {<10><20><50><60>}"])))
    strict = runner.invoke(app, ["eval", "--predictions", str(path), "--codec", "text", "--reading", "minigptv2",
                                 "--out", str(tmp_path / "o")])
    assert strict.exit_code == 0, strict.output
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["refer"]["score"] == 0.0
    wrong_codec = runner.invoke(app, ["eval", "--predictions", str(path), "--codec", "qwen_vl", "--reading",
                                      "minigptv2", "--out", str(tmp_path / "w")])
    assert wrong_codec.exit_code == 1 and "use it with --codec text" in wrong_codec.output
    no_codec = runner.invoke(app, ["eval", "--predictions", str(path), "--reading", "lenient", "--out",
                                   str(tmp_path / "n")])
    assert no_codec.exit_code == 1 and "give the --codec" in no_codec.output
    unknown = runner.invoke(app, ["eval", "--predictions", str(path), "--codec", "text", "--reading", "loose",
                                  "--out", str(tmp_path / "u")])
    assert unknown.exit_code == 1 and "unknown reading 'loose'" in unknown.output

"""lmms-eval's and VLMEvalKit's RefCOCO readings (evaluate/readings.py) on hand-made answers that follow each
tool's published parser (lmms_eval/tasks/refcoco/utils_rec.py; vlmeval/dataset/refcoco.py), re-scoring with them,
and the VLMEvalKit model class (`generate_inner` on VLMEvalKit's message list) on a random tiny model. The real
packages run in `make test-lmms`."""

import json

import pytest
from PIL import Image

from groundlm.evaluate.readings import reader
from groundlm.evaluate.runner import rescore
from groundlm.integrations.harness import Harness, Request
from groundlm.location import TextLocationCodec


def _read(name, text, size=(200, 100)):
    objects = reader(name, "text", TextLocationCodec())(text, size)
    return [(tuple(round(v, 6) for v in o.box_norm), o.box and tuple(round(v, 6) for v in o.box)) for o in objects]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[0.1, 0.2, 0.3, 0.4]", [((0.1, 0.2, 0.3, 0.4), (20, 20, 60, 40))]),
        ("box [0.1,0.2,0.3,0.4] then [0.5, 0.5, 0.6, 0.6]", [((0.1, 0.2, 0.3, 0.4), (20, 20, 60, 40))]),
        ("[ 1, 0, 0.5, 1 ]", [((0.5, 0.0, 1.0, 1.0), (100, 0, 200, 100))]),  # no rescaling; corners ordered
        ("[0.1 0.2 0.3 0.4]", []),  # the regex needs commas
        ("(0.1, 0.2, 0.3, 0.4)", []),  # and square brackets
        ("[1e-1, 0.2, 0.3, 0.4]", []),  # and no exponents
        ("[120, 30, 560, 410]", [((1.0, 1.0, 1.0, 1.0), (200, 100, 200, 100))]),  # read as fractions: a miss
    ],
)
def test_lmms_eval_reading_follows_refcoco_bbox_rec_parse(text, expected):
    assert _read("lmms_eval", text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[0.1, 0.2, 0.3, 0.4]", [((0.1, 0.2, 0.3, 0.4), (20, 20, 60, 40))]),
        ("[0.1 0.2 0.3 0.4]", [((0.1, 0.2, 0.3, 0.4), (20, 20, 60, 40))]),  # spaces separate too
        ("[1e-1, 2e-1, 3E-1, 4e-1]", [((0.1, 0.2, 0.3, 0.4), (20, 20, 60, 40))]),
        ("[1.5, 0, 0, 1]", [((0.0, 0.0, 1.0, 1.0), (0, 0, 200, 100))]),  # <= 1.5: fractions, clipped
        ("[100, 200, 300, 400]", [((0.1, 0.2, 0.3, 0.4), (20, 20, 60, 40))]),  # <= 1000: the 0-1000 grid
        ("[100, 20, 1300, 40]", [((0.05, 0.02, 0.65, 0.04), (100, 20, 1300, 40))]),  # above: pixels (2000 x 1000)
        ("[0.3, 0.4, 0.1, 0.2]", [((0.1, 0.2, 0.3, 0.4), (20, 20, 60, 40))]),  # swapped corners ordered
        ("x 100 y 200 to 300, 400", [((0.1, 0.2, 0.3, 0.4), (20, 20, 60, 40))]),  # first four numbers
        ("only 1, 2 and 3", []),
    ],
)
def test_vlmevalkit_reading_follows_refcoco_scorer_and_its_scale_guess(text, expected):
    assert _read("vlmevalkit", text, size=(2000, 1000) if "1300" in text else (200, 100)) == expected


def test_vlmevalkit_reading_of_pixels_needs_the_image_size():
    assert reader("vlmevalkit", "text", TextLocationCodec())("[100, 20, 1300, 40]") == []


def test_rescoring_with_a_tools_reading_needs_no_codec(tmp_path):
    # an answer on the 0-1000 grid: VLMEvalKit's guess reads it, lmms-eval takes it as fractions (a miss)
    row = {"id": "r0", "task": "refer", "image": None, "width": 200, "height": 100, "frame": "pad",
           "objects": [{"box": [20, 20, 60, 40], "label": "x"}], "reference": "<box:0>", "prompt": "[refer] x",
           "prediction": "[100, 200, 300, 400]"}
    path = tmp_path / "predictions.jsonl"
    path.write_text(json.dumps(row) + "\n")
    assert rescore(path, tmp_path / "v", reading="vlmevalkit")["refer"]["accuracy"] == 1.0
    assert rescore(path, tmp_path / "l", reading="lmms_eval")["refer"]["accuracy"] == 0.0


# ---- the VLMEvalKit model class ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vlm(tiny_dir):
    from groundlm.integrations.vlmevalkit import GroundLMVLM

    return GroundLMVLM(model_path=str(tiny_dir), max_new_tokens=8)


def test_generate_inner_answers_vlmevalkits_message_list_like_the_harness(vlm, tmp_path):
    image = tmp_path / "wide.png"
    Image.new("RGB", (90, 50), (200, 30, 30)).save(image)  # VLMEvalKit passes dumped image paths
    message = [{"type": "image", "value": str(image)}, {"type": "text", "value": "[refer]"},
               {"type": "text", "value": "the red circle"}]
    expected = Harness(vlm.harness.lm).generate([Request(str(image), "[refer]\nthe red circle", max_new_tokens=8)])
    assert vlm.generate_inner(message, dataset="RefCOCO") == expected[0]


def test_generate_inner_boxes_read_back_by_vlmevalkits_rule_to_the_answers_pixels(vlm):
    # bypass generation: the tiny model's pad-free frame maps {<10><20><30><40>} to 10%..30% / 20%..40%
    lm = vlm.harness.lm
    frame = lm.processor.image(Image.new("RGB", (90, 50)))[1]
    answer = lm.answer_for("{<10><20><30><40>}", frame)
    from groundlm.integrations.harness import answer_text

    (norm, box), = _read("vlmevalkit", answer_text(answer, (90, 50)), size=(90, 50))
    assert box == pytest.approx(answer.objects[0].box, abs=1e-3)


def test_generate_inner_refuses_two_images_and_unknown_items(vlm):
    with pytest.raises(ValueError, match="2 images"):
        vlm.generate_inner([{"type": "image", "value": Image.new("RGB", (8, 8))}] * 2)
    with pytest.raises(ValueError, match=r"message\[0\]"):
        vlm.generate_inner([{"type": "video", "value": "clip.mp4"}])


# ---- the tools' prediction files re-scored -----------------------------------------------------------------
def _lmms_sample(doc_id, answer, bbox, as_text=False):
    data = {"answer": "the red one", "pred": [0, 0, 0, 0], "ann_id": f"q{doc_id}", "bbox": bbox}
    return {"doc_id": doc_id, "input": "Please provide ...", "filtered_resps": answer,
            "refcoco_ACC@0.5": str(data) if as_text else data}


def test_lmms_eval_samples_log_rescored_with_its_reading(tmp_path):
    path = tmp_path / "samples_refcoco_bbox_rec_val.jsonl"
    lines = [_lmms_sample(0, "[0.1, 0.2, 0.3, 0.4]", [0.1, 0.2, 0.3, 0.4]),
             _lmms_sample(1, ["there: [0.5, 0.5, 0.7, 0.9]"], [0.5, 0.5, 0.7, 0.7], as_text=True),  # IoU 0.5
             _lmms_sample(2, "no box", [0.1, 0.1, 0.2, 0.2])]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    metrics = rescore(path, tmp_path / "o", predictions_format="lmms_samples", reading="lmms_eval")["refer"]
    assert (metrics["hits"], metrics["total"], metrics["unparsed"]) == (2, 3, 1)
    assert metrics["mean_iou"] == pytest.approx(1.5 / 3)
    with pytest.raises(ValueError, match="give --reading"):
        rescore(path, tmp_path / "p", predictions_format="lmms_samples")
    path.write_text('{"doc_id": 0}\n')
    with pytest.raises(ValueError, match=r"samples_refcoco_bbox_rec_val.jsonl:1: not a refcoco_bbox_rec sample"):
        rescore(path, tmp_path / "q", predictions_format="lmms_samples", reading="lmms_eval")


def test_vlmevalkit_prediction_file_rescored_with_its_reading(tmp_path):
    path = tmp_path / "groundlm_RefCOCO.tsv"
    header = "index\tquestion\tanswer\tprediction\twidth\theight\tbbox_x1\tbbox_y1\tbbox_x2\tbbox_y2\n"
    path.write_text(header
                    + "1\tq\t[0.1, 0.2, 0.3, 0.4]\t[100, 200, 300, 400]\t200\t100\t\t\t\t\n"  # 0-1000 grid: a hit
                    + "2\tq\t\t[0.1 0.2 0.3 0.4]\t200\t100\t20\t20\t60\t40\n"  # pixel columns, spaces: a hit
                    + "3\tq\t[0.5, 0.5, 1, 1]\t[0.1, 0.2, 0.3, 0.4]\t200\t100\t\t\t\t\n")  # a miss
    metrics = rescore(path, tmp_path / "o", predictions_format="vlmevalkit", reading="vlmevalkit")["refer"]
    assert (metrics["hits"], metrics["total"]) == (2, 3)
    path.write_text("index\tprediction\tanswer\n1\t[0, 0, 1, 1]\t[0, 0, 1, 1]\n")
    with pytest.raises(ValueError, match=r"groundlm_RefCOCO.tsv:2: fields 'width' and 'height'"):
        rescore(path, tmp_path / "p", predictions_format="vlmevalkit", reading="vlmevalkit")

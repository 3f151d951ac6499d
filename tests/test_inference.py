"""The inference API and CLI on a random tiny model: plumbing, batching, offline loading, bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import groundlm
from groundlm.cli import app
from groundlm.images import ImageError
from tests.conftest import realdata


@pytest.fixture(scope="module")
def lm(tiny_dir):
    return groundlm.load(tiny_dir)


def _img(colour=(255, 0, 0), size=(80, 60)):
    return Image.new("RGB", size, colour)


def test_ask_returns_an_answer_with_objects_in_pixels(lm):
    answer = lm.ask(_img(), "[refer] the red circle", max_new_tokens=12)
    assert isinstance(answer.text, str)
    for obj in answer.objects:  # a random model may or may not emit boxes; any it emits are mapped
        assert len(obj.box) == 4 and all(0 <= v <= 80 for v in obj.box)
    assert json.loads(json.dumps(answer.to_dict()))["text"] == answer.text


def test_parse_maps_generated_boxes_to_original_pixels(lm):
    # bypass generation: the answer path that maps a generated box back to pixels
    frame = lm.processor.image(_img(size=(200, 100)))[1]
    answer = lm.answer_for("<p>red circle</p> { <10> <20> <30> <40> }", frame)
    assert answer.objects[0].phrase == "red circle"
    assert answer.objects[0].box == pytest.approx((20, 20, 60, 40))
    assert answer.plain_text == "red circle"


def test_batched_answers_equal_one_at_a_time(lm):
    images = [_img((255, 0, 0)), _img((0, 0, 255), (40, 90)), _img((0, 255, 0), (128, 128))]
    prompts = ["[refer] the red circle", "[vqa] what colour is the square", "[caption]"]
    batched = lm.ask_many(images, prompts, max_new_tokens=10, batch_size=3)
    single = [lm.ask(i, p, max_new_tokens=10) for i, p in zip(images, prompts, strict=True)]
    assert [a.text for a in batched] == [a.text for a in single]


def test_box_inputs_reach_the_prompt(lm):
    img = _img(size=(100, 100))
    pixels, frame = lm.processor.image(img)
    enc = lm.processor.encode([{"role": "user", "content": "[identify] what is <box:0>"}],
                              boxes=[[10, 20, 50, 60]], frame=frame, add_generation_prompt=True)
    tokens = lm.processor.tokenizer.convert_ids_to_tokens(enc.input_ids)
    assert tokens[-7:] == ["{", "<10>", "<20>", "<50>", "<60>", "}", "[/INST]"]
    answer = lm.ask(img, "[identify] what is <box:0>", boxes=[[10, 20, 50, 60]], max_new_tokens=4)
    assert isinstance(answer.text, str)


def test_chat_keeps_history(lm):
    chat = lm.chat(_img())
    chat.send("[vqa] how many circles", max_new_tokens=4)
    chat.send("[identify] what is <box:0>", boxes=[[0, 0, 40, 30]], max_new_tokens=4)
    roles = [m["role"] for m in chat.messages]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert "{<0><0><50><50>}" in chat.messages[2]["content"]


def test_image_inputs_bytes_path_and_bombs(lm, tmp_path):
    img = _img()
    img.save(tmp_path / "a.png")
    by_path = lm.ask(tmp_path / "a.png", "[caption]", max_new_tokens=5).text
    assert lm.ask((tmp_path / "a.png").read_bytes(), "[caption]", max_new_tokens=5).text == by_path
    assert lm.ask(img, "[caption]", max_new_tokens=5).text == by_path
    with pytest.raises(ImageError):
        lm.ask(b"garbage", "[caption]")


def test_save_load_round_trip_gives_identical_logits(lm, tmp_path):
    lm.model.save_pretrained(tmp_path)
    lm.processor.save_pretrained(tmp_path)
    again = groundlm.load(tmp_path)
    batch = lm.processor.pad([lm.processor.prompt(_img(), [{"role": "user", "content": "[caption]"}])])
    batch.pop("labels")
    with torch.no_grad():
        assert torch.equal(lm.model(**batch).logits, again.model(**batch).logits)


def test_hub_id_offline_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="never downloads"):
        groundlm.load("some-org/some-model")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        groundlm.load("./no/such/dir")


def test_cli_new_model_and_ask_json(tmp_path):
    runner = CliRunner()
    out = tmp_path / "m"
    result = runner.invoke(app, ["new-model", "--preset", "tiny", str(out)])
    assert result.exit_code == 0, result.output
    image = realdata("images", "coffee.png")
    result = runner.invoke(app, ["ask", str(out), str(image), "[refer] the cup", "--json", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) == {"text", "plain_text", "objects"}
    bad = runner.invoke(app, ["ask", str(out), str(tmp_path / "none.png"), "[caption]"])
    assert bad.exit_code == 1 and "none.png" in bad.output
    again = runner.invoke(app, ["new-model", str(out)])
    assert again.exit_code == 1 and "not empty" in again.output
    (tmp_path / "file").write_text("x")
    on_a_file = runner.invoke(app, ["new-model", str(tmp_path / "file")])
    assert on_a_file.exit_code == 1 and "is a file; a model is a directory" in on_a_file.output


def test_console_script_runs_in_a_fresh_process(tiny_dir, tmp_path):
    Image.new("L", (30, 20), 128).save(tmp_path / "gray.png")
    exe = os.path.join(os.path.dirname(sys.executable), "groundlm")
    proc = subprocess.run([exe, "ask", str(tiny_dir), str(tmp_path / "gray.png"), "[caption]", "--json",
                           "--max-new-tokens", "4"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "objects" in json.loads(proc.stdout)

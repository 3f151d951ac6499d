"""The four transformers families behind groundlm's API (backends/): each tiny checkpoint (tests/backend_models.py)
loads through `groundlm.load`, turns a scripted answer in its own format into pixel boxes of a non-square
image, batches like one-at-a-time, refuses the tasks it has no prompt for, and works unchanged in the server,
the evaluation runner and the harness both evaluation tools use.

Expected pixels are worked out here by hand from each family's published arithmetic, for the box
(30, 20, 90, 60) of a 120 x 80 image, i.e. (0.25, 0.25, 0.75, 0.75) of it.
"""

from __future__ import annotations

import json
import re

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw

import groundlm
from groundlm.backends import FamilyProcessor, UnsupportedTask
from groundlm.evaluate.runner import EvalConfig, evaluate
from groundlm.integrations.harness import Harness, Request
from groundlm.records import write_jsonl
from groundlm.serve import create_app
from tests.backend_models import FAMILIES, build_family, forced
from tests.serve_helpers import chat_body, data_url

REFER = "[refer] give me the location of the red circle"

# (answer the family writes for the red circle, the pixel box groundlm must read from it)
SCRIPTED = {
    # PaliGemma: y1 x1 y2 x2, round(v * 1023) → 256, 767; read back k / 1023 of 120 x 80
    "paligemma": ("<loc0256><loc0256><loc0767><loc0767> red circle",
                  (256 / 1023 * 120, 256 / 1023 * 80, 767 / 1023 * 120, 767 / 1023 * 80)),
    # Florence-2: floor(v * 1000) → 250, 750; read back at the bin centre (k + 0.5) / 1000
    "florence2": ("red circle<loc_250><loc_250><loc_750><loc_750>",
                  (250.5 / 1000 * 120, 250.5 / 1000 * 80, 750.5 / 1000 * 120, 750.5 / 1000 * 80)),
    # Kosmos-2: cells (8, 8) → 264 and ceil(0.75 * 32 - 1) = 23 → 759; centres (8.5 / 32, 23.5 / 32)
    "kosmos2": ("<object><patch_index_0264><patch_index_0759></object>",
                (8.5 / 32 * 120, 8.5 / 32 * 80, 23.5 / 32 * 120, 23.5 / 32 * 80)),
    # Qwen2.5-VL: the 120 x 80 image is resized to 112 x 84 (smart_resize, multiples of 28); pixels of that
    "qwen2_5_vl": ('```json\n[{"bbox_2d": [28, 21, 84, 63], "label": "red circle"}]\n```', (30.0, 20.0, 90.0, 60.0)),
}
PHRASE = {"paligemma": "red circle", "florence2": "red circle", "kosmos2": None, "qwen2_5_vl": "red circle"}
# a task each family has no prompt for (None: Qwen2.5-VL has a prompt for every task)
REFUSED = {"paligemma": "grounding", "florence2": "vqa", "kosmos2": "detection", "qwen2_5_vl": None}


pytestmark = pytest.mark.usefixtures("module_one_thread")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {family: build_family(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def lms(checkpoints):
    return {family: groundlm.load(path) for family, path in checkpoints.items()}


def scene(size=(120, 80), colour=(200, 30, 30)) -> Image.Image:
    image = Image.new("RGB", size, (240, 240, 240))
    ImageDraw.Draw(image).ellipse((30, 20, 90, 60), fill=colour)
    return image


@pytest.mark.parametrize("family", FAMILIES)
def test_load_recognises_the_family_and_returns_a_groundlm(lms, family):
    lm = lms[family]
    assert isinstance(lm, groundlm.GroundLM) and isinstance(lm.processor, FamilyProcessor)
    assert lm.loop is lm.processor.loop and not lm.model.training


@pytest.mark.parametrize("family", FAMILIES)
def test_a_scripted_answer_becomes_pixel_boxes_of_a_non_square_image(lms, family):
    lm = lms[family]
    answer, box = SCRIPTED[family]
    with forced(lm, [answer]):
        out = lm.ask(scene(), REFER, max_new_tokens=80)
    assert out.text == answer
    (obj,) = out.objects
    assert obj.box == pytest.approx(box, abs=1e-6)
    assert obj.phrase == PHRASE[family]
    # the plain text (for people, and before the boxes the tool harness writes) holds no location: read with
    # the image's codec, as the objects are (Qwen2.5-VL's numbers are pixels of this image's resized input)
    _, frame = lm.processor.image(scene())
    assert lm.processor.parse(out.plain_text, frame) == []
    assert out.plain_text == (PHRASE[family] or "")


def generated_ids(lm, encoded) -> list[list[int]]:
    """The token ids the family's decoding chooses for a batch (dropped ids included, which `text` hides)."""
    rows: list[list[int]] = [[] for _ in encoded]

    def take(step):
        for row, token in enumerate(step.tokens):
            if token is not None:
                rows[row].append(token)

    tok = lm.processor.tokenizer
    lm.loop(lm.model, lm.processor.pad(encoded), max_new_tokens=6, pad_token_id=tok.pad_token_id,
                      stop_token_ids={lm.processor.stop_token_id}, on_step=take)
    return rows


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_answers_equal_one_at_a_time(lms, family):
    lm = lms[family]
    images = [scene(), scene((60, 90), (30, 30, 200)), scene((100, 100), (30, 200, 30))]
    prompts = [REFER, "[refer] the blue circle", "[caption] please describe this image?"]
    batched = lm.ask_many(images, prompts, max_new_tokens=6, batch_size=3)
    alone = [lm.ask(img, p, max_new_tokens=6) for img, p in zip(images, prompts, strict=True)]
    assert [a.text for a in batched] == [a.text for a in alone]
    encoded = [lm.processor.prompt(img, [{"role": "user", "content": p}]) for img, p in zip(images, prompts, strict=True)]
    together = generated_ids(lm, encoded)
    assert together == [generated_ids(lm, [e])[0] for e in encoded]
    assert all(len(ids) == 6 for ids in together) or any(ids[-1] == lm.processor.stop_token_id for ids in together)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_task_the_family_cannot_do_is_refused_with_its_name(lms, family):
    task = REFUSED[family]
    if task is None:
        pytest.skip("Qwen2.5-VL has a prompt for every groundlm task")
    with pytest.raises(UnsupportedTask, match=rf"has no prompt for the \[{task}\] task") as err:
        lms[family].ask(scene(), f"[{task}] what is this?")
    assert lms[family].processor.family in str(err.value)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_seeded_sample_repeats_whatever_shares_its_batch(lms, family):
    from groundlm.decoding import Sampling

    lm = lms[family]
    sampling = Sampling(temperature=1.0, top_p=0.9, seed=7)
    one = lm.generate([lm.processor.prompt(scene(), [{"role": "user", "content": REFER}])], 6, sampling=sampling)
    batch = [lm.processor.prompt(img, [{"role": "user", "content": REFER}])
             for img in (scene((60, 90)), scene())]
    two = lm.generate(batch, 6, sampling=sampling)
    assert two[1].answer.text == one[0].answer.text


@pytest.mark.parametrize("family", FAMILIES)
def test_the_server_returns_the_objects_ask_returns_and_streams_the_same_text(lms, family):
    import io

    lm = lms[family]
    answer, box = SCRIPTED[family]
    raw = io.BytesIO()
    scene().save(raw, format="PNG")
    with TestClient(create_app(lm, name=family, ui=False)) as client:
        with forced(lm, [answer]):
            r = client.post("/v1/chat/completions", json=chat_body(REFER, data_url(raw.getvalue()), max_tokens=80))
        assert r.status_code == 200, r.text
        message = r.json()["choices"][0]["message"]
        with forced(lm, [answer]):
            expected = lm.ask(scene(), REFER, max_new_tokens=80)
        assert message["content"] == expected.text == answer
        assert message["objects"] == [o.to_dict() for o in expected.objects]
        assert message["objects"][0]["box"] == pytest.approx(box, abs=1e-6)
        with forced(lm, [answer]):
            s = client.post("/v1/chat/completions",
                            json=chat_body(REFER, data_url(raw.getvalue()), max_tokens=80, stream=True))
        events = [json.loads(line[6:]) for line in s.text.splitlines() if line.startswith("data: {")]
        pieces = [e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]]
        assert "".join(pieces) == answer and len([p for p in pieces if p]) > 1


@pytest.mark.parametrize("family", FAMILIES)
def test_eval_runner_scores_a_family_model_on_records(lms, family, tmp_path):
    lm = lms[family]
    answer, _ = SCRIPTED[family]
    scene().save(tmp_path / "a.png")
    scene().save(tmp_path / "b.png")
    records = [
        {"id": name, "image": f"{name}.png", "objects": [{"box": box, "label": "red circle"}],
         "messages": [{"role": "user", "content": REFER}, {"role": "assistant", "content": "<box:0>"}]}
        for name, box in (("a", [30, 20, 90, 60]), ("b", [0, 0, 20, 20]))
    ]
    write_jsonl(tmp_path / "records.jsonl", records)
    with forced(lm, [answer, answer]):
        metrics = evaluate(lm, tmp_path / "run", EvalConfig(benchmark="records", data=tmp_path / "records.jsonl",
                                                           batch_size=2, max_new_tokens=80))
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in rows] == [answer, answer]
    assert metrics["refer"]["hits"] == 1 and metrics["refer"]["total"] == 2  # right on a, wrong on b


@pytest.mark.parametrize("family", FAMILIES)
def test_the_tool_harness_writes_boxes_in_fractions_of_the_original_image(lms, family):
    lm = lms[family]
    answer, box = SCRIPTED[family]
    harness = Harness(lm, batch_size=2)
    prompt = ("Please provide the bounding box coordinate of the region this sentence describes: the red circle")
    with forced(lm, [answer]):
        (text,) = harness.generate([Request(scene(), REFER, max_new_tokens=80)])
    fractions = [box[0] / 120, box[1] / 80, box[2] / 120, box[3] / 80]
    written = "[" + ", ".join(f"{v:.4f}" for v in fractions) + "]"
    assert text.endswith(written)
    # lmms-eval's refcoco_bbox_rec and VLMEvalKit's RefCOCO scorer read the FIRST bracketed four numbers
    first = re.search(r"\[\s*[-\d.]+\s*,\s*[-\d.]+\s*,\s*[-\d.]+\s*,\s*[-\d.]+\s*\]", text)
    assert first is not None and first.group(0) == written, text
    assert harness.prompt_for(prompt) == prompt


@pytest.mark.parametrize("family", ["qwen2_5_vl", "paligemma", "kosmos2"])
def test_the_harness_scores_the_greedy_continuation_as_greedy(lms, family):
    lm = lms[family]
    harness = Harness(lm, batch_size=2)
    encoded = lm.processor.prompt(scene(), [{"role": "user", "content": REFER}])
    first = generated_ids(lm, [encoded])[0][:1]  # one token: random bytes beyond it may not be valid text
    greedy = lm.processor.tokenizer.decode(first)
    assert lm.processor.tokenizer(greedy, add_special_tokens=False)["input_ids"] == first
    other = "xyz" if greedy != "xyz" else "abc"
    (mine, is_greedy), (theirs, other_greedy) = harness.loglikelihood([(scene(), REFER, greedy), (scene(), REFER, other)])
    assert is_greedy and not other_greedy and mine > theirs


def test_florence2_refuses_to_score_continuations(lms):
    with pytest.raises(ValueError, match="Florence-2 does not score continuations"):
        Harness(lms["florence2"]).loglikelihood([(scene(), REFER, "a")])

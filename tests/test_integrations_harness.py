"""What the lmms-eval and VLMEvalKit integrations ask of a model (groundlm.integrations.harness), on a random
tiny model; no evaluation tool is imported (the real lmms-eval run is `make test-lmms`)."""

import dataclasses
import re

import pytest
import torch
from PIL import Image

import groundlm
from groundlm.decoding import GREEDY, Sampling
from groundlm.inference import GroundLM
from groundlm.integrations.harness import (
    REC_INSTRUCTION,
    Harness,
    Request,
    answer_text,
    referring_expression,
    sampling_of,
)
from groundlm.processor import GroundLMProcessor

# lmms-eval refcoco_bbox_rec's parse (published_models.md §3): the first bracketed list of four numbers
LMMS_REC = re.compile(r"\[\s*(-?\d+(?:\.\d+)?),\s*(-?\d+(?:\.\d+)?),\s*(-?\d+(?:\.\d+)?),\s*(-?\d+(?:\.\d+)?)\s*\]")
LMMS_PROMPT = ("Bounding box coordinates are specified in the format (top-left x, top-left y, bottom-right x, "
               "bottom-right y). All values are floating point numbers bounded between 0 and 1. " + REC_INSTRUCTION)


@pytest.fixture(scope="module")
def lm(tiny_dir):
    return groundlm.load(tiny_dir)


@pytest.fixture(scope="module")
def padded(lm):
    """The tiny model seeing LLaVA-1.5's frame: the image padded to a square."""
    config = dataclasses.replace(lm.processor.config, frame="pad")
    return GroundLM(lm.model, GroundLMProcessor(lm.processor.tokenizer, config))


def _img(colour=(255, 0, 0), size=(80, 60)):
    return Image.new("RGB", size, colour)


def test_answer_box_is_a_fraction_of_the_original_non_square_image_not_of_the_padded_square(padded):
    # 200 x 100 padded to 200 x 200: the image sits 50 px down; y in the square = (y_orig + 50) / 200
    frame = padded.processor.image(_img(size=(200, 100)))[1]
    answer = padded.answer_for("{<10><30><30><60>}", frame)
    assert answer.objects[0].box == pytest.approx((20, 10, 60, 70))  # original pixels
    text = answer_text(answer, (200, 100))
    assert text == "[0.1000, 0.1000, 0.3000, 0.7000]"
    assert [float(v) for v in LMMS_REC.search(text).groups()] == [0.1, 0.1, 0.3, 0.7]


def test_answer_text_keeps_plain_text_before_boxes_and_clips_to_the_image(lm):
    frame = lm.processor.image(_img(size=(100, 50)))[1]
    answer = lm.answer_for("<p>red circle</p> {<0><0><50><100>}", frame)
    assert answer_text(answer, (100, 50), decimals=2) == "red circle [0.00, 0.00, 0.50, 1.00]"
    assert answer_text(answer, None) == "red circle"  # no image: nothing to be a fraction of


def test_referring_expression_reads_lmms_eval_and_vlmevalkit_prompts():
    assert referring_expression(LMMS_PROMPT + " the red circle") == "the red circle"
    assert referring_expression(REC_INSTRUCTION + " <ref>man in black</ref>") == "man in black"
    assert referring_expression("What colour is the square?") is None
    assert referring_expression(REC_INSTRUCTION + "   ") is None


def test_rec_prompt_asks_refcoco_prompts_in_the_models_words_and_leaves_others(lm):
    harness = Harness(lm, rec_prompt="[refer] give me the location of {}")
    assert harness.prompt_for(LMMS_PROMPT + " the red circle") == "[refer] give me the location of the red circle"
    assert harness.prompt_for("<image>\n[vqa] what colour?") == "[vqa] what colour?"
    assert Harness(lm).prompt_for(LMMS_PROMPT + " x") == LMMS_PROMPT + " x"
    with pytest.raises(ValueError, match="exactly one"):
        Harness(lm, rec_prompt="[refer] locate it")


def test_generate_in_batches_equals_ask_many_in_request_order(lm):
    images = [_img((255, 0, 0)), _img((0, 0, 255), (40, 90)), _img((0, 255, 0), (128, 128)), None]
    prompts = ["[refer] the red circle", "[vqa] what colour is the square", "[caption]", "[caption]"]
    lengths = [6, 9, 6, 9]  # two generation settings interleaved: answers must still come back in order
    asked = [Request(i, p, max_new_tokens=n) for i, p, n in zip(images, prompts, lengths, strict=True)]
    got = Harness(lm, batch_size=2).generate(asked)
    expected = [
        answer_text(lm.ask(i, p, max_new_tokens=n), i.size if i else None)
        for i, p, n in zip(images, prompts, lengths, strict=True)
    ]
    assert got == expected


def test_generate_cuts_answers_at_the_tasks_stop_strings(lm):
    full = Harness(lm).generate([Request(_img(), "[caption]", max_new_tokens=12)])[0]
    words = full.split()
    if len(words) < 2:
        pytest.skip(f"the random model's answer {full!r} has no second word to stop at")
    cut = Harness(lm).generate([Request(_img(), "[caption]", until=(words[1],), max_new_tokens=12)])[0]
    assert cut == full[: full.index(words[1])].strip()


def test_loglikelihood_scores_the_greedy_token_as_greedy_and_batches_like_singles(lm):
    tok = lm.processor.tokenizer
    image = _img()
    enc = lm.processor.prompt(image, [{"role": "user", "content": "[vqa] what colour is it"}])
    batch = {k: v for k, v in lm.processor.pad([enc]).items() if k != "labels"}
    with torch.no_grad():
        logits = lm.model(**batch).logits[0, -1].float()
    logprobs = torch.log_softmax(logits, -1)
    best, other = torch.topk(logprobs, 2).indices.tolist()
    # word-level tokens: each decodes to a string that tokenizes back to itself
    cont_best, cont_other = tok.decode([best]), tok.decode([other])
    assert tok(cont_best, add_special_tokens=False)["input_ids"] == [best]
    harness = Harness(lm, batch_size=3)
    items = [(image, "[vqa] what colour is it", cont_best), (None, "[caption]", cont_best),
             (image, "[vqa] what colour is it", cont_other)]
    scores = harness.loglikelihood(items)
    assert scores[0][0] == pytest.approx(logprobs[best].item(), abs=1e-4) and scores[0][1] is True
    assert scores[2][0] == pytest.approx(logprobs[other].item(), abs=1e-4) and scores[2][1] is False
    singles = [Harness(lm, batch_size=1).loglikelihood([item])[0] for item in items]
    assert [s[1] for s in scores] == [s[1] for s in singles]
    assert [s[0] for s in scores] == pytest.approx([s[0] for s in singles], abs=1e-4)


def test_sampling_of_tool_generation_kwargs():
    assert sampling_of({}) is GREEDY
    assert sampling_of({"temperature": 0, "do_sample": False}) is GREEDY
    assert sampling_of({"temperature": 0.7, "do_sample": False}) is GREEDY
    assert sampling_of({"temperature": 0.7, "top_p": 0.9}) == Sampling(temperature=0.7, top_p=0.9, seed=0)


def test_batch_size_must_be_positive(lm):
    with pytest.raises(ValueError, match="batch_size"):
        Harness(lm, batch_size=0)

"""The decoding loop (decoding.py) on the real tiny model: greedy equals transformers' generate token for token
(batched, left padded), seeded nucleus sampling, `max_new_tokens`, stop tokens and `finish_reason`."""

from __future__ import annotations

import pytest
from PIL import Image

import groundlm
from groundlm.decoding import Sampling, generate
from tests.serve_helpers import FIXED_ANSWER, FixedAnswerLM

PROMPTS = ["[refer] the red circle", "[vqa] how many shapes are there in the picture", "[caption]"]


@pytest.fixture(scope="module")
def lm(tiny_dir):
    return groundlm.load(tiny_dir)


def _batch(lm, colours=((255, 0, 0), (0, 200, 0), (10, 10, 240))):
    images = [Image.new("RGB", (80 + 10 * i, 60), c) for i, c in enumerate(colours)]
    return [lm.processor.prompt(img, [{"role": "user", "content": p}]) for img, p in zip(images, PROMPTS, strict=True)]


def test_greedy_tokens_equal_transformers_generate_on_a_left_padded_batch(lm):
    batch = _batch(lm)
    assert len({len(e.input_ids) for e in batch}) == 3  # different lengths: the batch is left padded
    inputs = {k: v for k, v in lm.processor.pad(batch, side="left").items() if k != "labels"}
    tok, stop = lm.processor.tokenizer, lm.processor.stop_token_id
    n = 12
    reference = lm.model.generate(**inputs, max_new_tokens=n, do_sample=False, eos_token_id=stop,
                                  pad_token_id=tok.pad_token_id)[:, inputs["input_ids"].shape[1]:]
    steps = list(generate(lm.model, inputs, max_new_tokens=n, stop_token_ids={stop}, pad_token_id=tok.pad_token_id))
    for row in range(len(batch)):
        ours = [s.tokens[row] for s in steps if s.tokens[row] is not None]
        theirs = reference[row].tolist()
        if stop in theirs:
            theirs = theirs[: theirs.index(stop) + 1]
        assert ours == theirs, row
    # and the answers of ask_many are those tokens, decoded
    texts = [lm.processor.decode(r.tolist()) for r in reference]
    assert [g.answer.text for g in lm.generate(batch, n)] == texts


def test_seeded_nucleus_sampling_repeats_and_differs_from_greedy(lm):
    batch = _batch(lm)
    hot = Sampling(temperature=1.5, top_p=0.95, seed=7)
    first = lm.generate(batch, 10, sampling=hot)
    again = lm.generate(batch, 10, sampling=hot)
    greedy = lm.generate(batch, 10)
    assert [g.answer.text for g in first] == [g.answer.text for g in again]
    assert [g.answer.text for g in first] != [g.answer.text for g in greedy]
    other_seed = lm.generate(batch, 10, sampling=Sampling(temperature=1.5, top_p=0.95, seed=8))
    assert [g.answer.text for g in other_seed] != [g.answer.text for g in first]


def test_a_seeded_row_samples_the_same_answer_alone_and_in_a_batch(lm):
    batch = _batch(lm)
    longest = max(range(len(batch)), key=lambda r: len(batch[r].input_ids))  # no padding in the batch either
    hot = Sampling(temperature=1.5, top_p=0.95, seed=11)
    together = lm.generate(batch, 10, sampling=hot)
    alone = lm.generate([batch[longest]], 10, sampling=hot)
    assert alone[0].answer.text == together[longest].answer.text
    assert len({g.answer.text for g in together}) > 1  # the rows' own draws, not one shared answer


def test_finish_reason_is_length_exactly_when_max_new_tokens_ran_out(lm):
    for g in lm.generate(_batch(lm), 5):
        stopped = g.finish_reason == "stop"
        assert g.finish_reason in ("stop", "length") and g.completion_tokens <= 5
        assert stopped or g.completion_tokens == 5


def test_a_stub_model_respects_max_new_tokens(lm):
    endless = FixedAnswerLM(lm, stop=False)  # never writes the stop token
    (g,) = endless.generate(_batch(lm)[:1], 3)
    assert g.completion_tokens == 3 and g.finish_reason == "length"
    assert endless.model.forwards == 3  # the prefill and two steps: no pass after the last token
    (g,) = FixedAnswerLM(lm).generate(_batch(lm)[:1], 64)
    assert g.answer.text == FIXED_ANSWER and g.finish_reason == "stop"
    assert g.completion_tokens == len(lm.processor.tokenizer(FIXED_ANSWER, add_special_tokens=False)["input_ids"]) + 1


def test_stop_strings_end_a_row_and_are_cut(lm):
    (g,) = FixedAnswerLM(lm).generate(_batch(lm)[:1], 64, stop=["</p>"])
    assert g.answer.text == "<p>red circle" and g.finish_reason == "stop"
    assert g.completion_tokens == 4  # <p> red circle </p>: decoding ended at the stop string


def test_streamed_pieces_join_to_the_answer(lm):
    pieces: dict[int, list[str]] = {}
    generations = lm.generate(_batch(lm), 8, on_text=lambda row, piece: pieces.setdefault(row, []).append(piece))
    for row, g in enumerate(generations):
        assert "".join(pieces.get(row, [])) == g.answer.text


def test_zero_new_tokens_yields_nothing(lm):
    inputs = {k: v for k, v in lm.processor.pad(_batch(lm)[:1]).items() if k != "labels"}
    assert list(generate(lm.model, inputs, max_new_tokens=0, stop_token_ids={3}, pad_token_id=0)) == []

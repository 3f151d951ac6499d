"""MiniGPT-4's stage-2 pipeline (`groundlm curate minigpt4-detail`) with a real groundlm model describing the
images, loaded here or behind `groundlm serve`'s app, and a scripted chat LLM correcting the text; and
`groundlm serve` itself as the chat LLM, whose random tiny model's answers are refused and counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from groundlm.cli import app
from groundlm.curate import LocalDescriber, PromptSet, shipped
from groundlm.records import Message, Record, read_jsonl, write_jsonl

from .conftest import realdata
from .curate_helpers import ScriptedLLM, last_user, shapes_source
from .serve_helpers import ServerThread

pytest.importorskip("openai", reason="groundlm curate needs the openai client (pip install 'groundlm[curate]')")

PARAGRAPH = ("The image shows a few flat coloured shapes on a plain grey background. They are spread apart, "
             "each has sharp edges and one solid colour, and nothing else appears in the picture.")


pytestmark = pytest.mark.usefixtures("module_one_thread")


def _fixer(apologetic: str):
    """A chat LLM that returns PARAGRAPH, or apologises (boilerplate the rules refuse) for `apologetic`."""

    def respond(body):
        if last_user(body) == apologetic:
            return "I'm sorry, I made a mistake. " + PARAGRAPH
        return PARAGRAPH

    return respond


def _run(*args: str) -> str:
    result = CliRunner().invoke(app, ["curate", "minigpt4-detail", *args, "--model", "scripted", "--backoff", "0"])
    assert result.exit_code == 0, result.output
    return result.output


def test_a_local_groundlm_model_describes_continues_when_short_and_the_llm_text_is_filtered(tmp_path, tiny_dir):
    source, truth = shapes_source(tmp_path, n=4)
    prompts = PromptSet(shipped("minigpt4-detail"))
    describer = LocalDescriber(tiny_dir, device="cpu")
    images = sorted(truth)
    # what the describer says: its answer, then (shorter than 80 tokens) its answer to "Continue"
    expected = {}
    for image in images:
        turns = [{"role": "user", "content": prompts.text("describe.txt")}]
        first = describer.describe(tmp_path / image, turns, 6)
        assert first.tokens < 80
        turns += [{"role": "assistant", "content": first.text}, {"role": "user", "content": "Continue"}]
        expected[image] = f"{first.text.strip()} {describer.describe(tmp_path / image, turns, 6).text.strip()}"
    texts = list(expected.values())
    # the LLM apologises for one description (a random model may describe two images alike: one request)
    refused = next(image for image in images if texts.count(expected[image]) == 1)
    out = tmp_path / "detail.jsonl"
    with ScriptedLLM(_fixer(expected[refused])) as llm:
        output = _run(str(source), "--out", str(out), "--base-url", llm.base_url, "--describer", str(tiny_dir),
                      "--device", "cpu", "--describe-max-tokens", "6", "--invalid-retries", "1",
                      "--concurrency", "1")
        seen = sorted(last_user(b) for b in llm.bodies)
    assert seen == sorted([*set(texts), expected[refused]])  # the refused one was asked twice
    assert f"3 records; {len(seen)} LLM requests" in output and "8 descriptions" in output
    assert "skipped 1 (fix: contains \"i'm sorry\": 1)" in output
    assert all(b["messages"][0]["content"] == prompts.text("fix_system.txt") for b in llm.bodies)
    records = read_jsonl(out)
    assert [r.image for r in records] == [i for i in images if i != refused]
    for record in records:
        assert record.messages[0].content in prompts.lines("instructions.lines")
        assert record.messages[1].content == PARAGRAPH and record.objects == []
        assert record.meta["describer"].startswith("groundlm:")
    # the same command again: everything from the cache, the same file
    before = out.read_text()
    with ScriptedLLM(_fixer("")) as llm:
        output = _run(str(source), "--out", str(out), "--base-url", llm.base_url, "--describer", str(tiny_dir),
                      "--device", "cpu", "--describe-max-tokens", "6", "--concurrency", "1")
        assert llm.bodies == []
    assert "0 LLM requests" in output and out.read_text() == before


@pytest.mark.realdata
def test_real_photos_of_every_image_mode_are_described_corrected_and_checked(tmp_path, tiny_dir):
    photos = realdata("images")
    names = ["astronaut.png", "camera.png", "horse.png", "rocket.jpg"]  # RGB, grayscale (L), RGBA, JPEG
    sources = [Record(f"photo-{Path(n).stem}", n, [], [Message("user", "[caption] describe the image"),
                                                       Message("assistant", "a photograph")]) for n in names]
    write_jsonl(tmp_path / "photos.jsonl", sources)
    out = tmp_path / "detail.jsonl"
    with ScriptedLLM(_fixer("")) as llm:
        output = _run(str(tmp_path / "photos.jsonl"), "--image-root", str(photos), "--out", str(out),
                      "--base-url", llm.base_url, "--describer", str(tiny_dir), "--device", "cpu",
                      "--describe-max-tokens", "6", "--concurrency", "1")
        described = [last_user(b) for b in llm.bodies]
    summary = output.strip().splitlines()[-1]  # the run's last line; progress lines come before it
    assert summary.startswith("4 records;") and "skipped" not in summary, output
    assert all(d.strip() for d in described)  # the LLM was sent what the model said about each photo
    checked = CliRunner().invoke(app, ["data", "check", str(out)])
    assert checked.exit_code == 0 and "4 valid records" in checked.output, checked.output
    records = read_jsonl(out)
    assert [r.image for r in records] == names
    assert all(r.messages[1].content == PARAGRAPH and r.meta["source"] == "curate/minigpt4-detail" for r in records)


def test_groundlm_serve_as_describer_and_as_chat_llm(tmp_path, tiny_dir):
    from groundlm import load
    from groundlm.serve import create_app

    source, _ = shapes_source(tmp_path, n=2)
    served = ServerThread(create_app(load(tiny_dir, device="cpu"), name="tiny", ui=False))
    with served, ScriptedLLM(_fixer("")) as llm:
        url = served.url + "/v1"
        output = _run(str(source), "--out", str(tmp_path / "detail.jsonl"), "--base-url", llm.base_url,
                      "--describer-url", url, "--describer-model", "tiny", "--describe-max-tokens", "6")
        described = [last_user(b) for b in llm.bodies]
        # the served random model as the chat LLM: its answers are not the JSON GVC needs
        result = CliRunner().invoke(app, [
            "curate", "gvc", str(source), "--out", str(tmp_path / "gvc.jsonl"), "--base-url", url,
            "--model", "tiny", "--backoff", "0", "--max-tokens", "12", "--invalid-retries", "1", "--concurrency", "1",
        ])  # fmt: skip
    assert "2 records; 2 LLM requests" in output and "4 descriptions" in output
    assert all(d.strip() for d in described) and len(read_jsonl(tmp_path / "detail.jsonl")) == 2
    assert result.exit_code == 0, result.output
    assert "0 records; 4 LLM requests" in result.output
    assert "skipped 2 (ground: " in result.output
    assert read_jsonl(tmp_path / "gvc.jsonl") == []
    reasons = json.dumps(result.output)
    assert "not JSON" in reasons or "no 'grounded'" in reasons

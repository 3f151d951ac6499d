"""`groundlm curate`'s machinery against a scripted OpenAI-compatible server on loopback: retries with backoff,
failures that stop the run, invalid answers (asked again, skipped, remembered), the cache, bounded concurrency,
the answer parsers, prompt-set errors and how sources are merged per image."""

from __future__ import annotations

import json
import re
import shutil
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from groundlm.curate import (
    PIPELINES,
    Backoff,
    Cache,
    Endpoint,
    EndpointError,
    LLMClient,
    PromptError,
    PromptSet,
    Session,
    Settings,
    Skip,
    curate_subjects,
    read_subjects,
    shipped,
)
from groundlm.curate.answers import Invalid, json_answer, plain_text
from groundlm.curate.gvc import ground_text
from groundlm.records import GroundTruthObject, Message, Record, write_jsonl

from .curate_helpers import Reply, ScriptedLLM, shapes_source

pytest.importorskip("openai", reason="groundlm curate needs the openai client (pip install 'groundlm[curate]')")

FAST = Backoff(retries=3, first_s=0.0)


def _client(llm: ScriptedLLM, backoff: Backoff = FAST) -> LLMClient:
    return LLMClient(Endpoint(llm.base_url, "scripted", timeout_s=10), backoff)


def _session(llm: ScriptedLLM, tmp_path, **settings) -> Session:
    return Session(_client(llm), Cache(tmp_path / "cache.sqlite"), Settings(**settings))


def _script(*replies):
    """A responder giving `replies` in turn, then repeating the last one."""
    replies = list(replies)

    def respond(body):
        return replies.pop(0) if len(replies) > 1 else replies[0]

    return respond


def test_transient_failures_are_retried_with_backoff_until_an_answer_comes():
    script = _script(Reply(status=500), Reply(status=503), Reply(status=429, headers={"retry-after": "0"}), "fine")
    with ScriptedLLM(script) as llm:
        client = _client(llm)
        answer = client.complete([{"role": "user", "content": "hi"}], max_tokens=5)
    assert answer.content == "fine"
    assert client.attempts == 4 and len(llm.bodies) == 4
    assert answer.prompt_tokens > 0 and answer.completion_tokens == 1


def test_backoff_doubles_and_honours_retry_after_within_the_cap():
    backoff = Backoff(retries=5, first_s=1.0)
    assert [backoff.delay(k) for k in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff.delay(0, retry_after=7.0) == 7.0 and backoff.delay(10) == 60.0


def test_a_request_failing_every_retry_is_skipped_and_sent_again_on_the_next_run(tmp_path):
    with ScriptedLLM(lambda body: Reply(status=500)) as llm:
        session = _session(llm, tmp_path)
        with pytest.raises(Skip, match=r"conversation: no answer \(HTTP 500: scripted 500 \(after 4 attempts\)\)"):
            session.ask([{"role": "user", "content": "hi"}], str, what="conversation")
        assert len(llm.bodies) == 4 and len(session.cache) == 0
        with pytest.raises(Skip):
            session.ask([{"role": "user", "content": "hi"}], str, what="conversation")
        assert len(llm.bodies) == 8  # not remembered: the endpoint may be back next time


def test_a_refused_request_is_not_retried(tmp_path):
    with ScriptedLLM(lambda body: Reply(status=400)) as llm:
        with pytest.raises(Skip, match="HTTP 400"):
            _session(llm, tmp_path).ask([{"role": "user", "content": "hi"}], str, what="detail")
        assert len(llm.bodies) == 1


@pytest.mark.parametrize("status", [401, 404])
def test_a_wrong_key_or_model_stops_the_run(tmp_path, status):
    source, _ = shapes_source(tmp_path, n=3)
    pipeline = PIPELINES["llava-instruct"](PromptSet(shipped("llava-instruct")))
    with ScriptedLLM(lambda body: Reply(status=status)) as llm:
        session = _session(llm, tmp_path)
        with pytest.raises(EndpointError, match=f"HTTP {status}"):
            curate_subjects(pipeline, read_subjects([source]), session, concurrency=1)
        assert len(llm.bodies) == 1  # the first refusal stops every worker


def _closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_endpoint_stops_the_run_after_one_request_s_retries(tmp_path):
    source, _ = shapes_source(tmp_path, n=3)
    pipeline = PIPELINES["llava-instruct"](PromptSet(shipped("llava-instruct")))
    client = LLMClient(Endpoint(f"http://127.0.0.1:{_closed_port()}/v1", "scripted", timeout_s=10), FAST)
    session = Session(client, Cache(tmp_path / "cache.sqlite"))
    unreachable = r"cannot reach http://127\.0\.0\.1:\d+/v1 \(model 'scripted'; .*after 4 attempts\)"
    with pytest.raises(EndpointError, match=unreachable):
        curate_subjects(pipeline, read_subjects([source]), session, concurrency=1)
    assert client.attempts == 4  # the first request's attempts; no image is skipped for it


def test_an_unreachable_endpoint_is_the_reason_given_when_every_worker_stops(tmp_path):
    source, _ = shapes_source(tmp_path, n=6)
    pipeline = PIPELINES["llava-instruct"](PromptSet(shipped("llava-instruct")))
    client = LLMClient(Endpoint(f"http://127.0.0.1:{_closed_port()}/v1", "scripted", timeout_s=10), FAST)
    session = Session(client, Cache(tmp_path / "cache.sqlite"))
    # the workers still retrying stop with `Stopped` when the first gives up: the run names the endpoint
    with pytest.raises(EndpointError, match=r"cannot reach http://127\.0\.0\.1:\d+/v1"):
        curate_subjects(pipeline, read_subjects([source]), session, concurrency=3)


def test_a_request_timing_out_on_every_attempt_is_skipped_and_the_run_goes_on(tmp_path):
    with ScriptedLLM(lambda body: Reply("late", delay=1.0)) as llm:
        client = LLMClient(Endpoint(llm.base_url, "scripted", timeout_s=0.2), Backoff(retries=1, first_s=0.0))
        session = Session(client, Cache(tmp_path / "cache.sqlite"))
        with pytest.raises(Skip, match=r"detail: no answer \(APITimeoutError: .*\(after 2 attempts\)\)"):
            session.ask([{"role": "user", "content": "hi"}], str, what="detail")
    assert len(llm.bodies) == 2


def _settings_set(tmp_path) -> str:
    """A copy of the shipped gvc prompt set whose settings.json has a seed of the wrong type."""
    folder = tmp_path / "prompts"
    shutil.copytree(shipped("gvc"), folder)
    (folder / "settings.json").write_text(json.dumps({"seed": "zero"}))
    return str(folder)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (lambda tmp: ["gvc", "--base-url", f"http://127.0.0.1:{_closed_port()}/v1"],
         r"cannot reach http://127\.0\.0\.1:\d+/v1 \(model 'scripted'; APIConnectionError"),
        (lambda tmp: ["minigpt4-detail", "--base-url", "http://127.0.0.1:1/v1", "--describer", str(tmp)],
         r"--describer \S+: not a groundlm model directory \(.*model\.safetensors"),
        (lambda tmp: ["gvc", "--base-url", "http://127.0.0.1:1/v1", "--prompts", _settings_set(tmp)],
         r"prompts/settings\.json: seed must be an integer, got 'zero'"),
    ],
    ids=["unreachable-endpoint", "describer-not-a-model", "prompt-setting-of-the-wrong-type"],
)  # fmt: skip
def test_bad_input_stops_the_command_with_one_line_naming_it(tmp_path, args, message):
    from typer.testing import CliRunner

    from groundlm.cli import app

    source, _ = shapes_source(tmp_path, n=2)
    pipeline, *options = args(tmp_path)
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(app, ["curate", pipeline, str(source), "--out", str(out), *options,
                                      "--model", "scripted", "--backoff", "0", "--max-retries", "1"])  # fmt: skip
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert re.search(message, lines[0]), lines[0]
    assert not out.exists()


def test_invalid_answers_are_asked_again_then_skipped_remembered_and_never_returned(tmp_path):
    parse = lambda text: text if text.startswith("good") else Invalid("not good")  # noqa: E731
    messages = [{"role": "user", "content": "say good"}]
    with ScriptedLLM(_script("bad", "worse", "good answer")) as llm:
        session = _session(llm, tmp_path, invalid_retries=2)
        assert session.ask(messages, parse, what="fix") == "good answer"
        assert session.tally.invalid == {"fix: not good": 2} and session.tally.requests == 3
        # a second ask of the same request comes from the cache
        assert session.ask(messages, parse, what="fix") == "good answer"
        assert len(llm.bodies) == 3 and session.tally.cached == 1
    other = [{"role": "user", "content": "never good"}]
    with ScriptedLLM(lambda body: "bad") as llm:
        session = _session(llm, tmp_path, invalid_retries=1)
        with pytest.raises(Skip, match="fix: not good"):
            session.ask(other, parse, what="fix")
        assert len(llm.bodies) == 2
        with pytest.raises(Skip, match="fix: not good"):  # remembered: not paid for again
            session.ask(other, parse, what="fix")
        assert len(llm.bodies) == 2
        retrying = _session(llm, tmp_path, invalid_retries=0, retry_invalid=True)
        with pytest.raises(Skip):
            retrying.ask(other, parse, what="fix")
        assert len(llm.bodies) == 3


def test_a_changed_parser_reads_cached_answers_again(tmp_path):
    messages = [{"role": "user", "content": "x"}]
    with ScriptedLLM(_script("short", "a much longer answer")) as llm:
        session = _session(llm, tmp_path)
        assert session.ask(messages, str, what="detail") == "short"
        stricter = lambda text: plain_text(text, 3)  # noqa: E731
        assert session.ask(messages, stricter, what="detail") == "a much longer answer"
        assert len(llm.bodies) == 2


def test_slow_answers_overlap_up_to_the_concurrency_bound(tmp_path):
    source, _ = shapes_source(tmp_path, n=6)
    pipeline = PIPELINES["llava-instruct"](PromptSet(shipped("llava-instruct")))
    with ScriptedLLM(lambda body: Reply("not json", delay=0.2)) as llm:
        session = _session(llm, tmp_path, invalid_retries=0)
        records = curate_subjects(pipeline, read_subjects([source]), session, concurrency=3)
    assert records == []
    assert llm.most_in_flight == 3
    assert session.tally.skipped["conversation: not JSON"] == 6


def test_cache_survives_reopening_and_ignores_unreadable_entries(tmp_path):
    cache = Cache(tmp_path / "c.sqlite")
    cache.put("a", {"content": "x"})
    cache.close()
    again = Cache(tmp_path / "c.sqlite")
    assert again.get("a") == {"content": "x"} and again.get("b") is None and len(again) == 1
    (tmp_path / "junk.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(ValueError, match="junk.sqlite: not a curation cache"):
        Cache(tmp_path / "junk.sqlite")


# --------------------------------------------------------------------------------------------------------
# Reading answers


def test_grounded_text_becomes_slots_only_when_the_words_are_unchanged():
    original = "Two dogs play near a  bench."
    assert ground_text("<p>Two dogs</p>[1, 3] play near <p>a bench</p> [2].", original, 3) == (
        "<p>Two dogs</p><box:0><box:2> play near <p>a bench</p><box:1>.", 2
    )
    assert ground_text(original, original, 3) == (original, 0)
    assert ground_text("<p>Two cats</p>[1] play near a bench.", original, 3) == Invalid(
        "the text was changed, not only marked"
    )
    assert ground_text("<p>Two dogs</p>[4] play near a bench.", original, 3) == Invalid(
        "object number 4 is not in 1..3"
    )
    assert ground_text("<p>Two dogs</p>[0] play near a bench.", original, 3).reason.startswith("object number 0")
    assert ground_text("<p>Two dogs play near a bench.", original, 3) == Invalid(
        "a phrase tag not closed or without [numbers]"
    )
    assert ground_text("<p>Two dogs</p> play near a bench.", original, 3).reason.startswith("a phrase tag")
    assert ground_text("<p>Two dogs</p>[] play near a bench.", original, 3) == Invalid(
        "a phrase without object numbers"
    )
    assert ground_text("<p>Two dogs</p>[1 2] play near a bench.", original, 3) == Invalid(
        "object numbers not separated by commas"
    )


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="<p/>[]0123456789, abc\n\"{}`", max_size=80))
def test_answer_parsers_never_raise(text):
    assert isinstance(ground_text(text, "abc", 3), tuple | Invalid)
    json_answer(text)
    plain_text(text, 2)
    pipeline = PIPELINES["llava-instruct"](PromptSet(shipped("llava-instruct")))
    for parse in pipeline.parsers.values():
        parse(text)


def test_json_answers_may_come_in_a_code_fence():
    assert json_answer('```json\n{"a": 1}\n```') == {"a": 1}
    assert json_answer('```\n{"a": 1}```') == {"a": 1}
    assert json_answer("{'a': 1}") == Invalid("not JSON")
    assert plain_text("the cat sits at [0.1, 0.2, 0.3, 0.4] today", 2) == Invalid("box coordinates in the text")


# --------------------------------------------------------------------------------------------------------
# Prompt sets and sources


def test_every_shipped_prompt_set_loads():
    for name, pipeline in PIPELINES.items():
        assert pipeline(PromptSet(shipped(name))).name == name


def test_prompt_set_errors_name_the_file_and_the_line(tmp_path):
    folder = tmp_path / "gvc"
    shutil.copytree(shipped("gvc"), folder)
    with open(folder / "examples.jsonl", "a") as f:
        f.write('{"context": "x"}\n')
    with pytest.raises(PromptError, match=r"gvc/examples.jsonl:3: expected \{\"context\": text"):
        PIPELINES["gvc"](PromptSet(folder))
    (folder / "examples.jsonl").unlink()
    with pytest.raises(PromptError, match=r"gvc/examples.jsonl: missing"):
        PIPELINES["gvc"](PromptSet(folder))
    (folder / "settings.json").write_text(json.dumps({"sed": 1}))
    with pytest.raises(PromptError, match="unknown setting 'sed'"):
        PromptSet(folder).settings({"seed": 0})


def test_records_of_one_image_merge_into_one_subject(tmp_path):
    from PIL import Image

    Image.new("RGB", (200, 100)).save(tmp_path / "a.png")
    cat, dog = GroundTruthObject((10, 10, 50, 50), "cat"), GroundTruthObject((60, 10, 90, 40), "dog")
    captions = [
        Record("c1", "a.png", [], [Message("user", "[caption] describe"), Message("assistant", "A cat.")],
               {"captions": ["A cat.", "A cat and a dog."]}),
        Record("c2", "b.png", [], [Message("user", "[caption] describe"), Message("assistant", "Nothing.")]),
    ]  # fmt: skip
    boxes = [
        Record("d1", "a.png", [cat], [Message("user", "[detection] cat"), Message("assistant", "<p>cat</p><box:0>")]),
        Record("d2", "a.png", [cat, dog], [Message("user", "what is here?"), Message("assistant", "a cat and a dog")]),
    ]  # fmt: skip
    write_jsonl(tmp_path / "captions.jsonl", captions)
    write_jsonl(tmp_path / "boxes.jsonl", boxes)
    a, b = read_subjects([tmp_path / "captions.jsonl", tmp_path / "boxes.jsonl"])
    assert a.image == "a.png" and a.size == (200, 100)  # from the image's header
    assert a.captions == ["A cat.", "A cat and a dog."]
    assert [o.label for o in a.objects] == ["cat", "dog"]
    assert [r.id for r in a.conversations] == ["d2"]  # plain chat only: d1 has slots
    assert b.size is None and b.objects == [] and b.captions == ["Nothing."]

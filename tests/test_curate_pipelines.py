"""The three curation pipelines end to end through `groundlm curate`, with a scripted OpenAI-compatible LLM on
loopback: on ShapesWorld scenes (whose true grounding is known) and on ../shared/realdata's COCO captions and
boxes; the records pass `groundlm data check`, grounded phrases point at the right boxes, a killed run resumes
without duplicates or repeated requests, and a dry-run recipe trains on the output."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from groundlm.cli import app
from groundlm.curate import PromptSet, shipped
from groundlm.curate.llava_instruct import KINDS
from groundlm.records import BOX_SLOT, read_jsonl, write_jsonl

from .curate_helpers import Reply, ScriptedLLM, body_key, last_user, shapes_source, system_of
from .train_helpers import ROOT, child_env, tiny_recipe

pytest.importorskip("openai", reason="groundlm curate needs the openai client (pip install 'groundlm[curate]')")

REALDATA = ROOT.parent / "shared" / "realdata"
_SLOTS = re.compile(r"(?:<box:\d+>)+")
_TAGS = re.compile(r"</?p>|<box:\d+>")


def _curate(*args: str) -> str:
    result = CliRunner().invoke(app, ["curate", *args, "--model", "scripted", "--backoff", "0"])
    assert result.exit_code == 0, result.output
    return result.output


def _check(path: Path) -> str:
    result = CliRunner().invoke(app, ["data", "check", str(path)])
    assert result.exit_code == 0, result.output
    return result.output


def _llm_marks(grounded: str) -> str:
    """A record's `<p>phrase</p><box:0><box:2>` in the LLM's notation, `<p>phrase</p>[1, 3]`."""
    return _SLOTS.sub(lambda m: "[" + ", ".join(str(int(k) + 1) for k in re.findall(r"\d+", m.group())) + "]",
                      grounded)  # fmt: skip


def _caption(grounding) -> str:
    """The plain caption of a ShapesWorld grounding record."""
    return _TAGS.sub("", grounding.messages[1].content)


def _marking_llm(truth: dict):
    """A GVC responder marking each ShapesWorld caption as ShapesWorld's own grounding record does; also
    returns the marked answer per caption."""
    marks = {_caption(r): _llm_marks(r.messages[1].content) for r in truth.values()}
    assert len(marks) == len(truth), "the test needs scenes with distinct captions"

    def respond(body):
        texts = [line.split(": ", 1)[1] for line in last_user(body).splitlines() if line.startswith("Text ")]
        grounded = []
        for text in texts:  # the longest caption a text holds is this image's
            caption = max((c for c in marks if c in text), key=len, default=None)
            grounded.append(text.replace(caption, marks[caption], 1) if caption else text)
        return json.dumps({"grounded": grounded})

    return respond, marks


def test_gvc_on_shapesworld_grounds_each_phrase_on_its_boxes(tmp_path):
    source, truth = shapes_source(tmp_path, n=5)
    _, marks = _marking_llm(truth)
    changed, out_of_range = sorted(marks)[1:3]
    asked = Counter()

    def llm(body):
        caption = last_user(body).split("Text 1: ", 1)[1]
        asked[caption] += 1
        if caption == changed and asked[caption] == 1:
            return json.dumps({"grounded": ["<p>a thing</p>[1]"]})  # words changed: asked again
        if caption == out_of_range:
            return json.dumps({"grounded": [f"<p>{caption}</p>[9]"]})  # always wrong: skipped
        return json.dumps({"grounded": [marks[caption]]})

    out = tmp_path / "gvc.jsonl"
    with ScriptedLLM(llm) as server:
        output = _curate("gvc", str(source), "--out", str(out), "--base-url", server.base_url,
                         "--invalid-retries", "1")
    assert "4 records" in output
    assert "skipped 1 (ground: text 1: object number 9 is not in 1.." in output
    assert "ground: text 1: the text was changed, not only marked: 1" in output
    assert asked[changed] == 2 and asked[out_of_range] == 2
    checked = _check(out)
    assert "4 valid records" in checked and "grounding      4" in checked
    records = read_jsonl(out)
    assert {r.image for r in records} == {i for i, r in truth.items() if _caption(r) != out_of_range}
    for record in records:
        expected = truth[record.image]
        assert record.messages[0].content.startswith("[grounding] ")
        # the phrases and their slots are ShapesWorld's own, over the same objects: the right boxes
        assert record.messages[1].content == expected.messages[1].content
        assert [o.box for o in record.objects] == [o.box for o in expected.objects]
        assert record.meta["source"] == "curate/gvc" and record.meta["task"] == "grounding"


def test_endpoint_model_and_key_from_the_environment_and_a_replaced_prompt_set(tmp_path):
    source, truth = shapes_source(tmp_path, n=3)
    prompts = tmp_path / "my-gvc"  # a user's set: another system prompt, one shot instead of two
    shutil.copytree(shipped("gvc"), prompts)
    (prompts / "system.txt").write_text("Mark each phrase naming an object as <p>phrase</p>[k]. Reply in JSON.\n")
    first_shot = (prompts / "examples.jsonl").read_text().splitlines()[0]
    (prompts / "examples.jsonl").write_text(first_shot + "\n")
    respond, _ = _marking_llm(truth)
    out = tmp_path / "gvc.jsonl"
    with ScriptedLLM(respond) as server:
        env = {"OPENAI_BASE_URL": server.base_url, "GROUNDLM_CURATE_MODEL": "env-model", "OPENAI_API_KEY": "sk-env"}
        result = CliRunner().invoke(app, ["curate", "gvc", str(source), "--out", str(out), "--prompts", str(prompts),
                                          "--limit", "2"], env=env)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 records; 2 LLM requests" in result.output
    assert [b["model"] for b in server.bodies] == ["env-model"] * 2
    assert server.keys == ["Bearer sk-env"] * 2
    for body in server.bodies:  # system, one shot (user + assistant), the caption
        assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "user"]
        assert body["messages"][0]["content"] == (prompts / "system.txt").read_text().strip()
        assert body["messages"][1]["content"] == json.loads(first_shot)["context"]
    assert len(read_jsonl(out)) == 2


def _instruct_llm(body: dict) -> str:
    """A LLaVA-Instruct responder: well-formed answers of each kind about the first caption."""
    systems = {kind: PromptSet(shipped("llava-instruct")).text(f"{kind}/system.txt") for kind in KINDS}
    kind = next(k for k, s in systems.items() if system_of(body) == s)
    caption = last_user(body).splitlines()[0]
    if kind == "conversation":
        return json.dumps({"conversation": [
            {"question": "What is in the image?", "answer": f"I see {caption}."},
            {"question": "What is the background like?", "answer": "It is plain and grey."},
        ]})  # fmt: skip
    if kind == "detail":
        return (f"The picture shows {caption} on a plain grey background. Each shape has a single flat colour "
                "and sharp edges, and the shapes are spread out so that none of them hides another one.")
    return "```json\n" + json.dumps({"question": "Why are the shapes easy to tell apart?",
                                     "answer": f"Because {caption} stand out in colour against the grey."}) + "\n```"


def test_llava_instruct_on_shapesworld_writes_each_kind_and_a_dry_run_trains_on_the_output(tmp_path):
    from groundlm.train import dry_run, train
    from groundlm.train.recipe import from_dict

    source, truth = shapes_source(tmp_path, n=4)
    with ScriptedLLM(_instruct_llm) as server:
        output = _curate("llava-instruct", str(source), "--out", str(tmp_path / "instruct.jsonl"),
                         "--base-url", server.base_url)
    assert "12 records; 12 LLM requests" in output
    assert "chat           12" in _check(tmp_path / "instruct.jsonl")
    records = read_jsonl(tmp_path / "instruct.jsonl")
    by_kind = {k: [r for r in records if r.meta["kind"] == k] for k in KINDS}
    assert [len(v) for v in by_kind.values()] == [4, 4, 4]
    questions = PromptSet(shipped("llava-instruct")).lines("detail/questions.lines")
    assert all(r.messages[0].content in questions for r in by_kind["detail"])
    assert all(len(r.messages) == 4 for r in by_kind["conversation"])
    assert all(r.messages[0].content == "Why are the shapes easy to tell apart?" for r in by_kind["complex_reasoning"])
    # what the LLM saw: the few shots of each kind, boxes for detail and reasoning only (LLaVA's design)
    seen = [((len(b["messages"]) - 2) // 2, ": [0." in last_user(b)) for b in server.bodies]
    assert sorted(seen) == [(2, False)] * 4 + [(3, True)] * 8
    record = by_kind["detail"][0]
    obj = truth[record.image].objects[0]
    width = height = 64  # ShapesWorld's default image size
    line = f"{obj.label}: [{obj.box[0] / width:.3f}, {obj.box[1] / height:.3f}, {obj.box[2] / width:.3f}, " \
           f"{obj.box[3] / height:.3f}]"
    assert any(line in last_user(b) for b in server.bodies)
    # GVC grounds the captions and the conversations just written; a dry-run recipe trains on both outputs
    respond, _ = _marking_llm(truth)
    with ScriptedLLM(respond) as server:
        output = _curate("gvc", str(source), str(tmp_path / "instruct.jsonl"), "--out", str(tmp_path / "gvc.jsonl"),
                         "--base-url", server.base_url)
    assert "16 records; 16 LLM requests" in output
    grounded = {r.meta.get("grounded_from"): r for r in read_jsonl(tmp_path / "gvc.jsonl")}
    assert "grounding      4" in _check(tmp_path / "gvc.jsonl")
    for record in records:  # each llava-instruct record, its caption mention grounded as ShapesWorld does
        chat = grounded[record.id]
        caption = _caption(truth[record.image])
        assert [m.role for m in chat.messages] == [m.role for m in record.messages]
        for before, after in zip(record.messages, chat.messages, strict=True):
            assert after.content == (before.content.replace(caption, truth[record.image].messages[1].content)
                                     if before.role == "assistant" else before.content)
        assert "<box:" in chat.messages[1].content or "<box:" in chat.messages[-1].content
    recipe = tiny_recipe(steps=1, data=[
        {"name": "instruct", "records": str(tmp_path / "instruct.jsonl"), "image_root": str(tmp_path)},
        {"name": "gvc", "records": str(tmp_path / "gvc.jsonl"), "image_root": str(tmp_path)},
    ])  # fmt: skip
    run = dry_run(from_dict(recipe), steps=1)
    assert [s.records for s in run.stages[0].data] == [str(tmp_path / "instruct.jsonl"), str(tmp_path / "gvc.jsonl")]
    train(run, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "model").is_dir()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "kill"])
def test_a_killed_run_resumes_without_duplicates_or_repeated_requests(tmp_path, sig):
    source, _ = shapes_source(tmp_path, n=6)
    out = tmp_path / "instruct.jsonl"
    args = ["llava-instruct", str(source), "--out", str(out), "--concurrency", "2"]
    with ScriptedLLM(lambda body: Reply(_instruct_llm(body), delay=0.3)) as server:
        command = [sys.executable, "-m", "groundlm", "curate", *args, "--base-url", server.base_url,
                   "--model", "scripted", "--backoff", "0"]
        # Ctrl-C's default handling in the child, also when these tests run in a background job (which ignores
        # SIGINT, and Python then installs no KeyboardInterrupt handler)
        default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
        proc = subprocess.Popen(command, env=child_env(), stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
        deadline = time.monotonic() + 120
        while len(server.answered) < 5:
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the run made no requests"
            time.sleep(0.05)
        os.kill(proc.pid, sig)
        _, stderr = proc.communicate(timeout=60)
        first_run = [body_key(b) for b in server.answered]
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "run the same command again to continue" in stderr
    else:
        assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    with ScriptedLLM(_instruct_llm) as server:
        output = _curate(*args, "--base-url", server.base_url)
        second_run = [body_key(b) for b in server.bodies]
    records = read_jsonl(out)  # read_jsonl refuses repeated ids
    assert len(records) == 18
    repeated = set(first_run) & set(second_run)
    assert len(repeated) <= 2  # at most the requests in flight when the run died
    assert len(second_run) + len(first_run) - len(repeated) == 18
    assert f"{18 - len(second_run)} answers from the cache" in output


def test_a_run_in_a_terminal_shows_the_images_done_and_the_tokens_spent(tmp_path):
    source, _ = shapes_source(tmp_path, n=3)
    with ScriptedLLM(lambda body: Reply("not json", delay=0.2)) as server:
        command = [sys.executable, "-m", "groundlm", "curate", "gvc", str(source), "--out", str(tmp_path / "g.jsonl"),
                   "--base-url", server.base_url, "--model", "scripted", "--invalid-retries", "0",
                   "--concurrency", "1"]  # fmt: skip
        # rich draws its bar when it believes stderr is a terminal
        env = {**child_env(), "TTY_COMPATIBLE": "1", "COLUMNS": "200"}
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    bar = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", run.stderr)  # the bar's text without its colours and moves
    spent = re.search(r"\((\d+) prompt \+ (\d+) completion tokens\)", run.stdout)
    total = int(spent.group(1)) + int(spent.group(2))
    assert total > 0
    assert re.search(rf"3/3 .* {total} tokens, 0 cached, 3 skipped", bar), bar[-500:]
    assert re.search(r"1/3 .* [1-9]\d* tokens, 0 cached, 1 skipped", bar), bar[-500:]  # shown while it runs


def test_a_run_writing_to_a_log_prints_plain_progress_lines(tmp_path):
    source, _ = shapes_source(tmp_path, n=3)
    with ScriptedLLM(lambda body: Reply("not json")) as server:
        command = [sys.executable, "-m", "groundlm", "curate", "gvc", str(source), "--out", str(tmp_path / "g.jsonl"),
                   "--base-url", server.base_url, "--model", "scripted", "--invalid-retries", "0",
                   "--concurrency", "1", "--log-every", "0"]  # fmt: skip
        run = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=120)  # pipes
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stderr.splitlines() if line.startswith("gvc: ")]
    assert [re.match(r"gvc: (\d)/3 images, ", line).group(1) for line in lines] == ["1", "2", "3"], run.stderr
    assert re.fullmatch(r"gvc: 3/3 images, [1-9]\d* tokens, 0 cached, 3 skipped", lines[-1]), lines[-1]
    assert "\x1b[" not in run.stderr  # no bar drawn into the log


@pytest.mark.realdata
def test_gvc_and_llava_instruct_on_real_coco_captions_and_boxes(tmp_path):
    from groundlm.data.importers import from_llava_caps_boxes

    path = REALDATA / "coco_captions" / "llava_caps_boxes_coco2014_val_80.jsonl"
    if not path.exists():
        pytest.skip(f"real data not present: {path}")
    rows = [json.loads(line) for line in path.read_text().splitlines()][:8]
    # the file has no image sizes and the images are not here: a stand-in size, as tests/test_importers.py does
    size = (640, 480)
    subset = tmp_path / "caps_boxes.jsonl"
    subset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_jsonl(tmp_path / "records.jsonl", from_llava_caps_boxes(subset, image_sizes={r["image"]: size for r in rows}))

    def mark(body):
        """Marks the first mention of each listed category (singular or plural) with all its objects."""
        listing, texts = last_user(body).split("\n\n", 1)
        ids: dict[str, list[int]] = {}
        for line in listing.splitlines()[1:]:
            number, rest = line.split(". ", 1)
            ids.setdefault(rest.rsplit(": [", 1)[0], []).append(int(number))
        marked = []
        for line in texts.splitlines():
            text = line.split(": ", 1)[1]
            for category, numbers in ids.items():
                m = re.search(rf"\b{re.escape(category)}s?\b", text, re.IGNORECASE)
                if m and "<p>" not in text[: m.start()][-3:]:
                    text = f"{text[: m.start()]}<p>{m.group()}</p>{numbers}{text[m.end():]}"
            marked.append(text)
        return json.dumps({"grounded": marked})

    with ScriptedLLM(mark) as server:
        output = _curate("gvc", str(tmp_path / "records.jsonl"), "--out", str(tmp_path / "gvc.jsonl"),
                         "--base-url", server.base_url)
    _check(tmp_path / "gvc.jsonl")
    records = read_jsonl(tmp_path / "gvc.jsonl")
    assert len(records) >= 8, output  # at least one caption per image names a category here
    boxes = {(r["image"], i["category"]): [] for r in rows for i in r["instances"]}
    for r in rows:
        for i in r["instances"]:
            boxes[(r["image"], i["category"])].append([v * s for v, s in zip(i["bbox"], size * 2, strict=True)])
    phrases = 0
    for record in records:
        for m in re.finditer(r"<p>([^<]*)</p>((?:<box:\d+>)+)", record.messages[1].content):
            objects = [record.objects[int(k)] for k in BOX_SLOT.findall(m.group(2))]
            category = objects[0].label
            assert m.group(1).lower().rstrip("s") == category.rstrip("s")
            assert {o.label for o in objects} == {category}
            got, want = sorted(list(o.box) for o in objects), sorted(boxes[(record.image, category)])
            assert len(got) == len(want) and all(g == pytest.approx(w) for g, w in zip(got, want, strict=True))
            phrases += 1
    assert phrases >= len(records)
    with ScriptedLLM(_instruct_llm) as server:
        _curate("llava-instruct", str(tmp_path / "records.jsonl"), "--out", str(tmp_path / "instruct.jsonl"),
                "--base-url", server.base_url)
        detail = next(b for b in server.bodies if (len(b["messages"]) - 2) // 2 == 3
                      and last_user(b).startswith(rows[0]["captions"][0]))
    assert "24 valid records" in _check(tmp_path / "instruct.jsonl")
    first = rows[0]["instances"][0]
    assert f"{first['category']}: [{', '.join(f'{v:.3f}' for v in first['bbox'])}]" in last_user(detail)

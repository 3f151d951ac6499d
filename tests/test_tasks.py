"""Task builders: seeded instruction choice, exact evaluation prompts, answer shapes."""

from __future__ import annotations

import random

import pytest

from groundlm.data import tasks as T
from groundlm.records import Message, Record, validate_record
from groundlm.tasks import TAGGED, TASKS, get_task, record_task, task_of


def _texts(messages):
    return [(m.role, m.content) for m in messages]


def test_eval_prompts_are_minigptv2_exact():
    assert T.caption("a red circle", eval=True)[0].content == "[caption] please describe this image?"
    assert (
        T.refer("the red circle", 0, eval=True)[0].content == "[refer] give me the location of the red circle"
    )
    assert (
        T.vqa("what colour is it?", "red", eval=True)[0].content
        == "[vqa] Based on the image, respond to this question with a short answer: what colour is it?"
    )
    assert T.identify(2, "large red circle", eval=True)[0].content == "[identify] what is this <box:2>"
    assert (
        T.grounding("<p>a circle</p><box:0>", eval=True)[0].content
        == "[grounding] describe this image in detail"
    )
    assert T.detection("circles", [0, 3], eval=True)[0].content == "[detection] circles"


def test_answers_use_slots_and_phrases():
    assert _texts(T.refer("the red circle", 1, eval=True))[1] == ("assistant", "<box:1>")
    assert T.refer("the pair", [0, 2], eval=True)[1].content == "<box:0><box:2>"
    assert T.detection("circles", [0, 3], eval=True)[1].content == "<p>circles</p><box:0><box:3>"
    assert T.identify(0, "small blue square", eval=True)[1].content == "small blue square"
    assert T.ground("red circles", [0, 2]) == "<p>red circles</p><box:0><box:2>"
    assert T.slots([1]) == "<box:1>" and T.slot(7) == "<box:7>"


def test_seeded_choice_is_reproducible_and_covers_the_pool():
    for build in (
        lambda r: T.caption("a red circle", r),
        lambda r: T.vqa("how many circles are there?", "2", r),
        lambda r: T.refer("the red circle", 0, r),
        lambda r: T.identify(0, "red circle", r),
        lambda r: T.grounding("<p>a circle</p><box:0>", r),
        lambda r: T.detection("circles", [0], r),
    ):
        a = [_texts(build(random.Random(seed))) for seed in range(200)]
        b = [_texts(build(random.Random(seed))) for seed in range(200)]
        assert a == b
        assert len({x[0][1] for x in a}) > 3  # different seeds reach different pool entries


@pytest.mark.parametrize(
    ("pool", "task", "placeholders"),
    [
        (T.CAPTION_POOL, "caption", 0),
        (T.VQA_POOL, "vqa", 1),
        (T.REFER_POOL, "refer", 1),
        (T.IDENTIFY_POOL, "identify", 1),
        (T.GROUNDING_POOL, "grounding", 0),
        (T.DETECTION_POOL, "detection", 1),
    ],
)
def test_pools_are_well_formed(pool, task, placeholders):
    assert 5 <= len(pool) <= 10 and len(set(pool)) == len(pool)
    for template in pool:
        assert task_of(template) == task and template.startswith(f"[{task}] ")
        assert template.count("{}") == placeholders
    assert {t for pool in T.POOLS for t in pool} >= set(pool)
    assert task in TAGGED


def test_every_pool_entry_is_reachable_and_builds_valid_records():
    seen = set()
    for seed in range(300):
        rng = random.Random(seed)
        convs = [
            T.caption("a red circle", rng),
            T.vqa("is there a circle?", "yes", rng),
            T.refer("the red circle", 0, rng),
            T.identify(0, "red circle", rng),
            T.grounding("<p>a red circle</p><box:0>", rng),
            T.detection("red shapes", [0], rng),
        ]
        for conv in convs:
            seen.add(conv[0].content)
            rec = Record("x", "img.png", [], conv).to_dict()
            rec["objects"] = [{"box": [1.0, 2.0, 3.0, 4.0], "label": "red circle", "mask": None}]
            assert validate_record(rec) == []
    expected = {
        *(t for t in T.CAPTION_POOL),
        *(t.format("is there a circle?") for t in T.VQA_POOL),
        *(t.format("the red circle") for t in T.REFER_POOL),
        *(t.format("<box:0>") for t in T.IDENTIFY_POOL),
        *T.GROUNDING_POOL,
        *(t.format("red shapes") for t in T.DETECTION_POOL),
    }
    assert seen == expected


def test_errors():
    with pytest.raises(ValueError, match="random.Random"):
        T.caption("a red circle")
    with pytest.raises(ValueError):
        T.slot(-1)
    with pytest.raises(ValueError):
        T.detection("circles", [], eval=True)
    with pytest.raises(ValueError):
        T.ground("  ", [0])
    with pytest.raises(ValueError, match="<p>"):
        T.grounding("a red circle", eval=True)


def test_task_of_reads_the_tag_a_user_turn_starts_with():
    assert TAGGED == ("vqa", "caption", "grounding", "refer", "identify", "detection")
    for task in TAGGED:
        assert task_of(f"[{task}] something") == task
    assert task_of("[refer]the cat") == "refer"
    assert task_of("  [vqa] what?") == "vqa"
    assert task_of("what is this?") is None
    assert task_of("") is None
    assert task_of("[Refer] the cat") is None  # identifiers are lowercase, exactly
    assert task_of("[segment] the cat") is None
    assert task_of("where is the [refer] tag") is None


def _record(user: str, **meta) -> Record:
    return Record("r", None, [], [Message("user", user), Message("assistant", "yes")], meta)


def test_record_task_prefers_meta_then_the_tag_then_a_pope_label_then_chat():
    assert record_task(_record("[refer] the cat", task="segmentation")) == "segmentation"
    assert record_task(_record("[refer] the cat")) == "refer"
    assert record_task(_record("is there a cat?", label="yes")) == "pope"
    assert record_task(_record("is there a cat?")) == "chat"


def test_every_shapes_task_is_declared_and_undeclared_tasks_score_as_chat():
    from groundlm.data.shapes import SHAPES_TASKS

    assert set(SHAPES_TASKS) <= set(TASKS)
    assert get_task("my_own_task") is TASKS["chat"]

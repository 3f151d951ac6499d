"""ShapesWorld: determinism, exact boxes and masks, and language checked against the scene independently.

The checkers here re-implement the documented semantics (module docstring of `groundlm.data.shapes`) from the
words of each record, without calling the generator's own language helpers.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import re
from functools import cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from groundlm.data import shapes as S
from groundlm.data import tasks as T
from groundlm.masks import decode_mask, rle_encode
from groundlm.records import read_jsonl, validate_record

CONFIGS = {
    "default": S.ShapesConfig(),
    "busy128": S.ShapesConfig(
        image_size=128, min_objects=3, max_objects=8, background="noise", distractors=3, max_iou=0.2
    ),
    "all224": S.ShapesConfig(
        image_size=224,
        max_objects=6,
        shapes=tuple(S.PLURALS),
        colours=tuple(S.COLOURS),
        background="gradient",
        distractors=2,
    ),
}
N_SCENES = {"default": 250, "busy128": 40, "all224": 12}


@cache
def _scenes(name: str, split: str = "val"):
    config = CONFIGS[name]
    out = []
    for i in range(N_SCENES[name]):
        scene = S.scene_at(split, i, config)
        out.append((scene, S.scene_records(scene, split, i, config=config)))
    return out


def _all(split: str = "val"):
    for name in CONFIGS:
        for scene, records in _scenes(name, split):
            yield name, scene, records


# --------------------------------------------------------------------------------------------------------
# Determinism


def _records_json(records) -> str:
    return "\n".join(json.dumps(r.to_dict(), sort_keys=True) for r in records)


def test_same_seed_same_bytes_different_seeds_differ():
    for config in CONFIGS.values():
        a, b = S.generate_scene(12345, config), S.generate_scene(12345, config)
        assert S.png_bytes(a.image) == S.png_bytes(b.image)
        assert _records_json(S.scene_records(a, "train", 0)) == _records_json(S.scene_records(b, "train", 0))
    images = {S.png_bytes(S.scene_at("train", i).image) for i in range(20)}
    assert len(images) == 20
    assert S.png_bytes(S.scene_at("val", 3).image) != S.png_bytes(S.scene_at("test", 3).image)
    assert len(set(S.SPLIT_SEEDS.values())) == 3
    assert len({S.scene_seed(s, i) for s in S.SPLIT_SEEDS for i in range(100)}) == 300


def test_golden_val_scenes():
    # Pins the evaluation set: if this fails, val images or records changed (a new PIL rasteriser, a new rule).
    h = hashlib.sha256()
    for i in range(5):
        scene = S.scene_at("val", i)
        h.update(np.asarray(scene.image).tobytes())
        h.update(_records_json(S.scene_records(scene, "val", i)).encode())
    assert S.scene_seed("val", 0) == GOLDEN_SEED
    assert h.hexdigest() == GOLDEN_DIGEST


GOLDEN_SEED = 17323585586778565474
GOLDEN_DIGEST = "0caa342c744292101f5272b7f2ef137f43c2334f637b8c8407776690e2c7278a"


def test_write_shapes_matches_random_access(tmp_path):
    config = CONFIGS["busy128"]
    path = S.write_shapes(tmp_path / "a", 6, "val", config=config, progress=False)
    again = S.write_shapes(tmp_path / "b", 6, "val", config=config, progress=False)
    assert path == tmp_path / "a" / "records.jsonl"
    assert path.read_bytes() == again.read_bytes()
    records = read_jsonl(path)
    by_scene = collections.defaultdict(list)
    for r in records:
        by_scene[r.meta["scene"]].append(r)
    assert sorted(by_scene) == list(range(6))
    for i in (5, 0, 3):  # out of order, one at a time
        scene = S.scene_at("val", i, config)
        assert (tmp_path / "a" / S.image_name("val", i)).read_bytes() == S.png_bytes(scene.image)
        assert (tmp_path / "b" / "images" / f"val_{i:06d}.png").exists()
        assert _records_json(S.scene_records(scene, "val", i, config=config)) == _records_json(by_scene[i])


def test_write_shapes_every_task_and_validates(tmp_path):
    path = S.write_shapes(tmp_path, 40, "train", progress=False)
    records = read_jsonl(path)
    tasks = collections.Counter(r.meta["task"] for r in records)
    assert set(tasks) == set(S.SHAPES_TASKS)
    assert all(c >= 35 for c in tasks.values())
    for r in records:
        assert r.id == f"shapes-train-{r.meta['scene']}-{r.meta['task']}"
        assert r.image == f"images/train_{r.meta['scene']:06d}.png"
        assert (tmp_path / r.image).exists()
    # train draws from the pools, val/test use the fixed evaluation prompts
    assert len({r.messages[0].content.split(" the ")[0] for r in records if r.meta["task"] == "refer"}) > 2
    subset = S.write_shapes(tmp_path / "sub", 3, "test", tasks=("refer", "caption"), progress=False)
    assert [r.meta["task"] for r in read_jsonl(subset)] == ["refer", "caption"] * 3


# --------------------------------------------------------------------------------------------------------
# Pixels, boxes, masks


def test_boxes_tight_masks_coloured_overlap_capped():
    for name, scene, _ in _all():
        config = CONFIGS[name]
        pixels = np.asarray(scene.image)
        assert pixels.shape == (config.image_size, config.image_size, 3)
        assert config.min_objects <= len(scene.objects) <= config.max_objects
        union = np.zeros(pixels.shape[:2], dtype=int)
        for o in scene.objects:
            ys, xs = np.nonzero(o.mask)
            assert o.box == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert (pixels[o.mask] == S.COLOURS[o.colour]).all()
            assert o.shape in config.shapes and o.colour in config.colours and o.size in config.sizes
            union += o.mask
        assert union.max() <= 1  # visible masks never share a pixel
        # every pixel painted in an object colour belongs to an object of that colour (the rest is grey)
        for colour, rgb in S.COLOURS.items():
            painted = (pixels == rgb).all(axis=2)
            owned = np.zeros_like(painted)
            for o in scene.objects:
                if o.colour == colour:
                    owned |= o.mask
            assert (painted == owned).all()
        for a, b in itertools.combinations(scene.objects, 2):
            assert _iou(a.box, b.box) <= config.max_iou + 1e-9
            if a.colour == b.colour:  # same colour never touches, so the objects stay countable
                assert (
                    a.box[2] < b.box[0] or b.box[2] < a.box[0] or a.box[3] < b.box[1] or b.box[3] < a.box[1]
                )


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_sizes_are_distinguishable():
    for name, scene, _ in _all():
        n = CONFIGS[name].image_size
        for o in scene.objects:
            lo, hi = S.SIZE_RANGES[o.size]
            side = max(o.box[2] - o.box[0], o.box[3] - o.box[1])  # occlusion keeps at least one full extent
            assert side <= round(n * hi) + 1


@settings(max_examples=60, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 12), st.integers(1, 12))))
def test_rle_roundtrip(mask):
    rle = rle_encode(mask)
    assert rle["size"] == list(mask.shape) and sum(rle["counts"]) == mask.size
    assert (decode_mask(rle, *rle['size']) == mask).all()


def test_rle_is_coco_column_major():
    mask = np.array([[0, 1], [0, 1], [1, 0]], dtype=bool)
    assert rle_encode(mask) == {"size": [3, 2], "counts": [2, 3, 1]}
    assert rle_encode(np.ones((2, 2), bool))["counts"] == [0, 4]


def test_segmentation_records_carry_masks():
    for _, scene, records in _all():
        for r in records:
            if r.meta["task"] == "segmentation":
                assert r.messages[0].content.startswith("[refer] ")
                for o, obj in zip(scene.objects, r.objects, strict=True):
                    assert (decode_mask(obj.mask, *obj.mask['size']) == o.mask).all()
            else:
                assert all(obj.mask is None for obj in r.objects)


# --------------------------------------------------------------------------------------------------------
# An independent reading of the language


SIZES = "small|medium|large"
COLOURS = "|".join(S.COLOURS)
NOUNS = "|".join([*S.PLURALS, "shape", "object"])
PLURAL_NOUNS = "|".join([*S.PLURALS.values(), "shapes", "objects"])
SINGULAR = {v: k for k, v in S.PLURALS.items()} | {"shapes": "shape", "objects": "object"}
NP = rf"(?:({SIZES}) )?(?:({COLOURS}) )?({NOUNS})"
NP_PLURAL = rf"(?:({SIZES}) )?(?:({COLOURS}) )?({PLURAL_NOUNS})"
REL = "left of|right of|above|below"
EXPRESSION = re.compile(
    rf"the (?:(largest|smallest|leftmost|rightmost|topmost|bottommost) )?{NP}(?: ({REL}) the {NP})?"
)
SLOTS = re.compile(r"<box:(\d+)>")


def _holds(rel, a, b):
    """a REL b, reading the boxes: a relation needs the boxes to be separated along that axis."""
    return {
        "left of": a.box[2] <= b.box[0],
        "right of": a.box[0] >= b.box[2],
        "above": a.box[3] <= b.box[1],
        "below": a.box[1] >= b.box[3],
    }[rel]


def _matching(scene, size, colour, noun):
    noun = SINGULAR.get(noun, noun)
    return [
        i
        for i, o in enumerate(scene.objects)
        if (size is None or o.size == size)
        and (colour is None or o.colour == colour)
        and (noun in ("shape", "object") or o.shape == noun)
    ]


def resolve(scene, expression):
    """The single object an expression refers to; fails the test when zero or several fit."""
    m = EXPRESSION.fullmatch(expression)
    assert m, f"unparsable expression {expression!r}"
    sup, size, colour, noun, rel, size2, colour2, noun2 = m.groups()
    group = _matching(scene, size, colour, noun)
    objs = scene.objects
    if rel:
        anchors = _matching(scene, size2, colour2, noun2)
        assert len(anchors) == 1, f"anchor of {expression!r} is not unique"
        group = [i for i in group if i != anchors[0] and _holds(rel, objs[i], objs[anchors[0]])]
    elif sup:
        assert len(group) >= 2, f"superlative over a single object: {expression!r}"
        area = {i: int(objs[i].mask.sum()) for i in group}
        if sup in ("largest", "smallest"):
            best = (max if sup == "largest" else min)(area.values())
            group = [i for i in group if area[i] == best]
        else:
            rel = {"leftmost": "left of", "rightmost": "right of", "topmost": "above", "bottommost": "below"}[
                sup
            ]
            group = [i for i in group if all(_holds(rel, objs[i], objs[j]) for j in area if j != i)]
    assert len(group) == 1, f"{expression!r} matches {group}"
    return group[0]


def _strip_instruction(content, pool):
    # The most specific template wins: "[vqa] {}" also matches every other vqa instruction.
    for template in sorted(pool, key=len, reverse=True):
        pattern = re.escape(template).replace(re.escape("{}"), "(.*)")
        m = re.fullmatch(pattern, content)
        if m:
            return m.group(1) if m.groups() else ""
    raise AssertionError(f"{content!r} comes from no instruction of the pool")


@pytest.mark.parametrize("split", ["val", "train"])
def test_every_refer_expression_has_one_referent(split):
    kinds = collections.Counter()
    for _, scene, records in _all(split):
        for r in records:
            if r.meta["task"] in ("refer", "segmentation"):
                expression = _strip_instruction(r.messages[0].content, T.REFER_POOL)
                assert expression == r.meta["expression"]
                assert r.messages[1].content == f"<box:{resolve(scene, expression)}>"
                kinds[r.meta["kind"]] += 1
        if split == "val":  # every candidate expression the generator knows, not only the sampled ones
            for i in range(len(scene.objects)):
                for exprs in S.referring_expressions(scene, i).values():
                    for e in exprs:
                        assert resolve(scene, e) == i
    assert min(kinds[k] for k in ("attribute", "superlative", "relation")) >= 20


def test_refer_skipped_only_when_impossible():
    for _, scene, records in _all():
        tasks = {r.meta["task"] for r in records}
        assert tasks >= set(S.SHAPES_TASKS) - {"refer", "segmentation"}
        if "refer" not in tasks:
            assert not any(any(S.referring_expressions(scene, i).values()) for i in range(len(scene.objects)))


def test_detection_boxes_are_exactly_the_matches():
    for _, scene, records in _all():
        (r,) = [r for r in records if r.meta["task"] == "detection"]
        phrase = _strip_instruction(r.messages[0].content, T.DETECTION_POOL)
        m = re.fullmatch(NP_PLURAL, phrase)
        assert m, phrase
        expected = _matching(scene, *m.groups())
        assert expected
        assert r.messages[1].content == f"<p>{phrase}</p>" + "".join(f"<box:{i}>" for i in expected)


def _article_ok(article, phrase):
    return article == ("an" if phrase[0] in "aeiou" else "a")


def answer_vqa(scene, question):
    """The correct answer to a ShapesWorld question, worked out from the scene."""
    objs = scene.objects
    if m := re.fullmatch(rf"what (colour|shape|size) is the {NP}\?", question):
        attr, size, colour, noun = m.groups()
        assert {"colour": colour, "shape": noun if noun in S.PLURALS else None, "size": size}[attr] is None
        (i,) = _matching(scene, size, colour, noun)
        return getattr(objs[i], attr)
    if m := re.fullmatch(rf"how many {NP_PLURAL} are there\?", question):
        return str(len(_matching(scene, *m.groups())))
    if m := re.fullmatch(rf"is there (an?) ({NP})\?", question):
        assert _article_ok(m.group(1), m.group(2))
        return "yes" if _matching(scene, *m.groups()[2:]) else "no"
    if m := re.fullmatch(rf"is the {NP} ({REL}) the {NP}\?", question):
        s1, c1, n1, rel, s2, c2, n2 = m.groups()
        (a,) = _matching(scene, s1, c1, n1)
        (b,) = _matching(scene, s2, c2, n2)
        opposite = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[rel]
        assert _holds(rel, objs[a], objs[b]) or _holds(opposite, objs[a], objs[b]), "undecidable question"
        return "yes" if _holds(rel, objs[a], objs[b]) else "no"
    raise AssertionError(f"unknown question {question!r}")


@pytest.mark.parametrize("split", ["val", "train"])
def test_vqa_answers_are_correct(split):
    kinds = collections.Counter()
    for _, scene, records in _all(split):
        (r,) = [r for r in records if r.meta["task"] == "vqa"]
        question = _strip_instruction(r.messages[0].content, T.VQA_POOL)
        assert r.messages[1].content == r.meta["answer"] == answer_vqa(scene, question)
        kinds[(r.meta["question_type"], r.meta["answer"] in ("0", "no"))] += 1
    for kind in ("colour", "shape", "size", "count", "exist", "spatial"):
        assert kinds[(kind, False)] > 0
    assert kinds[("exist", True)] > 0 and kinds[("spatial", True)] > 0 and kinds[("count", True)] > 0


def test_captions_and_grounding_count_every_object_in_reading_order():
    numbers = {w: k for k, w in enumerate(S.NUMBER_WORDS)}
    for _, scene, records in _all():
        by_task = {r.meta["task"]: r for r in records}
        caption = by_task["caption"].messages[1].content
        grounded = by_task["grounding"].messages[1].content
        assert SLOTS.sub("", grounded).replace("<p>", "").replace("</p>", "") == caption
        phrases = re.findall(r"<p>(.*?)</p>((?:<box:\d+>)+)", grounded)
        assert re.sub(r"<p>.*?</p>(?:<box:\d+>)+", "X", grounded) in {
            "X",
            "X and X",
            *(", ".join(["X"] * (k - 1)) + " and X" for k in range(3, 11)),
        }
        seen = []
        for phrase, slots in phrases:
            first, rest = phrase.split(" ", 1)
            m = re.fullmatch(rf"({COLOURS}) ({NOUNS}|{PLURAL_NOUNS})", rest)
            assert m, phrase
            count = 1 if first in ("a", "an") else numbers[first]
            assert count == 1 or first != "one"
            idx = [int(i) for i in SLOTS.findall(slots)]
            assert sorted(idx) == _matching(scene, None, *m.groups()) and len(idx) == count
            assert [scene.objects[i].centre for i in idx] == sorted(scene.objects[i].centre for i in idx)
            seen += idx
        assert sorted(seen) == list(range(len(scene.objects)))
        # reading order: each phrase starts at the object left of (or above) every later phrase's first
        firsts = [scene.objects[int(SLOTS.findall(slots)[0])].centre for _, slots in phrases]
        assert firsts == sorted(firsts)



def test_identify_and_region_chat_answers():
    for _, scene, records in _all():
        by_task = {r.meta["task"]: r for r in records}
        ident = by_task["identify"]
        (i,) = map(int, SLOTS.findall(_strip_instruction(ident.messages[0].content, T.IDENTIFY_POOL)))
        o = scene.objects[i]
        assert ident.messages[1].content == f"{o.size} {o.colour} {o.shape}" == ident.objects[i].label
        chat = by_task["region_chat"]
        q, a = chat.messages[0].content, chat.messages[1].content
        assert not q.startswith("[")
        slots = [scene.objects[int(k)] for k in SLOTS.findall(q)]
        o = slots[0]
        if m := re.fullmatch(rf"is <box:\d+> ({REL}) <box:\d+>\?", q):
            assert a == ("yes" if _holds(m.group(1), o, slots[1]) else "no")
        elif "colour" in q:
            assert a == f"it is {o.colour}"
        elif "shape" in q:
            assert a == f"it is {'an' if o.shape[0] in 'aeiou' else 'a'} {o.shape}"
        elif "big" in q or "size" in q:
            assert a == f"it is {o.size}"
        else:
            assert re.fullmatch(r"(what is <box:\d+>\?|describe <box:\d+>)", q)
            assert a.split(" ", 3)[3] == f"{o.size} {o.colour} {o.shape}"


def test_records_validate_and_vocabulary_covers_them():
    for name, _, records in _all():
        vocab = set(S.vocabulary(CONFIGS[name]))
        for r in records:
            assert validate_record(r.to_dict()) == []
            assert {"task", "scene"} <= set(r.meta)
            for m in r.messages:
                text = re.sub(r"<box:\d+>|</?p>", " ", m.content)
                words = {w.lower() for w in re.findall(r"\[[a-z]+\]|\w+|[^\w\s]", text)}
                assert words <= vocab, (r.id, words - vocab)


def test_config_validation():
    with pytest.raises(ValueError, match="shapes"):
        S.ShapesConfig(shapes=("blob",))
    with pytest.raises(ValueError, match="max_objects"):
        S.ShapesConfig(min_objects=3, max_objects=2)
    with pytest.raises(ValueError):
        S.ShapesConfig(image_size=16)
    with pytest.raises(ValueError, match="background"):
        S.ShapesConfig(background="stripes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="split"):
        S.scene_at("dev", 0)
    with pytest.raises(ValueError, match="unknown ShapesWorld tasks"):
        S.scene_records(S.scene_at("val", 0), "val", 0, tasks=("chat",))

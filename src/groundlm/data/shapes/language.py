"""ShapesWorld's language (all lower case), generated from a scene and checked against it.

- an attribute phrase is ``[size] [colour] noun`` (noun = the shape, or ``shape``/``object`` when the shape
  is left out); a relation ``a left of b`` means a's box ends at or before b's begins (likewise right of,
  above, below), so relations only hold between clearly separated objects;
- ``the largest/smallest X`` needs the referent's visible area to be ``AREA_MARGIN`` times every other X's;
  ``the leftmost/rightmost/topmost/bottommost X`` needs it to be left of (...) every other X;
- a referring expression is only emitted when exactly one object satisfies it, and superlatives and
  relations only for a noun phrase that matches several objects on its own.

`vocabulary` lists every word this and the task builders can emit.
"""

from __future__ import annotations

import functools
import itertools
import random
import re
from collections.abc import Callable, Sequence

from .. import tasks as T
from .scene import PLURALS, Scene, ShapeObject, ShapesConfig

NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
# "The largest X" only when the referent's visible area beats every other X's by this factor.
AREA_MARGIN = 1.3
GENERIC_NOUNS = ("shape", "object")


# --------------------------------------------------------------------------------------------------------
# Language: noun phrases, relations and uniqueness

Desc = tuple[str | None, str | None, str | None]  # (size, colour, shape); None = not mentioned
_ATTRS = ("size", "colour", "shape")

RELATIONS: dict[str, Callable[[ShapeObject, ShapeObject], bool]] = {
    "left of": lambda a, b: a.box[2] <= b.box[0],
    "right of": lambda a, b: a.box[0] >= b.box[2],
    "above": lambda a, b: a.box[3] <= b.box[1],
    "below": lambda a, b: a.box[1] >= b.box[3],
}
OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
# Superlative -> the relation its referent must have to every other member of the group (None: by area).
SUPERLATIVES: dict[str, str | None] = {
    "largest": None,
    "smallest": None,
    "leftmost": "left of",
    "rightmost": "right of",
    "topmost": "above",
    "bottommost": "below",
}


def phrase_of(desc: Desc, *, plural: bool = False, generic: str = "shape") -> str:
    size, colour, shape = desc
    noun = shape or generic
    if plural:
        noun = PLURALS.get(noun, noun + "s")
    return " ".join(w for w in (size, colour, noun) if w)


def _article(phrase: str) -> str:
    return "an" if phrase[0] in "aeiou" else "a"


def _matches(o: ShapeObject, desc: Desc) -> bool:
    return all(v is None or v == getattr(o, a) for a, v in zip(_ATTRS, desc, strict=True))


def descriptions(o: ShapeObject, allowed: Sequence[str] = _ATTRS) -> list[Desc]:
    """Every way to describe ``o`` by a subset of its ``allowed`` attributes (the empty one included)."""
    out: list[Desc] = []
    for keep in itertools.product((False, True), repeat=3):
        if any(k and a not in allowed for k, a in zip(keep, _ATTRS, strict=True)):
            continue
        out.append(tuple(getattr(o, a) if k else None for k, a in zip(keep, _ATTRS, strict=True)))  # type: ignore[misc]
    return out


# Scenes are immutable (and hash by identity), and the record builders ask the same questions of a scene many
# times over: cached, building a scene's records takes about half the time, which the training loop feels.
@functools.lru_cache(maxsize=4096)
def matching(scene: Scene, desc: Desc) -> tuple[int, ...]:
    return tuple(i for i, o in enumerate(scene.objects) if _matches(o, desc))


@functools.lru_cache(maxsize=1024)
def _unique_descs(scene: Scene, i: int, allowed: tuple[str, ...] = _ATTRS) -> tuple[Desc, ...]:
    return tuple(d for d in descriptions(scene.objects[i], allowed) if matching(scene, d) == (i,))


def _is_superlative(scene: Scene, i: int, group: Sequence[int], word: str) -> bool:
    t = scene.objects[i]
    others = [scene.objects[j] for j in group if j != i]
    relation = SUPERLATIVES[word]
    if relation is not None:
        return all(RELATIONS[relation](t, o) for o in others)
    if word == "largest":
        return all(t.area >= AREA_MARGIN * o.area for o in others)
    return all(o.area >= AREA_MARGIN * t.area for o in others)


def referring_expressions(scene: Scene, i: int) -> dict[str, list[str]]:
    """Every expression that picks out object ``i`` alone, by kind: attribute, superlative, relation."""
    out: dict[str, list[str]] = {"attribute": [], "superlative": [], "relation": []}
    out["attribute"] = [f"the {phrase_of(d)}" for d in _unique_descs(scene, i)]
    # Each other object's unique descriptions, once: they are the anchors of every relation below.
    anchors_of = {a: _unique_descs(scene, a) for a in range(len(scene.objects)) if a != i}
    for d in descriptions(scene.objects[i]):
        group = matching(scene, d)
        if len(group) < 2:
            continue  # the phrase alone already singles it out; no superlative or relation needed
        for word in SUPERLATIVES:
            if word in ("largest", "smallest") and d[0] is not None:
                continue  # "the largest small circle" reads badly
            if _is_superlative(scene, i, group, word):
                out["superlative"].append(f"the {word} {phrase_of(d)}")
        for a in range(len(scene.objects)):
            anchors = anchors_of.get(a, [])
            for relation, holds in RELATIONS.items():
                hits = [j for j in group if j != a and holds(scene.objects[j], scene.objects[a])]
                if hits == [i]:
                    out["relation"] += [f"the {phrase_of(d)} {relation} the {phrase_of(ad)}" for ad in anchors]
    return out


def choose_referent(scene: Scene, rng: random.Random) -> tuple[int, str, str] | None:
    options = [(i, referring_expressions(scene, i)) for i in range(len(scene.objects))]
    options = [(i, e) for i, e in options if any(e.values())]
    if not options:
        return None
    i, exprs = rng.choice(options)
    kind = rng.choice([k for k, v in exprs.items() if v])
    return i, kind, rng.choice(exprs[kind])


def caption_groups(scene: Scene) -> list[tuple[str, list[int]]]:
    """The caption's phrases and their objects, in reading order: left to right by each group's leftmost
    object (then top to bottom), so the order is one the image shows."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i in sorted(range(len(scene.objects)), key=lambda i: scene.objects[i].centre):
        o = scene.objects[i]
        groups.setdefault((o.colour, o.shape), []).append(i)
    out = []
    for (colour, shape), idx in groups.items():
        phrase = phrase_of((None, colour, shape), plural=len(idx) > 1)
        out.append(
            (f"{_article(phrase)} {phrase}" if len(idx) == 1 else f"{NUMBER_WORDS[len(idx)]} {phrase}", idx)
        )
    return out


def join_phrases(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# --------------------------------------------------------------------------------------------------------
# Questions

VQA_QUESTIONS = {
    "colour": "what colour is the {}?",
    "shape": "what shape is the {}?",
    "size": "what size is the {}?",
    "count": "how many {} are there?",
    "exist": "is there {}?",
    "spatial": "is the {} {} the {}?",
}
REGION_QUESTIONS: dict[str, tuple[str, ...]] = {
    "colour": ("what colour is {}?", "which colour does {} have?"),
    "shape": ("what shape is {}?", "what kind of shape is {}?"),
    "size": ("how big is {}?", "what size is {}?"),
    "describe": ("what is {}?", "describe {}"),
    "spatial": ("is {} {} {}?",),
}
REGION_ANSWER = "it is {}"


def _spatial_pairs(scene: Scene) -> list[tuple[int, int, str]]:
    n = len(scene.objects)
    return [
        (a, b, r)
        for a, b in itertools.permutations(range(n), 2)
        for r, holds in RELATIONS.items()
        if holds(scene.objects[a], scene.objects[b])
    ]


def _random_desc(rng: random.Random, config: ShapesConfig) -> Desc:
    # Any attribute combination the config allows, whether or not the scene holds it (for "0" and "no").
    values = (rng.choice(config.sizes), rng.choice(config.colours), rng.choice(config.shapes))
    return tuple(rng.choice([None, v]) for v in values)  # type: ignore[return-value]


def vqa_question(scene: Scene, rng: random.Random, config: ShapesConfig) -> tuple[str, str, str]:
    objs = scene.objects
    options: dict[str, list] = {"count": [], "exist": []}  # always askable
    for kind in ("colour", "shape", "size"):
        # Name the object by its other attributes only, or the question would give the answer away.
        allowed = tuple(a for a in _ATTRS if a != kind)
        cands = [(i, d) for i in range(len(objs)) for d in _unique_descs(scene, i, allowed)]
        if cands:
            options[kind] = cands
    pairs = [
        (a, b, r) for a, b, r in _spatial_pairs(scene) if _unique_descs(scene, a) and _unique_descs(scene, b)
    ]
    if pairs:
        options["spatial"] = pairs
    kind = rng.choice(sorted(options))
    if kind in ("colour", "shape", "size"):
        i, d = rng.choice(options[kind])
        phrase = phrase_of(d, generic="object" if kind == "shape" else "shape")
        return kind, VQA_QUESTIONS[kind].format(phrase), getattr(objs[i], kind)
    if kind == "spatial":
        a, b, r = rng.choice(pairs)
        yes = rng.random() < 0.5  # ask the true relation or its opposite, so "no" answers are as common
        da, db = rng.choice(_unique_descs(scene, a)), rng.choice(_unique_descs(scene, b))
        question = VQA_QUESTIONS["spatial"].format(phrase_of(da), r if yes else OPPOSITE[r], phrase_of(db))
        return kind, question, "yes" if yes else "no"
    if kind == "count":
        # Draw the answer first, then a phrase with that many matches: drawing phrases directly makes
        # "1" the answer to most questions.
        by_count: dict[int, list[Desc]] = {}
        for d in dict.fromkeys(d for o in objs for d in descriptions(o)):
            by_count.setdefault(len(matching(scene, d)), []).append(d)
        absent = [x for x in (_random_desc(rng, config) for _ in range(20)) if not matching(scene, x)]
        if absent:
            by_count[0] = absent[:1]
        d = rng.choice(by_count[rng.choice(sorted(by_count))])
        return kind, VQA_QUESTIONS["count"].format(phrase_of(d, plural=True)), str(len(matching(scene, d)))
    d = rng.choice([d for d in descriptions(rng.choice(objs)) if any(d)])
    if rng.random() < 0.5:
        absent = [
            x for x in (_random_desc(rng, config) for _ in range(20)) if any(x) and not matching(scene, x)
        ]
        d = absent[0] if absent else d
    phrase = phrase_of(d)
    return (
        kind,
        VQA_QUESTIONS["exist"].format(f"{_article(phrase)} {phrase}"),
        "yes" if matching(scene, d) else "no",
    )


def region_question(scene: Scene, rng: random.Random) -> tuple[str, str, str]:
    pairs = _spatial_pairs(scene)
    kind = rng.choice(
        sorted(REGION_QUESTIONS) if pairs else [k for k in sorted(REGION_QUESTIONS) if k != "spatial"]
    )
    template = rng.choice(REGION_QUESTIONS[kind])
    if kind == "spatial":
        a, b, r = rng.choice(pairs)
        yes = rng.random() < 0.5
        return kind, template.format(T.slot(a), r if yes else OPPOSITE[r], T.slot(b)), "yes" if yes else "no"
    i = rng.randrange(len(scene.objects))
    o = scene.objects[i]
    value = {
        "colour": o.colour,
        "shape": f"{_article(o.shape)} {o.shape}",
        "size": o.size,
        "describe": f"{_article(o.label)} {o.label}",
    }[kind]
    return kind, template.format(T.slot(i)), REGION_ANSWER.format(value)



# --------------------------------------------------------------------------------------------------------
# Vocabulary

# The pieces the project's word-level tokenizer makes (see tokenizer._PIECE): tags whole, words, punctuation.
_PIECE = re.compile(r"<[^<>\s]*>|\[/?[A-Za-z_]+\]|\w+|[^\w\s]")


def words_of(text: str) -> list[str]:
    """Lower-cased tokenizer pieces of ``text``, without slots and ``<p>`` tags (used to check coverage)."""
    return [w.lower() for w in _PIECE.findall(text) if not w.startswith("<")]


def vocabulary(config: ShapesConfig | None = None) -> list[str]:
    """Every word (and punctuation mark and task tag) ShapesWorld and the task builders can emit, sorted."""
    config = config or ShapesConfig()
    texts: list[str] = [t for pool in T.POOLS for t in pool]
    texts += [*VQA_QUESTIONS.values(), *(q for qs in REGION_QUESTIONS.values() for q in qs), REGION_ANSWER]
    texts += [*RELATIONS, *SUPERLATIVES, *GENERIC_NOUNS, *(PLURALS.get(g, g + "s") for g in GENERIC_NOUNS)]
    texts += [*config.shapes, *(PLURALS[s] for s in config.shapes), *config.colours, *config.sizes]
    texts += ["a an the and , yes no", *NUMBER_WORDS[: config.max_objects + 1]]
    texts += [str(k) for k in range(config.max_objects + 1)]
    words = {w for t in texts for w in words_of(t.replace("{}", " "))}
    return sorted(words)

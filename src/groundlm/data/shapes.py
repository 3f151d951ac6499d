"""ShapesWorld: the built-in synthetic world of coloured shapes, with exact boxes and masks (DESIGN §7).

A scene is a pure function of a seed and a `ShapesConfig`, and scene ``i`` of a split uses a seed derived from
``(SPLIT_SEEDS[split], i)`` alone, so any scene can be regenerated on its own (the training loop samples by
index) and the val/test sets are identical on every machine.

Drawing: the background (plain, noise or a gradient, always grey) and optional distractor lines (grey, under
the objects) come first; each object is rasterised by PIL without anti-aliasing into its own binary mask and
painted by copying its colour into exactly those pixels, later objects on top. An object's ``mask`` is its
*visible* pixels and its ``box`` is tight around them (``x2 = last column + 1``, the continuous convention of
`geometry`), so every mask pixel has the object's colour. Placement is retried until the boxes' IoU stays under
``max_iou``, each occluded object keeps ``min_visible`` of its pixels, and same-coloured objects do not touch.

Language (all lower case) is generated from the scene and checked against it:
- an attribute phrase is ``[size] [colour] noun`` (noun = the shape, or ``shape``/``object`` when the shape
  is left out); a relation ``a left of b`` means a's box ends at or before b's begins (likewise right of,
  above, below), so relations only hold between clearly separated objects;
- ``the largest/smallest X`` needs the referent's visible area to be ``AREA_MARGIN`` times every other X's;
  ``the leftmost/rightmost/topmost/bottommost X`` needs it to be left of (...) every other X;
- a referring expression is only emitted when exactly one object satisfies it, and superlatives and
  relations only for a noun phrase that matches several objects on its own.
"""

from __future__ import annotations

import functools
import io
import itertools
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from ..masks import rle_encode
from ..records import GroundTruthObject, Message, Record, write_jsonl
from . import tasks as T

PLURALS: dict[str, str] = {
    "circle": "circles",
    "square": "squares",
    "triangle": "triangles",
    "diamond": "diamonds",
    "cross": "crosses",
    "star": "stars",
}
# Saturated, never grey: the background and distractors are grey, so a colour in the image marks an object.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "green": (34, 160, 60),
    "blue": (37, 99, 235),
    "yellow": (234, 200, 20),
    "purple": (147, 51, 234),
    "orange": (249, 115, 22),
    "pink": (236, 72, 153),
    "cyan": (6, 182, 212),
    "brown": (133, 77, 14),
}
# Side of an object as a fraction of the image side; the ranges leave gaps so sizes stay tellable apart.
SIZE_RANGES: dict[str, tuple[float, float]] = {
    "small": (0.14, 0.18),
    "medium": (0.23, 0.28),
    "large": (0.33, 0.40),
}
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
# Fixed forever: changing one changes that split's images on every machine.
SPLIT_SEEDS: dict[str, int] = {"train": 1001, "val": 2002, "test": 3003}
SHAPES_TASKS = (
    "caption", "vqa", "refer", "identify", "grounding", "detection", "segmentation", "region_chat"
)  # fmt: skip
# "The largest X" only when the referent's visible area beats every other X's by this factor.
AREA_MARGIN = 1.3
GENERIC_NOUNS = ("shape", "object")


@dataclass(frozen=True)
class ShapesConfig:
    """What a ShapesWorld scene may contain and how it is drawn."""

    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 4
    shapes: tuple[str, ...] = ("circle", "square", "triangle", "diamond")
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
    sizes: tuple[str, ...] = ("small", "medium", "large")
    max_iou: float = 0.1  # cap on the IoU of any two objects' (visible) boxes
    min_visible: float = 0.75  # an occluded object keeps at least this share of its pixels
    background: Literal["plain", "noise", "gradient"] = "plain"
    distractors: int = 0  # up to this many thin grey lines per image (not objects)
    max_tries: int = 50  # placement attempts per object before it is left out

    def __post_init__(self) -> None:
        if self.image_size < 32:
            raise ValueError(f"image_size must be at least 32, got {self.image_size}")
        if not 1 <= self.min_objects <= self.max_objects <= 10:
            raise ValueError(
                f"need 1 <= min_objects <= max_objects <= 10, got {self.min_objects}, {self.max_objects}"
            )
        for name, allowed in (("shapes", PLURALS), ("colours", COLOURS), ("sizes", SIZE_RANGES)):
            values = getattr(self, name)
            bad = [v for v in values if v not in allowed]
            if not values or bad or len(set(values)) != len(values):
                raise ValueError(f"{name} must be distinct entries of {sorted(allowed)}, got {values!r}")
        if not 0.0 <= self.max_iou < 1.0 or not 0.0 < self.min_visible <= 1.0:
            raise ValueError("need 0 <= max_iou < 1 and 0 < min_visible <= 1")
        if self.background not in ("plain", "noise", "gradient"):
            raise ValueError(f"background must be 'plain', 'noise' or 'gradient', got {self.background!r}")
        if self.distractors < 0 or self.max_tries < 1:
            raise ValueError("need distractors >= 0 and max_tries >= 1")


Box = tuple[float, float, float, float]


@dataclass(frozen=True, eq=False)
class ShapeObject:
    """One drawn object: its attributes, its visible pixel mask ``[H, W]`` bool and the box tight around it."""

    shape: str
    colour: str
    size: str
    box: Box
    mask: np.ndarray

    @property
    def area(self) -> int:
        """Number of visible pixels."""
        return int(self.mask.sum())

    @property
    def label(self) -> str:
        """The full description, e.g. ``large red circle`` (the record label and the identify answer)."""
        return f"{self.size} {self.colour} {self.shape}"


@dataclass(frozen=True, eq=False)
class Scene:
    """A generated image and its objects, in drawing order (later objects lie on top)."""

    seed: int
    image: Image.Image
    objects: tuple[ShapeObject, ...]




# --------------------------------------------------------------------------------------------------------
# Drawing


def _shape_mask(shape: str, x0: int, y0: int, side: int, image_size: int) -> np.ndarray:
    canvas = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(canvas)  # ImageDraw never anti-aliases, so the mask is exactly what is painted
    x1, y1 = x0 + side - 1, y0 + side - 1
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=255)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=255)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=255)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=255)
    elif shape == "cross":
        t = max(1.0, side / 6)  # half the bar thickness
        draw.rectangle([x0, cy - t, x1, cy + t], fill=255)
        draw.rectangle([cx - t, y0, cx + t, y1], fill=255)
    elif shape == "star":
        r_out, r_in = (side - 1) / 2, (side - 1) / 5
        points = [
            (cx + r * math.sin(k * math.pi / 5), cy - r * math.cos(k * math.pi / 5))
            for k, r in zip(range(10), itertools.cycle((r_out, r_in)), strict=False)
        ]
        draw.polygon(points, fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(canvas) > 0


def _box_of(mask: np.ndarray) -> Box:
    ys, xs = np.nonzero(mask)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))


def _iou(a: Box, b: Box) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, iw) * max(0.0, ih)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _apart(a: Box, b: Box) -> bool:
    # At least one empty pixel row or column between the boxes: same-coloured objects never merge into a blob.
    return a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]


def _background(rng: np.random.Generator, config: ShapesConfig) -> np.ndarray:
    n = config.image_size
    if config.background == "plain":
        grey = np.full((n, n), 240, dtype=np.uint8)
    elif config.background == "noise":
        grey = rng.integers(200, 251, size=(n, n)).astype(np.uint8)
    else:
        lo, hi = (int(v) for v in rng.integers(185, 251, size=2))
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:n, 0:n] / max(1, n - 1)
        t = xx * math.cos(angle) + yy * math.sin(angle)
        t = (t - t.min()) / max(1e-9, float(t.max() - t.min()))
        grey = np.round(lo + (hi - lo) * t).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def _draw_distractors(pixels: np.ndarray, rng: np.random.Generator, config: ShapesConfig) -> np.ndarray:
    count = int(rng.integers(0, config.distractors + 1)) if config.distractors else 0
    if not count:
        return pixels
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(count):
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, config.image_size, size=4))
        grey = int(rng.integers(100, 181))
        draw.line([x0, y0, x1, y1], fill=(grey, grey, grey), width=1)
    return np.asarray(image).copy()


def _visible(full: Sequence[np.ndarray]) -> list[np.ndarray]:
    # Walk from the top object down, hiding whatever the objects above already cover.
    out: list[np.ndarray] = [np.zeros_like(full[0])] * len(full)
    covered = np.zeros_like(full[0])
    for i in range(len(full) - 1, -1, -1):
        out[i] = full[i] & ~covered
        covered |= full[i]
    return out


def _placement_ok(full: list[np.ndarray], colours: list[str], config: ShapesConfig) -> bool:
    visible = _visible(full)
    boxes: list[Box] = []
    for f, v in zip(full, visible, strict=True):
        if v.sum() < config.min_visible * f.sum():
            return False
        boxes.append(_box_of(v))
    for i, j in itertools.combinations(range(len(full)), 2):
        if _iou(boxes[i], boxes[j]) > config.max_iou:
            return False
        if colours[i] == colours[j] and not _apart(boxes[i], boxes[j]):
            return False
    return True


def generate_scene(seed: int, config: ShapesConfig | None = None) -> Scene:
    """Draw the scene for ``seed`` (same seed and config, same pixels and objects, on every machine)."""
    config = config or ShapesConfig()
    rng = np.random.Generator(np.random.PCG64(seed))
    n = config.image_size
    pixels = _draw_distractors(_background(rng, config), rng, config)
    wanted = int(rng.integers(config.min_objects, config.max_objects + 1))
    full: list[np.ndarray] = []
    attrs: list[tuple[str, str, str]] = []
    for _ in range(wanted):
        shape = config.shapes[int(rng.integers(len(config.shapes)))]
        colour = config.colours[int(rng.integers(len(config.colours)))]
        size = config.sizes[int(rng.integers(len(config.sizes)))]
        lo, hi = SIZE_RANGES[size]
        for _try in range(config.max_tries):
            side = max(3, int(round(n * rng.uniform(lo, hi))))
            x0, y0 = (int(v) for v in rng.integers(0, n - side + 1, size=2))
            mask = _shape_mask(shape, x0, y0, side, n)
            if _placement_ok([*full, mask], [a[1] for a in attrs] + [colour], config):
                full.append(mask)
                attrs.append((shape, colour, size))
                break
    for mask, (_, colour, _) in zip(full, attrs, strict=True):
        pixels[mask] = COLOURS[colour]
    objects = tuple(
        ShapeObject(shape=s, colour=c, size=z, box=_box_of(v), mask=v)
        for (s, c, z), v in zip(attrs, _visible(full) if full else [], strict=True)
    )
    return Scene(seed=int(seed), image=Image.fromarray(pixels), objects=objects)


def scene_seed(split: str, index: int) -> int:
    """The seed of scene ``index`` of ``split``, derived from ``(SPLIT_SEEDS[split], index)`` only."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLIT_SEEDS)}")
    if index < 0:
        raise ValueError(f"scene index must be non-negative, got {index}")
    state = np.random.SeedSequence(SPLIT_SEEDS[split], spawn_key=(int(index),)).generate_state(2, np.uint32)
    return int(state[0]) << 32 | int(state[1])


def scene_at(split: str, index: int, config: ShapesConfig | None = None) -> Scene:
    """Scene ``index`` of ``split``, regenerated on its own (what a random-access training loop calls)."""
    return generate_scene(scene_seed(split, index), config)


def png_bytes(image: Image.Image) -> bytes:
    """The PNG encoding of an image (deterministic: no timestamps or other metadata)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


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


def _phrase(desc: Desc, *, plural: bool = False, generic: str = "shape") -> str:
    size, colour, shape = desc
    noun = shape or generic
    if plural:
        noun = PLURALS.get(noun, noun + "s")
    return " ".join(w for w in (size, colour, noun) if w)


def _article(phrase: str) -> str:
    return "an" if phrase[0] in "aeiou" else "a"


def _matches(o: ShapeObject, desc: Desc) -> bool:
    return all(v is None or v == getattr(o, a) for a, v in zip(_ATTRS, desc, strict=True))


def _descs(o: ShapeObject, allowed: Sequence[str] = _ATTRS) -> list[Desc]:
    """Every way to describe ``o`` by a subset of its ``allowed`` attributes (the empty one included)."""
    out: list[Desc] = []
    for keep in itertools.product((False, True), repeat=3):
        if any(k and a not in allowed for k, a in zip(keep, _ATTRS, strict=True)):
            continue
        out.append(tuple(getattr(o, a) if k else None for k, a in zip(keep, _ATTRS, strict=True)))  # type: ignore[misc]
    return out


# Scenes are immutable (and hash by identity), and the record builders ask the same questions of a scene many
# times over: cached, a scene's records are built ~2x faster (measured), which the training loop feels.
@functools.lru_cache(maxsize=4096)
def _group(scene: Scene, desc: Desc) -> tuple[int, ...]:
    return tuple(i for i, o in enumerate(scene.objects) if _matches(o, desc))


@functools.lru_cache(maxsize=1024)
def _unique_descs(scene: Scene, i: int, allowed: tuple[str, ...] = _ATTRS) -> tuple[Desc, ...]:
    return tuple(d for d in _descs(scene.objects[i], allowed) if _group(scene, d) == (i,))


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
    out["attribute"] = [f"the {_phrase(d)}" for d in _unique_descs(scene, i)]
    # Each other object's unique descriptions, once: they are the anchors of every relation below.
    anchors_of = {a: _unique_descs(scene, a) for a in range(len(scene.objects)) if a != i}
    for d in _descs(scene.objects[i]):
        group = _group(scene, d)
        if len(group) < 2:
            continue  # the phrase alone already singles it out; no superlative or relation needed
        for word in SUPERLATIVES:
            if word in ("largest", "smallest") and d[0] is not None:
                continue  # "the largest small circle" reads badly
            if _is_superlative(scene, i, group, word):
                out["superlative"].append(f"the {word} {_phrase(d)}")
        for a in range(len(scene.objects)):
            anchors = anchors_of.get(a, [])
            for relation, holds in RELATIONS.items():
                hits = [j for j in group if j != a and holds(scene.objects[j], scene.objects[a])]
                if hits == [i]:
                    out["relation"] += [f"the {_phrase(d)} {relation} the {_phrase(ad)}" for ad in anchors]
    return out


def _choose_referent(scene: Scene, rng: random.Random) -> tuple[int, str, str] | None:
    options = [(i, referring_expressions(scene, i)) for i in range(len(scene.objects))]
    options = [(i, e) for i, e in options if any(e.values())]
    if not options:
        return None
    i, exprs = rng.choice(options)
    kind = rng.choice([k for k, v in exprs.items() if v])
    return i, kind, rng.choice(exprs[kind])


def _caption_groups(scene: Scene) -> list[tuple[str, list[int]]]:
    groups: dict[tuple[str, str], list[int]] = {}
    for i, o in enumerate(scene.objects):
        groups.setdefault((o.colour, o.shape), []).append(i)
    out = []
    for (colour, shape), idx in groups.items():
        phrase = _phrase((None, colour, shape), plural=len(idx) > 1)
        out.append(
            (f"{_article(phrase)} {phrase}" if len(idx) == 1 else f"{NUMBER_WORDS[len(idx)]} {phrase}", idx)
        )
    return out


def _join(parts: Sequence[str]) -> str:
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


def _vqa_question(scene: Scene, rng: random.Random, config: ShapesConfig) -> tuple[str, str, str]:
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
        phrase = _phrase(d, generic="object" if kind == "shape" else "shape")
        return kind, VQA_QUESTIONS[kind].format(phrase), getattr(objs[i], kind)
    if kind == "spatial":
        a, b, r = rng.choice(pairs)
        yes = rng.random() < 0.5  # ask the true relation or its opposite, so "no" answers are as common
        da, db = rng.choice(_unique_descs(scene, a)), rng.choice(_unique_descs(scene, b))
        question = VQA_QUESTIONS["spatial"].format(_phrase(da), r if yes else OPPOSITE[r], _phrase(db))
        return kind, question, "yes" if yes else "no"
    if kind == "count":
        # Draw the answer first, then a phrase with that many matches: drawing phrases directly makes
        # "1" the answer to most questions.
        by_count: dict[int, list[Desc]] = {}
        for d in dict.fromkeys(d for o in objs for d in _descs(o)):
            by_count.setdefault(len(_group(scene, d)), []).append(d)
        absent = [x for x in (_random_desc(rng, config) for _ in range(20)) if not _group(scene, x)]
        if absent:
            by_count[0] = absent[:1]
        d = rng.choice(by_count[rng.choice(sorted(by_count))])
        return kind, VQA_QUESTIONS["count"].format(_phrase(d, plural=True)), str(len(_group(scene, d)))
    d = rng.choice([d for d in _descs(rng.choice(objs)) if any(d)])
    if rng.random() < 0.5:
        absent = [
            x for x in (_random_desc(rng, config) for _ in range(20)) if any(x) and not _group(scene, x)
        ]
        d = absent[0] if absent else d
    phrase = _phrase(d)
    return (
        kind,
        VQA_QUESTIONS["exist"].format(f"{_article(phrase)} {phrase}"),
        "yes" if _group(scene, d) else "no",
    )


def _region_question(scene: Scene, rng: random.Random) -> tuple[str, str, str]:
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
# Records

Built = tuple[list[Message], dict] | None


def _caption(scene: Scene, rng: random.Random, ev: bool, config: ShapesConfig) -> Built:
    return T.caption(_join([p for p, _ in _caption_groups(scene)]), rng, eval=ev), {}


def _grounding(scene: Scene, rng: random.Random, ev: bool, config: ShapesConfig) -> Built:
    text = _join([T.ground(p, idx) for p, idx in _caption_groups(scene)])
    return T.grounding(text, rng, eval=ev), {}


def _vqa(scene: Scene, rng: random.Random, ev: bool, config: ShapesConfig) -> Built:
    kind, question, answer = _vqa_question(scene, rng, config)
    return T.vqa(question, answer, rng, eval=ev), {"question_type": kind, "answer": answer}


def _refer(scene: Scene, rng: random.Random, ev: bool, config: ShapesConfig) -> Built:
    chosen = _choose_referent(scene, rng)
    if chosen is None:
        return None
    i, kind, expression = chosen
    return T.refer(expression, i, rng, eval=ev), {"target": i, "expression": expression, "kind": kind}


def _identify(scene: Scene, rng: random.Random, ev: bool, config: ShapesConfig) -> Built:
    i = rng.randrange(len(scene.objects))
    return T.identify(i, scene.objects[i].label, rng, eval=ev), {"target": i}


def _detection(scene: Scene, rng: random.Random, ev: bool, config: ShapesConfig) -> Built:
    d = rng.choice(_descs(rng.choice(scene.objects)))
    phrase = _phrase(d, plural=True)
    idx = list(_group(scene, d))
    return T.detection(phrase, idx, rng, eval=ev), {"phrase": phrase, "targets": idx}


def _region_chat(scene: Scene, rng: random.Random, ev: bool, config: ShapesConfig) -> Built:
    kind, question, answer = _region_question(scene, rng)
    return [Message("user", question), Message("assistant", answer)], {"question_type": kind}


_BUILDERS: dict[str, Callable[[Scene, random.Random, bool, ShapesConfig], Built]] = {
    "caption": _caption,
    "vqa": _vqa,
    "refer": _refer,
    "identify": _identify,
    "grounding": _grounding,
    "detection": _detection,
    "segmentation": _refer,  # a refer record whose objects carry their masks
    "region_chat": _region_chat,
}


def image_name(split: str, index: int) -> str:
    """The record's relative image path for scene ``index`` of ``split``: ``images/val_000012.png``."""
    return f"images/{split}_{index:06d}.png"


def scene_records(
    scene: Scene,
    split: str,
    index: int,
    tasks: Sequence[str] = SHAPES_TASKS,
    *,
    eval_prompts: bool | None = None,
    config: ShapesConfig | None = None,
) -> list[Record]:
    """One record per task for a scene (ids ``shapes-<split>-<index>-<task>``).

    ``eval_prompts`` (default: every split but train) uses the fixed evaluation instructions instead of
    drawing from the pools. A task the scene cannot support is left out (only ``refer``/``segmentation``,
    when no object can be singled out, e.g. two identical objects side by side). Each task's wording is drawn
    from its own generator seeded by (scene seed, task), so records don't shift when the task list changes.
    """
    config = config or ShapesConfig()
    unknown = [t for t in tasks if t not in _BUILDERS]
    if unknown:
        raise ValueError(f"unknown ShapesWorld tasks {unknown}; choose from {list(SHAPES_TASKS)}")
    ev = split != "train" if eval_prompts is None else eval_prompts
    records = []
    for task in tasks:
        if not scene.objects:
            break
        built = _BUILDERS[task](scene, random.Random(f"{scene.seed}:{task}"), ev, config)
        if built is None:
            continue
        messages, extra = built
        masks = task == "segmentation"
        objects = [
            GroundTruthObject(box=o.box, label=o.label, mask=rle_encode(o.mask) if masks else None)
            for o in scene.objects
        ]
        meta = {"task": task, "split": split, "scene": index, "seed": scene.seed, **extra}
        records.append(
            Record(f"shapes-{split}-{index}-{task}", image_name(split, index), objects, messages, meta)
        )
    return records


def write_shapes(
    out_dir: str | Path,
    n: int,
    split: str = "train",
    tasks: Sequence[str] = SHAPES_TASKS,
    config: ShapesConfig | None = None,
    *,
    eval_prompts: bool | None = None,
    progress: bool = True,
) -> Path:
    """Write scenes ``0..n-1`` of ``split`` as ``images/*.png`` plus ``records.jsonl``; return the JSONL path."""
    config = config or ShapesConfig()
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)

    def generate():
        for index in tqdm(range(n), desc=f"shapes {split}", unit="scene", disable=not progress):
            scene = scene_at(split, index, config)
            (out / image_name(split, index)).write_bytes(png_bytes(scene.image))
            yield from scene_records(scene, split, index, tasks, eval_prompts=eval_prompts, config=config)

    path = out / "records.jsonl"
    write_jsonl(path, generate())
    return path


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

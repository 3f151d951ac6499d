"""ShapesWorld scenes: coloured shapes on a grey background, with exact boxes and masks.

A scene is a pure function of a seed and a `ShapesConfig`, and scene ``i`` of a split uses a seed derived from
``(SPLIT_SEEDS[split], i)`` alone, so any scene can be regenerated on its own (the training loop samples by
index) and the val/test sets are identical on every machine.

Drawing: the background (plain, noise or a gradient, always grey) and optional distractor lines (grey, under
the objects) come first; each object is rasterised by PIL without anti-aliasing into its own binary mask and
painted by copying its colour into exactly those pixels, later objects on top. An object's ``mask`` is its
*visible* pixels and its ``box`` is tight around them (``x2 = last column + 1``, the continuous convention of
`geometry`), so every mask pixel has the object's colour. Placement is retried until the boxes' IoU stays under
``max_iou``, each occluded object keeps ``min_visible`` of its pixels, and same-coloured objects do not touch.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from ...geometry import box_iou

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
# Fixed forever: changing one changes that split's images on every machine.
SPLIT_SEEDS: dict[str, int] = {"train": 1001, "val": 2002, "test": 3003}


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
    def centre(self) -> tuple[float, float]:
        """The box's centre (x, y) in pixels: captions name objects in reading order by it."""
        x1, y1, x2, y2 = self.box
        return ((x1 + x2) / 2, (y1 + y2) / 2)

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
        if box_iou(boxes[i], boxes[j]) > config.max_iou:
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

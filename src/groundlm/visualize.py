"""Pictures: boxes, labels and masks drawn on images (records, answers, evaluation examples).

Masks follow the records contract: COCO RLE (`{"size": [h, w], "counts": ...}`, compressed string or
uncompressed list) or polygons (a list of flat `[x1, y1, x2, y2, ...]` lists), decoded with pycocotools.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .masks import decode_mask

# Distinct, saturated colours that stay visible on photos and on ShapesWorld's flat backgrounds.
PALETTE = [
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40),
]

FAINT = (150, 150, 150)  # the scene's other objects: seen, not competing with the referent or the answer


@dataclass
class Drawable:
    """One thing to draw: a box in pixels, an optional label and mask, whether it is ground truth, and whether
    it is background (`faint`: a scene's other objects, beside the referent the picture is about)."""

    box: Sequence[float] | None
    label: str | None = None
    mask: dict | list | np.ndarray | None = None
    ground_truth: bool = False
    faint: bool = False


def draw(image: Image.Image, items: Sequence[Drawable], *, min_side: int = 256) -> Image.Image:
    """A copy of `image` with masks (translucent), boxes and labels drawn.

    Small images are first enlarged by an integer factor (nearest neighbour, pixels stay crisp) until their
    short side reaches `min_side`, so labels stay legible; boxes and masks are scaled with them. Predictions
    are boxes in palette colours; ground truth is white with a black inner line, so both share one picture;
    faint items are thin grey lines.
    """
    w, h = image.size
    k = max(1, -(-min_side // min(w, h)))  # integer upscale factor
    canvas = image.convert("RGB").resize((w * k, h * k), Image.Resampling.NEAREST)
    line = max(1, round(max(w * k, h * k) / 200))
    overlay = np.asarray(canvas, dtype=np.float32).copy()
    for i, item in enumerate(items):
        if item.mask is None:
            continue
        m = item.mask if isinstance(item.mask, np.ndarray) else decode_mask(item.mask, h, w)
        m = m.repeat(k, axis=0).repeat(k, axis=1)  # [h*k, w*k]
        colour = np.asarray(PALETTE[i % len(PALETTE)], dtype=np.float32)
        overlay[m] = 0.5 * overlay[m] + 0.5 * colour
    canvas = Image.fromarray(overlay.astype(np.uint8))
    pen = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, item in enumerate(items):
        if item.box is None:
            continue
        x1, y1, x2, y2 = (float(v) * k for v in item.box)
        if item.faint:
            colour = FAINT
            pen.rectangle((x1, y1, x2, y2), outline=colour, width=1)
        elif item.ground_truth:
            pen.rectangle((x1, y1, x2, y2), outline=(255, 255, 255), width=line)
            pen.rectangle((x1 + line, y1 + line, x2 - line, y2 - line), outline=(0, 0, 0), width=1)
            colour = (255, 255, 255)
        else:
            colour = PALETTE[i % len(PALETTE)]
            pen.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        if item.label:
            tx, ty = x1 + line, max(0.0, y1 - 11)
            text_w = pen.textlength(item.label, font=font)
            tx = max(0.0, min(tx, canvas.width - text_w - 1))  # keep labels near the right edge readable
            text_box = pen.textbbox((tx, ty), item.label, font=font)
            pen.rectangle(text_box, fill=(0, 0, 0))
            pen.text((tx, ty), item.label, fill=colour, font=font)
    return canvas

"""Importer for COCO object detection annotations (``instances_*.json``) → ``[detection]`` records.

The file holds ``images`` (``id``, ``file_name``, ``width``, ``height``), ``categories`` (``id``, ``name``)
and ``annotations`` (``image_id``, ``category_id``, ``bbox`` as ``[x, y, w, h]`` pixels, ``segmentation``
as polygons or RLE, ``iscrowd``). Detection records are one phrase in, every matching box out
(docs/data-format.md, "detection"), as ShapesWorld's and ``from_flickr30k_detection``'s are, so an image
gives one ``[detection]`` record per category present on it: ``[detection] dog`` answered with
``<p>dog</p><box:0><box:1>…`` over all of that category's boxes in annotation order.

Boxes become xyxy pixels (``x, y, x + w, y + h``) kept inside the image (COCO boxes overshoot its edge by a
hundredth of a pixel now and then). Masks are kept as COCO polygons or RLE (``masks=False`` leaves them
out); a polygon ring of fewer than 3 points (a handful exist in COCO) is dropped and counted as
``degenerate polygon ring``, and an object left with none has no mask.

Crowd annotations (``iscrowd: 1``) mark one box around a group of objects too dense to label one by one
(an RLE mask over a crowd of people). A detection answer of "every person" that includes such a box would
teach the model to draw one box around many, and COCO's own evaluation ignores them, so by default
(``crowd="skip"``) they are left out and counted as ``crowd``; a category with only crowd boxes on an image
gives no record. ``crowd="keep"`` keeps them as ordinary objects and lists their object indices in
``meta["crowd"]``.

Ids are ``coco-det-<image_id>-<category_id>``; ``meta`` holds ``image_id``, ``category_id``, ``width``
and ``height``. ``report.rows`` counts annotations and images; a broken annotation (a missing ``bbox``,
an unknown ``category_id``) raises an ``ImportRowError`` naming ``annotations[i]`` and the field, or is
skipped and counted with ``on_error="skip"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ...geometry import clip_box, xywh_to_xyxy
from ...records import GroundTruthObject, Record
from .. import tasks
from .base import Importer, ImportOptions, PathLike, RowError, load_json
from .fields import as_dict, get, get_text, numbers, pixel_box, positive_int

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

Crowd = Literal["skip", "keep"]


@dataclass
class _Instance:
    image_id: int
    category_id: int
    box: tuple[float, float, float, float]
    mask: dict | list | None
    crowd: bool


def _table(data: Any, key: str, path: PathLike) -> list:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ValueError(f"{path}: expected a JSON object with a '{key}' list")
    return data[key]


def _mask(segmentation: Any, importer: Importer) -> dict | list | None:
    """A COCO segmentation as a record mask: RLE as it is, polygons without rings of fewer than 3 points."""
    if segmentation is None or segmentation == []:
        return None
    if isinstance(segmentation, dict):
        if set(segmentation) != {"size", "counts"}:
            raise RowError("segmentation", f"an RLE mask needs 'size' and 'counts', got {sorted(segmentation)}")
        return segmentation
    if not isinstance(segmentation, list):
        raise RowError("segmentation", f"expected polygons or RLE, got {type(segmentation).__name__}")
    rings = []
    for k, ring in enumerate(segmentation):
        if not isinstance(ring, list):
            raise RowError(f"segmentation[{k}]", f"expected a list of numbers, got {type(ring).__name__}")
        if len(ring) % 2:
            raise RowError(f"segmentation[{k}]", f"a polygon needs x, y pairs, got {len(ring)} numbers")
        if len(ring) < 6:
            importer.report.skip("degenerate polygon ring")
            continue
        rings.append(numbers(ring, len(ring), f"segmentation[{k}]"))
    return rings or None


def from_coco_instances(
    path: PathLike,
    *,
    crowd: Crowd = "skip",
    masks: bool = True,
    **options: Unpack[ImportOptions],
) -> list[Record]:
    """One ``[detection]`` record per (image, category) of a COCO ``instances_*.json`` (see the module docstring)."""
    if crowd not in ("skip", "keep"):
        raise ValueError(f"crowd must be 'skip' or 'keep', got {crowd!r}")
    data = load_json(path)
    images = _table(data, "images", path)
    annotations = _table(data, "annotations", path)
    names: dict[int, str] = {}
    for i, category in enumerate(_table(data, "categories", path)):
        if not isinstance(category, dict) or not isinstance(category.get("id"), int):
            raise ValueError(f"{path}: categories[{i}].id: expected an integer")
        if not isinstance(category.get("name"), str) or not category["name"].strip():
            raise ValueError(f"{path}: categories[{i}].name: expected a non-empty string")
        names[category["id"]] = category["name"].strip()
    sizes: dict[int, tuple[int, int]] = {}
    for image in images:
        if isinstance(image, dict) and isinstance(image.get("id"), int):
            width, height = image.get("width"), image.get("height")
            if isinstance(width, int | float) and isinstance(height, int | float):
                sizes[image["id"]] = (int(width), int(height))
    importer = Importer(path, **options)
    rng = importer.rng

    def instance(_: int, ann: Any) -> list[_Instance]:
        ann = as_dict(ann)
        image_id, category_id = get(ann, "image_id", int), get(ann, "category_id", int)
        if category_id not in names:
            raise RowError("category_id", f"{category_id} is not in categories", "unknown")
        if image_id not in sizes:
            raise RowError("image_id", f"{image_id} is not in images (with a width and height)", "unknown")
        x, y, w, h = numbers(ann.get("bbox"), 4, "bbox")
        if w < 0 or h < 0:
            raise RowError("bbox", f"negative width or height: {[x, y, w, h]!r}", "bad box")
        box = pixel_box(list(clip_box(xywh_to_xyxy((x, y, w, h)), *sizes[image_id])), "bbox")
        is_crowd = bool(ann.get("iscrowd", 0))
        if is_crowd and crowd == "skip":
            importer.report.skip("crowd")
            return []
        mask = _mask(ann.get("segmentation"), importer) if masks else None
        return [_Instance(image_id, category_id, box, mask, is_crowd)]

    by_image: dict[int, dict[int, list[_Instance]]] = {}
    rows = ((f"annotations[{i}]", a) for i, a in enumerate(annotations))
    for inst in importer.run(rows, instance):
        by_image.setdefault(inst.image_id, {}).setdefault(inst.category_id, []).append(inst)

    def convert(_: int, image: Any) -> list[Record]:
        image = as_dict(image)
        image_id, file_name = get(image, "id", int), get_text(image, "file_name")
        width, height = positive_int(image, "width"), positive_int(image, "height")
        out = []
        for category_id, instances in by_image.get(image_id, {}).items():
            name = names[category_id]
            objects = [GroundTruthObject(box=i.box, label=name, mask=i.mask) for i in instances]
            messages = tasks.detection(name, list(range(len(objects))), rng, eval=rng is None)
            meta: dict[str, Any] = {
                "task": "detection",
                "source": "coco_instances",
                "image_id": image_id,
                "category_id": category_id,
                "width": width,
                "height": height,
            }
            if any(i.crowd for i in instances):
                meta["crowd"] = [k for k, i in enumerate(instances) if i.crowd]
            out.append(Record(f"coco-det-{image_id}-{category_id}", file_name, objects, messages, meta))
        return out

    return importer.run(((f"images[{i}]", im) for i, im in enumerate(images)), convert)

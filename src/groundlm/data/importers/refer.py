"""Importers for the RefCOCO family (RefCOCO, RefCOCO+, RefCOCOg): MiniGPT-v2's evaluation JSON and the
refer API layout (docs/evaluation.md).

- ``from_minigptv2_refcoco``: ``{refcoco,refcoco+,refcocog}_{split}.json``, one row per sentence
  ``{img_id, sents, bbox [x, y, w, h], height, width}``. The image is ``img_id[:27] + ".jpg"`` (a COCO
  train2014 file); the whole ``img_id`` (image stem + ``_`` + suffix) identifies the referred object, so the
  sentences of one object share it. One ``[refer]`` record per sentence.
- ``load_refer`` / ``from_refer_rec`` / ``from_refer_reg``: ``<dataset>/refs(<splitBy>).p`` + ``instances.json``.
  The pickle is read with the restricted unpickler of ``safe_pickle`` (it never imports anything). REC gives
  one ``[refer]`` record per sentence, REG one ``[identify]`` record per object with every sentence kept as
  a reference in ``meta["references"]`` (the REG metric scores against all of them). Objects keep their COCO
  polygons as the mask, for referring segmentation.

Without an ``rng`` the instructions are MiniGPT-v2's evaluation prompts; with one they are drawn from the
task pools (training).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...geometry import xywh_to_xyxy
from ...records import GroundTruthObject, Record
from .. import tasks
from ..safe_pickle import safe_load
from .base import Importer, ImportOptions, ImportReport, OnError, PathLike, RowError, load_json
from .fields import as_dict, get, get_text, numbers, pixel_box, positive_int

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11

# A COCO file stem is 27 characters: "COCO_train2014_" + 12 digits.
_COCO_STEM = 27
_SPLIT_BY = re.compile(r"refs\((\w+)\)")


def from_minigptv2_refcoco(
    path: PathLike,
    *,
    dataset: str | None = None,
    split: str | None = None,
    **options: Unpack[ImportOptions],
) -> list[Record]:
    """One ``[refer]`` record per row of a MiniGPT-v2 RefCOCO evaluation file.

    ``dataset`` and ``split`` default to the file name (``refcoco+_testA.json`` → ``refcoco+``, ``testA``).
    Record ids are ``<dataset>-<split>-<row>``; ``meta`` holds ``dataset``, ``split``, ``object`` (the
    ``img_id`` that groups the sentences of one object), ``image_id``, ``width`` and ``height``.
    """
    path = Path(path)
    stem_dataset, _, stem_split = path.stem.rpartition("_")
    dataset = dataset or stem_dataset or path.stem
    split = split or stem_split
    importer = Importer(path, **options)
    rng = importer.rng
    rows = load_json(path)
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of rows, got {type(rows).__name__}")

    def convert(index: int, row: Any) -> list[Record]:
        row = as_dict(row)
        img_id = get_text(row, "img_id")
        stem = img_id[:_COCO_STEM]
        if len(img_id) <= _COCO_STEM + 1 or img_id[_COCO_STEM] != "_" or not stem[-12:].isdigit():
            raise RowError("img_id", f"expected 'COCO_train2014_<12 digits>_<object>', got {img_id!r}")
        sentence = get_text(row, "sents")
        box = pixel_box(list(xywh_to_xyxy(numbers(row.get("bbox"), 4, "bbox"))), "bbox")
        meta = {
            "task": "refer",
            "source": "minigptv2_refcoco",
            "dataset": dataset,
            "split": split,
            "object": img_id,
            "image_id": int(stem[-12:]),
            "width": positive_int(row, "width"),
            "height": positive_int(row, "height"),
        }
        messages = tasks.refer(sentence, 0, rng, eval=rng is None)
        obj = GroundTruthObject(box=box, label=sentence)
        return [Record(f"{dataset}-{split}-{index}", stem + ".jpg", [obj], messages, meta)]

    rows_with_where = ((f"row {i}", row) for i, row in enumerate(rows))
    return importer.run(rows_with_where, convert)


# --------------------------------------------------------------------------------------------------------
# The refer API layout


def refer_split_matches(ref_split: str, wanted: str) -> bool:
    """Whether a ref whose split is ``ref_split`` belongs to ``wanted``, as the refer API's getRefIds decides.

    ``testA``/``testB``/``testC`` keep every split that contains that letter (so ``testAB`` counts for both
    testA and testB), ``test`` keeps every split containing "test", ``train``, ``val`` and the two-letter
    test splits must match exactly.
    """
    if wanted in ("testA", "testB", "testC"):
        return wanted[-1] in ref_split
    if wanted == "test":
        return "test" in ref_split
    if wanted in ("train", "val", "testAB", "testBC", "testAC"):
        return ref_split == wanted
    raise ValueError(
        f"unknown refer split {wanted!r}; use train, val, test, testA, testB, testC, testAB, testBC or testAC"
    )


def _check_split(split: str | None) -> None:
    # Fail on a misspelt split before reading anything, not on the first ref.
    if split is not None:
        refer_split_matches("", split)


@dataclass
class ReferObject:
    """One ref of the refer API joined with its COCO annotation and image (box in xyxy pixels)."""

    ref_id: int
    ann_id: int
    image_id: int
    image: str
    width: int
    height: int
    box: tuple[float, float, float, float]
    mask: list | dict | None
    category: str | None
    split: str
    sentences: list[tuple[int | None, str]]  # (sent_id, sentence)
    dataset: str
    split_by: str | None

    def meta(self, task: str) -> dict:
        """The record meta shared by REC and REG records of this object."""
        return {
            "task": task,
            "source": "refer",
            "dataset": self.dataset,
            "split_by": self.split_by,
            "split": self.split,
            "ref_id": self.ref_id,
            "ann_id": self.ann_id,
            "image_id": self.image_id,
            "category": self.category,
            "width": self.width,
            "height": self.height,
        }

    def ground_truth(self, label: str | None) -> GroundTruthObject:
        """The object as a record's ``objects[0]``."""
        return GroundTruthObject(box=self.box, label=label, mask=self.mask)


def _index(items: Any, path: PathLike, table: str) -> dict[Any, dict]:
    if not isinstance(items, list):
        raise ValueError(f"{path}: '{table}' must be a list, got {type(items).__name__}")
    out = {}
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "id" not in item:
            raise ValueError(f"{path}: {table}[{i}].id: missing")
        out[item["id"]] = item
    return out


def _mask(segmentation: Any, where: str) -> list | dict | None:
    if segmentation is None:
        return None
    if isinstance(segmentation, dict):
        counts = segmentation.get("counts")
        if isinstance(counts, bytes):  # pycocotools-made RLE can carry bytes; JSON needs text
            counts = counts.decode("ascii")
        return {"size": segmentation.get("size"), "counts": counts}
    if not isinstance(segmentation, list):
        raise RowError(where, f"expected polygons or RLE, got {type(segmentation).__name__}")
    # COCO has a few degenerate rings of fewer than 3 points; they cover no area, so they are dropped.
    rings = [[float(v) for v in ring] for ring in segmentation if isinstance(ring, list) and len(ring) >= 6]
    return rings or None


class _ReferSource:
    """The refs pickle and instances.json of one refer dataset, indexed for joining."""

    def __init__(self, refs_path: PathLike, instances_path: PathLike):
        self.refs_path, self.instances_path = Path(refs_path), Path(instances_path)
        self.refs = safe_load(self.refs_path)
        if not isinstance(self.refs, list):
            raise ValueError(f"{refs_path}: expected a list of refs, got {type(self.refs).__name__}")
        instances = load_json(instances_path)
        if not isinstance(instances, dict):
            raise ValueError(f"{instances_path}: expected a JSON object with images/annotations/categories")
        self.images = _index(instances.get("images"), instances_path, "images")
        self.annotations = _index(instances.get("annotations"), instances_path, "annotations")
        self.categories = _index(instances.get("categories") or [], instances_path, "categories")
        self.dataset = self.refs_path.parent.name or "refer"
        m = _SPLIT_BY.search(self.refs_path.name)
        self.split_by = m.group(1) if m else None

    def rows(self) -> list[tuple[str, Any]]:
        """The refs as ``(where, ref)`` pairs."""
        return [(f"refs[{i}]", ref) for i, ref in enumerate(self.refs)]

    def wanted(self, ref: Any, split: str | None) -> bool:
        """Whether ``ref`` passes the split filter (broken refs pass, so conversion reports them)."""
        if split is None or not isinstance(ref, dict) or not isinstance(ref.get("split"), str):
            return True
        return refer_split_matches(ref["split"], split)

    def join(self, ref: Any) -> ReferObject:
        """Join one ref with its annotation, image and category; RowError on anything missing."""
        ref = as_dict(ref, "ref")
        ann_id = get(ref, "ann_id", int)
        ann = self.annotations.get(ann_id)
        if ann is None:
            raise RowError("ann_id", f"annotation {ann_id} is not in {self.instances_path.name}", "unknown")
        ann_where = f"{self.instances_path.name} annotations[id={ann_id}]"
        image_id = get(ann, "image_id", int, f"{ann_where}.image_id")
        image = self.images.get(image_id)
        if image is None:
            raise RowError(f"{ann_where}.image_id", f"image {image_id} is not in images", "unknown")
        img_where = f"{self.instances_path.name} images[id={image_id}]"
        box = pixel_box(list(xywh_to_xyxy(numbers(ann.get("bbox"), 4, f"{ann_where}.bbox"))), "bbox")
        sentences = []
        for k, s in enumerate(get(ref, "sentences", list)):
            s = as_dict(s, f"sentences[{k}]")
            text = s.get("sent") or s.get("raw")
            if not isinstance(text, str) or not text.strip():
                raise RowError(f"sentences[{k}].sent", "missing or empty", "missing")
            sentences.append((s.get("sent_id"), text.strip()))
        if not sentences:
            raise RowError("sentences", "the ref has no sentence", "empty")
        category = self.categories.get(ann.get("category_id"), {}).get("name")
        return ReferObject(
            ref_id=get(ref, "ref_id", int),
            ann_id=ann_id,
            image_id=image_id,
            image=get_text(image, "file_name", f"{img_where}.file_name"),
            width=positive_int(image, "width", f"{img_where}.width"),
            height=positive_int(image, "height", f"{img_where}.height"),
            box=box,
            mask=_mask(ann.get("segmentation"), f"{ann_where}.segmentation"),
            category=category,
            split=get_text(ref, "split"),
            sentences=sentences,
            dataset=self.dataset,
            split_by=self.split_by,
        )


def load_refer(
    refs_path: PathLike,
    instances_path: PathLike,
    *,
    split: str | None = None,
    on_error: OnError = "raise",
    report: ImportReport | None = None,
) -> list[ReferObject]:
    """The refs of a refer-API dataset joined with instances.json, filtered by ``split`` (refer's rule).

    The dataset name is the folder of ``refs_path`` (``refcoco+/refs(unc).p`` → ``refcoco+``) and
    ``split_by`` comes from the file name.
    """
    _check_split(split)
    source = _ReferSource(refs_path, instances_path)
    importer = Importer(refs_path, on_error, report)
    return importer.run(source.rows(), lambda _, ref: [source.join(ref)] if source.wanted(ref, split) else [])


def _refer_records(
    refs_path: PathLike,
    instances_path: PathLike,
    split: str | None,
    options: ImportOptions,
    records_of: Callable[[ReferObject, random.Random | None], list[Record]],
) -> list[Record]:
    """``records_of(object, rng)`` for every ref of ``split``, under the importer's error policy."""
    _check_split(split)
    source = _ReferSource(refs_path, instances_path)
    importer = Importer(refs_path, **options)

    def convert(_: int, ref: Any) -> list[Record]:
        return records_of(source.join(ref), importer.rng) if source.wanted(ref, split) else []

    return importer.run(source.rows(), convert)


def from_refer_rec(
    refs_path: PathLike,
    instances_path: PathLike,
    *,
    split: str | None = None,
    **options: Unpack[ImportOptions],
) -> list[Record]:
    """Referring-expression comprehension: one ``[refer]`` record per sentence (id ``…-<ref_id>-<sent_id>``)."""

    def records_of(obj: ReferObject, rng: random.Random | None) -> list[Record]:
        out = []
        for k, (sent_id, sentence) in enumerate(obj.sentences):
            meta = obj.meta("refer") | {"sent_id": sent_id}
            messages = tasks.refer(sentence, 0, rng, eval=rng is None)
            rid = f"{obj.dataset}-{obj.split_by}-{obj.split}-{obj.ref_id}-{sent_id if sent_id is not None else k}"
            out.append(Record(rid, obj.image, [obj.ground_truth(sentence)], messages, meta))
        return out

    return _refer_records(refs_path, instances_path, split, options, records_of)


def from_refer_reg(
    refs_path: PathLike,
    instances_path: PathLike,
    *,
    split: str | None = None,
    **options: Unpack[ImportOptions],
) -> list[Record]:
    """Referring-expression generation: one ``[identify]`` record per object, all sentences in meta.

    The answer is the first sentence, or a sentence drawn with ``rng`` when one is given;
    ``meta["references"]`` lists every sentence of the object for the REG metric.
    """

    def records_of(obj: ReferObject, rng: random.Random | None) -> list[Record]:
        references = [sentence for _, sentence in obj.sentences]
        answer = references[0] if rng is None else rng.choice(references)
        meta = obj.meta("identify") | {"references": references}
        messages = tasks.identify(0, answer, rng, eval=rng is None)
        rid = f"{obj.dataset}-{obj.split_by}-{obj.split}-{obj.ref_id}-reg"
        return [Record(rid, obj.image, [obj.ground_truth(obj.category)], messages, meta)]

    return _refer_records(refs_path, instances_path, split, options, records_of)

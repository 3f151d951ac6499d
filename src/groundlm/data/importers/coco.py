"""Importers for formats over COCO images with one caption, question or category per row: COCO captions,
VQAv2 / OK-VQA / GQA questions, POPE and LLaVA's caps_boxes (conventions in ``__init__``)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...records import GroundTruthObject, Message, Record
from .. import tasks
from .base import (
    Importer,
    ImportOptions,
    ImportReport,
    OnError,
    PathLike,
    RowError,
    image_size,
    json_rows,
    load_json,
)
from .fields import as_dict, get, get_text, numbers, scaled_box, text_value

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11


def _table(data: Any, key: str, path: PathLike) -> list:
    if not isinstance(data, dict) or not isinstance(data.get(key), list):
        raise ValueError(f"{path}: expected a JSON object with a '{key}' list")
    return data[key]


# --------------------------------------------------------------------------------------------------------
# COCO captions


def from_coco_captions(path: PathLike, **options: Unpack[ImportOptions]) -> list[Record]:
    """One ``[caption]`` record per image of a COCO ``captions_*.json`` (id ``coco-caption-<image_id>``).

    The answer is the image's first caption (or one drawn with ``rng``); ``meta["captions"]`` keeps all of
    them for BLEU/CIDEr. Images without a caption are counted in the report as ``no captions``.
    ``report.rows`` counts annotations and images.
    """
    data = load_json(path)
    images, annotations = _table(data, "images", path), _table(data, "annotations", path)
    importer = Importer(path, **options)
    rng = importer.rng

    def caption_of(_: int, ann: Any) -> list[tuple[Any, str]]:
        ann = as_dict(ann)
        return [(get(ann, "image_id", int), get_text(ann, "caption").strip())]

    captions: dict[Any, list[str]] = {}
    for image_id, text in importer.run(
        ((f"annotations[{i}]", a) for i, a in enumerate(annotations)), caption_of
    ):
        captions.setdefault(image_id, []).append(text)

    def convert(_: int, image: Any) -> list[Record]:
        image = as_dict(image)
        image_id = get(image, "id", int)
        refs = captions.get(image_id)
        if not refs:
            importer.report.skip("no captions")
            return []
        answer = refs[0] if rng is None else rng.choice(refs)
        meta = {"task": "caption", "source": "coco_captions", "image_id": image_id, "captions": refs}
        for key in ("width", "height"):
            if isinstance(image.get(key), int):
                meta[key] = image[key]
        messages = tasks.caption(answer, rng, eval=rng is None)
        return [Record(f"coco-caption-{image_id}", get_text(image, "file_name"), [], messages, meta)]

    return importer.run(((f"images[{i}]", im) for i, im in enumerate(images)), convert)


# --------------------------------------------------------------------------------------------------------
# VQA: VQAv2, OK-VQA (same layout), GQA


def most_frequent(answers: list[str]) -> str:
    """The most frequent answer; ties go to the one that appears first (deterministic)."""
    return Counter(answers).most_common(1)[0][0]


def _vqa_layout(
    source: str,
    questions_path: PathLike,
    annotations_path: PathLike | None,
    subtype: str | None,
    options: ImportOptions,
) -> list[Record]:
    importer = Importer(questions_path, **options)
    rng = importer.rng
    data = load_json(questions_path)
    questions = _table(data, "questions", questions_path)
    subtype = subtype or data.get("data_subtype")
    if not isinstance(subtype, str) or not subtype:
        raise ValueError(
            f"{questions_path}: data_subtype: missing; pass subtype= (e.g. 'val2014') to name the images"
        )
    by_question: dict[Any, dict] = {}
    if annotations_path is not None:
        for i, ann in enumerate(_table(load_json(annotations_path), "annotations", annotations_path)):
            if not isinstance(ann, dict) or "question_id" not in ann:
                raise ValueError(f"{annotations_path}: annotations[{i}].question_id: missing")
            by_question[ann["question_id"]] = ann

    def convert(_: int, row: Any) -> list[Record]:
        row = as_dict(row)
        qid, image_id = get(row, "question_id", int), get(row, "image_id", int)
        question = get_text(row, "question")
        meta: dict[str, Any] = {"task": "vqa", "source": source, "question_id": qid, "image_id": image_id}
        messages = tasks.vqa(question, "", rng, eval=rng is None)[:1]  # test splits: a question only
        if annotations_path is not None:
            ann = by_question.get(qid)
            if ann is None:
                raise RowError("question_id", f"question {qid} has no annotation", "unknown")
            answers = []
            for k, a in enumerate(get(ann, "answers", list, "annotation.answers")):
                answers.append(get_text(as_dict(a, f"annotation.answers[{k}]"), "answer", f"answers[{k}]"))
            if not answers:
                raise RowError("annotation.answers", "empty", "empty")
            meta["answers"] = answers
            for key in ("answer_type", "question_type"):
                if isinstance(ann.get(key), str):
                    meta[key] = ann[key]
            messages = tasks.vqa(question, most_frequent(answers), rng, eval=rng is None)
        image = f"COCO_{subtype}_{image_id:012d}.jpg"
        return [Record(f"{source}-{qid}", image, [], messages, meta)]

    rows = ((f"questions[{i}]", q) for i, q in enumerate(questions))
    return importer.run(rows, convert)


def from_vqav2(
    questions_path: PathLike,
    annotations_path: PathLike | None = None,
    *,
    subtype: str | None = None,
    **options: Unpack[ImportOptions],
) -> list[Record]:
    """VQAv2 ``[vqa]`` records (id ``vqav2-<question_id>``), image ``COCO_<subtype>_<image_id:012d>.jpg``.

    ``subtype`` defaults to the questions file's ``data_subtype``. With annotations, the answer is the most
    frequent of the 10 and ``meta["answers"]`` keeps all 10 for the soft accuracy; without (test-dev), the
    record is the question alone.
    """
    return _vqa_layout("vqav2", questions_path, annotations_path, subtype, options)


def from_okvqa(
    questions_path: PathLike,
    annotations_path: PathLike | None = None,
    *,
    subtype: str | None = None,
    **options: Unpack[ImportOptions],
) -> list[Record]:
    """OK-VQA ``[vqa]`` records (id ``okvqa-<question_id>``); same layout and rules as ``from_vqav2``."""
    return _vqa_layout("okvqa", questions_path, annotations_path, subtype, options)


def from_gqa(path: PathLike, **options: Unpack[ImportOptions]) -> list[Record]:
    """GQA ``[vqa]`` records (id ``gqa-<question_id>``, image ``<imageId>.jpg``), the answer in meta.

    The file is a dict keyed by question id with ``imageId``, ``question`` and ``answer``; rows without an
    answer (the challenge test split) become a question alone.
    """
    importer = Importer(path, **options)
    rng = importer.rng
    data = load_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object keyed by question id")

    def convert(_: int, item: tuple[str, Any]) -> list[Record]:
        qid, row = item
        row = as_dict(row)
        question, image_id = get_text(row, "question"), get_text(row, "imageId")
        meta = {"task": "vqa", "source": "gqa", "question_id": qid, "image_id": image_id}
        if row.get("answer") is None:
            messages = tasks.vqa(question, "", rng, eval=rng is None)[:1]
        else:
            meta["answer"] = get_text(row, "answer")
            messages = tasks.vqa(question, meta["answer"], rng, eval=rng is None)
        return [Record(f"gqa-{qid}", f"{image_id}.jpg", [], messages, meta)]

    return importer.run(((f"[{k!r}]", (k, v)) for k, v in data.items()), convert)


# --------------------------------------------------------------------------------------------------------
# POPE


def from_pope(
    path: PathLike,
    *,
    template: str = "{}",
    on_error: OnError = "raise",
    report: ImportReport | None = None,
) -> list[Record]:
    """POPE yes/no questions (JSON lines or a JSON list of ``{question_id, image, text, label}``).

    POPE asks its question as it is ("Is there a dog in the image?") with no task tag, so the user turn is
    ``template.format(text)`` (default: the text alone) and the answer is the label, lower-cased ``yes`` or
    ``no``, which ``meta["label"]`` also keeps. Ids are ``<file stem>-<question_id>``, so the three COCO
    variants (random/popular/adversarial) never collide; answers must be scored in file order.
    """
    stem = Path(path).stem

    def convert(_: int, row: Any) -> list[Record]:
        row = as_dict(row)
        qid = get(row, "question_id", (int, str))
        label = get_text(row, "label").strip().lower()
        if label not in ("yes", "no"):
            raise RowError("label", f"expected 'yes' or 'no', got {row['label']!r}")
        messages = [Message("user", template.format(get_text(row, "text"))), Message("assistant", label)]
        meta = {"task": "pope", "source": "pope", "variant": stem, "question_id": qid, "label": label}
        return [Record(f"{stem}-{qid}", get_text(row, "image"), [], messages, meta)]

    return Importer(path, on_error, report).run(json_rows(path), convert)


# --------------------------------------------------------------------------------------------------------
# LLaVA caps_boxes


def from_llava_caps_boxes(
    path: PathLike,
    *,
    image_sizes: Mapping[str, tuple[int, int]] | None = None,
    image_root: PathLike | None = None,
    **options: Unpack[ImportOptions],
) -> list[Record]:
    """LLaVA's ``caps_boxes`` JSONL: per image a ``[caption]`` record and one ``[detection]`` record per category.

    Rows are ``{id, image, captions, instances: [{category, bbox}]}`` with bbox ``x1, y1, x2, y2`` normalised
    to [0, 1]. Records store pixels, and the file has no image sizes, so a size comes from ``image_sizes``
    (``{image name: (width, height)}``) or from the header of ``image_root / image``. Without a size the
    caption record is still made (its ``meta["categories"]`` lists the instance categories, as CHAIR needs)
    and the detection records are skipped and counted as ``no image size`` (one per category).
    Ids: ``llava-caps-<id>-caption`` and ``llava-caps-<id>-detection-<k>``.
    """
    sizes = dict(image_sizes or {})
    importer = Importer(path, **options)
    rng = importer.rng

    def size_of(image: str) -> tuple[int, int] | None:
        if image in sizes:
            return sizes[image]
        if image_root is not None and (Path(image_root) / image).is_file():
            return image_size(Path(image_root) / image)
        return None

    def convert(_: int, row: Any) -> list[Record]:
        row = as_dict(row)
        rid, image = str(get(row, "id", (str, int))), get_text(row, "image")
        captions = [text_value(c, f"captions[{k}]").strip() for k, c in enumerate(get(row, "captions", list))]
        if not captions:
            raise RowError("captions", "empty", "empty")
        by_category: dict[str, list[list[float]]] = {}
        for k, inst in enumerate(get(row, "instances", list)):
            inst = as_dict(inst, f"instances[{k}]")
            category = get_text(inst, "category", f"instances[{k}].category")
            by_category.setdefault(category, []).append(numbers(inst.get("bbox"), 4, f"instances[{k}].bbox"))
        answer = captions[0] if rng is None else rng.choice(captions)
        meta = {
            "task": "caption",
            "source": "llava_caps_boxes",
            "image_id": rid,
            "captions": captions,
            "categories": sorted(by_category),
        }
        out = [
            Record(f"llava-caps-{rid}-caption", image, [], tasks.caption(answer, rng, eval=rng is None), meta)
        ]
        size = size_of(image)
        if size is None:
            if by_category:
                importer.report.skip("no image size", len(by_category))
            return out
        width, height = size
        size_meta = {"width": width, "height": height}
        for k, (category, boxes) in enumerate(by_category.items()):
            objects = [
                GroundTruthObject(
                    scaled_box(b, 1.0, width, height, f"instances[{category!r}].bbox"), category
                )
                for b in boxes
            ]
            messages = tasks.detection(category, list(range(len(objects))), rng, eval=rng is None)
            meta = {"task": "detection", "source": "llava_caps_boxes", "image_id": rid, **size_meta}
            out.append(Record(f"llava-caps-{rid}-detection-{k}", image, objects, messages, meta))
        return out

    return importer.run(json_rows(path), convert)

"""RefCOCO as the evaluation tools ship it, with the images inside the file → `[refer]` records.

- ``from_lmms_refcoco``: lmms-lab's RefCOCO / RefCOCO+ / RefCOCOg parquet files (what lmms-eval's
  ``refcoco_bbox_rec`` tasks load), read through ``datasets`` (``pip install datasets``; local files only).
  Columns ``question_id``, ``image`` (an image feature: PIL, or ``{bytes, path}``), ``answer`` (the referring
  expressions, a list), ``bbox`` (COCO ``[x, y, w, h]`` pixels), ``file_name``; one record per expression,
  as lmms-eval explodes ``answer``.
- ``from_vlmevalkit_refcoco``: VLMEvalKit's ``RefCOCO.tsv``: columns ``index``, ``image`` (base64), ``question``
  (its prompt, the expression inside ``<ref></ref>``), ``answer`` (``[x1, y1, x2, y2]`` in [0, 1] of the image),
  ``category`` (``RefCOCO+ test-A``), optionally ``bbox_x1..bbox_y2`` in pixels (preferred, as VLMEvalKit's
  scorer does); one record per row.

The images are written once each under ``out_dir/images/`` and records name them ``images/<file>``, so records
saved as ``out_dir/records.jsonl`` find them (`groundlm data import ... --out out_dir`). Without an ``rng`` the
instruction is MiniGPT-v2's evaluation prompt (``[refer] give me the location of {}``).
"""

from __future__ import annotations

import base64
import binascii
import csv
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from ...geometry import xywh_to_xyxy
from ...images import ImageError, load_image
from ...records import GroundTruthObject, Record
from .. import tasks
from .base import Importer, ImportOptions, PathLike, RowError
from .fields import get, get_text, numbers, pixel_box

if TYPE_CHECKING:
    from typing_extensions import Unpack

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def _save_image(image: Image.Image, out_dir: Path, name: str) -> str:
    """Write `image` as out_dir/images/<name>.png once; return the record's image path."""
    relative = f"images/{_SAFE_NAME.sub('_', name)}.png"
    target = out_dir / relative
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target)
    return relative


def _decoded(value: Any, field: str) -> Image.Image:
    """A parquet image cell (PIL from `datasets`, or the raw `{bytes, path}` struct) as an RGB image."""
    if isinstance(value, dict):
        value = value.get("bytes")
    if not isinstance(value, (Image.Image, bytes)):
        raise RowError(field, f"expected an image (or its bytes), got {type(value).__name__}")
    try:
        return load_image(value)
    except ImageError as err:
        raise RowError(field, str(err)) from None


def _refer_records(importer, prefix, image, image_path, box, expressions, meta) -> list[Record]:
    width, height = image.size
    out = []
    for k, expression in enumerate(expressions):
        messages = tasks.refer(expression, 0, importer.rng, eval=importer.evaluation)
        row_meta = {**meta, "task": "refer", "expression": expression, "width": width, "height": height}
        out.append(Record(f"{prefix}-{k}", image_path, [GroundTruthObject(box=box, label=expression)], messages, row_meta))
    return out


def from_lmms_refcoco(
    path: PathLike, out_dir: PathLike, *, dataset: str | None = None, **options: Unpack[ImportOptions]
) -> list[Record]:
    """One `[refer]` record per referring expression of an lmms-lab RefCOCO-family parquet file.

    `dataset` (default: the file's stem) prefixes record ids: `<dataset>-<question_id>-<k>`; `meta` keeps
    `question_id`, `file_name`, `dataset`, `width`, `height` and the `expression`.
    """
    try:
        from datasets import Dataset
    except ImportError as err:
        raise ImportError("reading lmms-lab parquet files needs `datasets`: pip install datasets") from err
    path, out_dir = Path(path), Path(out_dir)
    dataset = dataset or path.stem
    importer = Importer(path, **options)
    rows = Dataset.from_parquet(str(path), keep_in_memory=True)
    missing = {"question_id", "image", "answer", "bbox"} - set(rows.column_names)
    if missing:
        raise ValueError(f"{path}: not an lmms-lab RefCOCO file: no column {', '.join(sorted(missing))}")

    def convert(index: int, row: dict) -> list[Record]:
        question_id = str(get(row, "question_id", (str, int)))
        answers = get(row, "answer", list)
        if not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise RowError("answer", "expected a non-empty list of referring expressions")
        image = _decoded(row.get("image"), "image")
        box = pixel_box(list(xywh_to_xyxy(numbers(row.get("bbox"), 4, "bbox"))), "bbox")
        name = row.get("file_name") or question_id
        image_path = _save_image(image, out_dir, Path(str(name)).stem)
        meta = {"source": "lmms_refcoco", "dataset": dataset, "question_id": question_id, "file_name": name}
        return _refer_records(importer, f"{dataset}-{question_id}", image, image_path, box, answers, meta)

    return importer.run(((f"row {i}", row) for i, row in enumerate(rows)), convert)


_REF = re.compile(r"<ref>(.*?)</ref>", re.S)
_PIXEL_COLUMNS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")


def _tsv_rows(path: Path) -> Iterator[tuple[str, dict]]:
    csv.field_size_limit(sys.maxsize)  # base64 images are long fields
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        for lineno, row in enumerate(reader, start=2):
            yield f"line {lineno}", row


def from_vlmevalkit_refcoco(path: PathLike, out_dir: PathLike, **options: Unpack[ImportOptions]) -> list[Record]:
    """One `[refer]` record per row of VLMEvalKit's RefCOCO TSV; ids `<split>-<index>-0` where the split is
    VLMEvalKit's (`RefCOCO+ test-A` → `RefCOCO+_testA`); `meta` keeps `index`, `split`, `question` (the tool's
    own prompt), `width`, `height` and the `expression`."""
    path, out_dir = Path(path), Path(out_dir)
    importer = Importer(path, **options)

    def convert(index: int, row: dict) -> list[Record]:
        row_index = get_text(row, "index")
        question = get_text(row, "question")
        found = _REF.search(question)
        expression = (found.group(1) if found else question).strip()
        if not expression:
            raise RowError("question", "no referring expression")
        try:
            data = base64.b64decode(get_text(row, "image"), validate=True)
        except (binascii.Error, ValueError):
            raise RowError("image", "not base64") from None
        image = _decoded(data, "image")
        w, h = image.size
        if all(row.get(k) not in (None, "") for k in _PIXEL_COLUMNS):
            # VLMEvalKit's scorer takes these pixel columns first when a TSV has them
            try:
                box = pixel_box([float(row[k]) for k in _PIXEL_COLUMNS], "bbox_x1..bbox_y2")
            except ValueError:
                raise RowError("bbox_x1..bbox_y2", "expected four pixel numbers") from None
        else:
            try:
                x1, y1, x2, y2 = numbers(_json_list(get_text(row, "answer")), 4, "answer")
            except ValueError:
                raise RowError("answer", "expected [x1, y1, x2, y2] in [0, 1]") from None
            box = pixel_box([x1 * w, y1 * h, x2 * w, y2 * h], "answer")
        category = (row.get("category") or "RefCOCO").strip()
        split = category.replace(" ", "_").replace("test-A", "testA").replace("test-B", "testB")
        image_path = _save_image(image, out_dir, f"{split}-{row_index}")
        meta = {"source": "vlmevalkit_refcoco", "split": split, "index": row_index, "question": question}
        return _refer_records(importer, f"{split}-{row_index}", image, image_path, box, [expression], meta)

    return importer.run(_tsv_rows(path), convert)


def _json_list(text: str) -> list:
    import json

    value = json.loads(text)
    if not isinstance(value, list):
        raise ValueError(text)
    return value


__all__ = ["from_lmms_refcoco", "from_vlmevalkit_refcoco"]

"""Other tools' prediction files as groundlm prediction rows, so `groundlm eval --predictions FILE
--predictions-format F --reading R` re-scores a published number from its logs (docs/evaluation.md).

- `groundlm`: groundlm's own `predictions.jsonl` (`runner.read_predictions`).
- `lmms_samples`: lmms-eval's `--log_samples` JSONL of a `refcoco_bbox_rec` task. Each line holds the raw answer
  (`filtered_resps`) and, under every metric's key, `{"ann_id", "bbox", "pred", ...}` with the ground truth
  already in [0, 1] of the original image; no image size is logged, so rows are scored in that unit square
  (`width = height = 1`): IoU is unchanged by scaling each axis, but the +1-pixel convention has no meaning there.
- `vlmevalkit`: VLMEvalKit's RefCOCO prediction file saved as TSV, CSV or JSON lines (its `.xlsx` opened and
  saved as TSV): `index`, `prediction`, `width`, `height`, and the ground truth as `bbox_x1..bbox_y2` pixels or
  `answer` (`[x1, y1, x2, y2]` fractions).

Every reader names the file and line of a row it cannot use. Rows carry `frame: "resize"` (the numbers refer to
the original image) and `reference: "<box:0>"` (the one target object).
"""

from __future__ import annotations

import ast
import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path

from .runner import read_predictions

_PIXELS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")


def _row(row_id: str, prompt: str, prediction: str, box: list[float], width: int, height: int) -> dict:
    return {
        "id": row_id, "task": "refer", "image": None, "width": width, "height": height, "frame": "resize",
        "prompt": prompt, "reference": "<box:0>", "objects": [{"box": box, "label": None}], "meta": {},
        "prediction": prediction, "prediction_text": prediction, "prediction_objects": [],
    }


def _box(value, where: str) -> list[float]:
    if not (isinstance(value, (list, tuple)) and len(value) == 4):
        raise ValueError(f"{where}: expected a box of 4 numbers, got {value!r}")
    try:
        return [float(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"{where}: expected a box of 4 numbers, got {value!r}") from None


def from_lmms_samples(path: str | Path) -> list[dict]:
    """Rows of an lmms-eval `refcoco_bbox_rec` samples log (see the module docstring)."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            sample = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: invalid JSON ({err.msg})") from err
        data = next((v for k, v in sample.items() if k.startswith("refcoco_")), None) if isinstance(sample, dict) else None
        if isinstance(data, str):  # logged as the str() of a dict: a Python literal, read without evaluating code
            try:
                data = ast.literal_eval(data)
            except (ValueError, SyntaxError):
                data = None
        if not isinstance(data, dict) or "bbox" not in data:
            raise ValueError(f"{where}: not a refcoco_bbox_rec sample (no refcoco_* metric with a 'bbox')")
        answer = sample.get("filtered_resps", sample.get("resps"))
        while isinstance(answer, list) and answer:
            answer = answer[0]
        if not isinstance(answer, str):
            raise ValueError(f"{where}: field 'filtered_resps': no raw answer")
        row_id = str(data.get("ann_id", sample.get("doc_id", n)))
        rows.append(_row(f"{row_id}-{sample.get('doc_id', n)}", str(sample.get("input", "")), answer,
                         _box(data["bbox"], f"{where}: bbox"), 1, 1))
    return rows


def from_vlmevalkit(path: str | Path) -> list[dict]:
    """Rows of a VLMEvalKit RefCOCO prediction file in TSV, CSV or JSON lines (see the module docstring)."""
    path = Path(path)
    if path.suffix == ".xlsx":
        raise ValueError(f"{path}: open VLMEvalKit's .xlsx and save it as TSV (or CSV) to re-score it")
    if path.suffix in (".jsonl", ".json"):
        lines = [(f"{path}:{n}", json.loads(t)) for n, t in enumerate(path.read_text().splitlines(), 1) if t.strip()]
    else:
        csv.field_size_limit(sys.maxsize)
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ",")
            lines = [(f"{path}:{n}", row) for n, row in enumerate(reader, start=2)]
    rows = []
    for where, r in lines:
        try:
            width, height = int(float(r["width"])), int(float(r["height"]))
            if width <= 0 or height <= 0:
                raise ValueError
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where}: fields 'width' and 'height' (the image size) are needed") from None
        if "prediction" not in r:
            raise ValueError(f"{where}: no field 'prediction'")
        if all(r.get(k) not in (None, "") for k in _PIXELS):
            box = _box([r[k] for k in _PIXELS], f"{where}: bbox_x1..bbox_y2")
        else:
            answer = r.get("answer")
            try:
                fractions = _box(json.loads(answer) if isinstance(answer, str) else answer, f"{where}: answer")
            except json.JSONDecodeError:
                raise ValueError(f"{where}: answer: expected [x1, y1, x2, y2], got {answer!r}") from None
            box = [fractions[0] * width, fractions[1] * height, fractions[2] * width, fractions[3] * height]
        rows.append(_row(str(r.get("index", where)), str(r.get("question", "")), str(r["prediction"] or ""), box,
                         width, height))
    return rows


PREDICTION_FORMATS: dict[str, Callable[[str | Path], list[dict]]] = {
    "groundlm": read_predictions,
    "lmms_samples": from_lmms_samples,
    "vlmevalkit": from_vlmevalkit,
}


def read_prediction_rows(path: str | Path, fmt: str = "groundlm") -> list[dict]:
    """The prediction rows of `path` written by the tool `fmt`; a clear error for an unknown format."""
    if fmt not in PREDICTION_FORMATS:
        raise ValueError(f"unknown predictions format {fmt!r}; choose one of {', '.join(PREDICTION_FORMATS)}")
    return PREDICTION_FORMATS[fmt](path)


__all__ = ["PREDICTION_FORMATS", "from_lmms_samples", "from_vlmevalkit", "read_prediction_rows"]

"""VLMEvalKit's RefCOCO scorer gives groundlm's VLMEvalKit model class the score `groundlm eval` gives
(`make test-lmms`, after check_lmms.py).

Runs in `.venv-lmms`, where VLMEvalKit is installed as `ms-vlmeval` (ModelScope's package of it):
1. the model: WORKDIR/train/model (trained by check_lmms.py) or `--model DIR`;
2. the data: the ShapesWorld referring expressions of check_lmms.py (a third widened, a third taller) written as
   VLMEvalKit's RefCOCO TSV: `index`, `image` (base64), `question` (its prompt, the expression in <ref></ref>),
   `answer` ([x1, y1, x2, y2] in [0, 1]), `category`, `width`, `height`, `bbox_x1..bbox_y2` (pixels);
3. `GroundLMVLM.generate(message, dataset="RefCOCO")`, i.e. VLMEvalKit's own `BaseModel.generate` (message
   normalisation) calling groundlm's `generate_inner`, with the message VLMEvalKit builds for an image
   benchmark (the image path, then the question);
4. each answer scored by `vlmeval.dataset.refcoco.RefCOCODataset`'s own parse, scale guess, ground-truth reader
   and IoU (hit when IoU >= 0.5, its IOU_THRESHOLD);
5. `groundlm data import refcoco-vlmevalkit` of the TSV and `groundlm eval --benchmark records`;
6. on every row the box VLMEvalKit read must be groundlm's as written, its IoU groundlm's (and so the hit);
   Precision@1 and mean IoU must be equal.
Exit codes: 0 equal, 1 a difference or a failure, 77 skipped (VLMEvalKit not importable here).
"""

from __future__ import annotations

import argparse
import base64
import csv
import io
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from check_lmms import MAX_NEW_TOKENS, REC_PROMPT, groundlm_cli, log, reshaped, row_differences  # noqa: E402

QUESTION = "Please provide the bounding box coordinate of the region this sentence describes: <ref>{}</ref>"


def write_tsv(workdir: Path, scenes: int) -> tuple[Path, list[dict]]:
    """VLMEvalKit RefCOCO rows (and their images as files, which VLMEvalKit passes to models as paths)."""
    from PIL import Image

    from groundlm.data.shapes import ShapesConfig, write_shapes
    from groundlm.records import read_jsonl

    shapes = workdir / "shapes"
    records = read_jsonl(write_shapes(shapes, scenes, "val", tasks=("refer",), config=ShapesConfig(image_size=64),
                                      progress=False))
    images = workdir / "vlmevalkit-images"
    images.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, record in enumerate(records):
        image, (x1, y1, x2, y2) = reshaped(Image.open(shapes / record.image).convert("RGB"), record.objects[0].box, n % 3)
        path = images / f"{n}.png"
        image.save(path)
        png = io.BytesIO()
        image.save(png, format="PNG")
        w, h = image.size
        rows.append({
            "index": str(n), "image": base64.b64encode(png.getvalue()).decode(),
            "question": QUESTION.format(record.meta["expression"]),
            "answer": f"[{x1 / w:.6f}, {y1 / h:.6f}, {x2 / w:.6f}, {y2 / h:.6f}]",
            "category": "RefCOCO val", "width": w, "height": h,
            "bbox_x1": x1, "bbox_y1": y1, "bbox_x2": x2, "bbox_y2": y2, "image_path": str(path),
        })
    tsv = workdir / "RefCOCO_shapes.tsv"
    with open(tsv, "w", newline="") as f:
        columns = [c for c in rows[0] if c != "image_path"]
        writer = csv.DictWriter(f, fieldnames=columns, delimiter="\t", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    log(f"wrote {len(rows)} VLMEvalKit RefCOCO rows to {tsv}")
    return tsv, rows


def vlmevalkit_hits(model: Path, rows: list[dict], max_new_tokens: int = MAX_NEW_TOKENS) -> dict[str, tuple]:
    """Each row's (hit, answer, IoU, box read: fractions of the image or None) under VLMEvalKit's RefCOCO
    scorer, the answers from GroundLMVLM."""
    import pandas as pd
    from vlmeval.dataset.refcoco import RefCOCODataset

    from groundlm.integrations.vlmevalkit import GroundLMVLM

    vlm = GroundLMVLM(model_path=str(model), max_new_tokens=max_new_tokens, rec_prompt=REC_PROMPT)
    out = {}
    for row in rows:
        message = [{"type": "image", "value": row["image_path"]}, {"type": "text", "value": row["question"]}]
        answer = vlm.generate(message, dataset="RefCOCO")  # VLMEvalKit's BaseModel.generate → generate_inner
        meta = pd.Series(row)
        gt = RefCOCODataset._extract_gt_bbox(meta)
        parsed = RefCOCODataset._parse_prediction(answer)
        pred = None if parsed is None else RefCOCODataset._to_absolute(parsed, float(row["width"]), float(row["height"]))
        iou = 0.0 if pred is None or gt is None else float(RefCOCODataset._compute_iou(pred, gt))
        w, h = float(row["width"]), float(row["height"])
        read = None if pred is None else [pred[0] / w, pred[1] / h, pred[2] / w, pred[3] / h]
        out[row["index"]] = (int(iou >= RefCOCODataset.IOU_THRESHOLD), answer, iou, read)
    return out


def groundlm_eval(model: Path, tsv: Path, workdir: Path, timeout: float,
                  max_new_tokens: int = MAX_NEW_TOKENS) -> tuple[dict, list[dict]]:
    """`groundlm data import refcoco-vlmevalkit` of the TSV and `groundlm eval`: its refer metrics and rows."""
    data = workdir / "groundlm-vlmevalkit-data"
    groundlm_cli("data", "import", "refcoco-vlmevalkit", str(tsv), "--out", str(data), "--force", timeout=600)
    out = workdir / "groundlm-vlmevalkit-eval"
    groundlm_cli("eval", str(model), "--benchmark", "records", "--data", str(data / "records.jsonl"), "--out",
                 str(out), "--convention", "default", "--batch-size", "8", "--max-new-tokens", str(max_new_tokens),
                 timeout=timeout)
    ours = json.loads((out / "metrics.json").read_text())["refer"]
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines() if line.strip()]
    return ours, predictions


def scores(theirs: dict[str, tuple]) -> tuple[float, float]:
    """VLMEvalKit's Precision@1 (in %) and mean IoU of `vlmevalkit_hits`' rows."""
    precision = 100 * sum(hit for hit, _, _, _ in theirs.values()) / len(theirs)
    return precision, sum(iou for _, _, iou, _ in theirs.values()) / len(theirs)


def compare(theirs: dict[str, tuple], ours: dict, predictions: list[dict], label: str) -> list[str]:
    """The differences between VLMEvalKit's scores and groundlm eval's (empty when they agree): the same rows,
    on every row the same box read, IoU and hit (check_lmms.row_differences), the same Precision@1 and mean IoU."""
    precision, mean_iou = scores(theirs)
    log(f"{label}: VLMEvalKit scorer: Precision@1 {precision:.2f}, mean IoU {mean_iou:.4f} over {len(theirs)} "
        f"rows; groundlm eval accuracy {100 * ours['accuracy']:.2f} ({ours['hits']}/{ours['total']}), mean IoU "
        f"{ours['mean_iou']:.4f}")
    problems = []
    if len(predictions) != len(theirs):
        problems.append(f"{label}: groundlm scored {len(predictions)} rows, VLMEvalKit {len(theirs)}")
    for row in predictions:
        _, answer, iou, read = theirs[row["meta"]["index"]]
        # VLMEvalKit reads no box where neither its regex nor its number fallback finds four numbers; both
        # tools' harness answers then write none, which lmms-eval reads as [0, 0, 0, 0]
        found = row_differences(read if read is not None else [0.0, 0.0, 0.0, 0.0], row, iou)
        problems += [f"{label}: row {row['id']}: {p} (VLMEvalKit was answered {answer!r})" for p in found]
    if abs(precision - 100 * ours["accuracy"]) > 1e-9:
        problems.append(f"{label}: Precision@1 {precision} differs from groundlm's accuracy {100 * ours['accuracy']}")
    if abs(mean_iou - ours["mean_iou"]) > 1e-3:
        problems.append(f"{label}: mean IoU {mean_iou} differs from groundlm's {ours['mean_iou']}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("runs/test-lmms"))
    parser.add_argument("--model", type=Path, help="a groundlm model directory (default: WORKDIR/train/model)")
    parser.add_argument("--scenes", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=1200)
    args = parser.parse_args()
    try:
        import vlmeval.vlm.base  # noqa: F401
    except ImportError as err:
        log(f"SKIP: VLMEvalKit cannot be imported in {sys.executable}: {err}")
        return 77
    workdir = args.workdir.resolve()
    model = (args.model or workdir / "train" / "model").resolve()
    if not (model / "config.json").is_file():
        log(f"FAIL: no model at {model} (run check_lmms.py first, or pass --model)")
        return 1
    tsv, rows = write_tsv(workdir, args.scenes)
    theirs = vlmevalkit_hits(model, rows)
    ours, predictions = groundlm_eval(model, tsv, workdir, args.timeout)
    problems = compare(theirs, ours, predictions, "groundlm model")
    for p in problems:
        log("FAIL: " + p)
    if problems:
        return 1
    log("OK: VLMEvalKit's RefCOCO scorer gives GroundLMVLM's answers groundlm eval's scores on every row")
    return 0


if __name__ == "__main__":
    sys.exit(main())

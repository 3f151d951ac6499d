"""Running a model over a benchmark: batched generation → `predictions.jsonl` → metrics → report.

A benchmark is a records file whose first user turn is the prompt and whose first assistant turn is the
reference answer (`<box:i>` slots refer to the record's objects). `shapes` writes the fixed ShapesWorld test
split and evaluates every task on it. Predictions are appended batch by batch, so an interrupted run loses
at most one batch and `resume=True` continues where it stopped. Under torchrun the records are shared out
over the processes and rank 0 writes the one predictions file (`shards.py`).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..data import importers
from ..data.shapes import write_shapes
from ..geometry import Frame
from ..images import load_image
from ..inference import GroundLM
from ..records import Record, read_jsonl
from ..tasks import record_task
from .rec import DEFAULT, MINIGPT_V2, IoUConvention
from .report import write_report
from .scoring import score_predictions
from .shards import Shards, sharded


@dataclass
class EvalConfig:
    """What to evaluate and how."""

    benchmark: str = "shapes"
    data: Path | None = None  # records.jsonl for `records`
    images: Path | None = None  # image root (default: the records file's folder)
    scenes: int = 100  # ShapesWorld test scenes (each gives one record per task)
    limit: int | None = None
    batch_size: int = 16
    max_new_tokens: int = 48
    resume: bool = False
    convention: str = "default"  # "default" (IoU >= 0.5) | "minigptv2" (+1 pixel, IoU > 0.5)


CONVENTIONS: dict[str, IoUConvention] = {"default": DEFAULT, "minigptv2": MINIGPT_V2}


def iou_convention(name: str) -> IoUConvention:
    """The REC convention called `name`: `default` (lmms-eval) or `minigptv2`."""
    if name not in CONVENTIONS:
        raise ValueError(f"unknown IoU convention {name!r}; choose 'default' or 'minigptv2'")
    return CONVENTIONS[name]


def _shapes_records(config: EvalConfig, out: Path) -> tuple[list[Record], Path]:
    path = out / "data" / "records.jsonl"
    if not path.exists():
        write_shapes(out / "data", config.scenes, "test", progress=False)
    return read_jsonl(path), path.parent


def _from_file(read: Callable[[Path], list[Record]]) -> Callable[[EvalConfig, Path], tuple[list[Record], Path]]:
    """A benchmark read from `config.data`; images under `config.images`, else beside the data file."""

    def records(config: EvalConfig, out: Path) -> tuple[list[Record], Path]:
        if config.data is None:
            raise ValueError(f"--data is required for the {config.benchmark!r} benchmark")
        return read(config.data), Path(config.images or Path(config.data).parent)

    return records


# shapes: the fixed ShapesWorld test split, every task. The others read a source file with an importer:
# refcoco (MiniGPT-v2's RefCOCO/+/g JSON), pope (POPE question file), coco_captions (captions_*.json),
# records (any records.jsonl whose records carry a task).
BENCHMARKS: dict[str, Callable[[EvalConfig, Path], tuple[list[Record], Path]]] = {
    "shapes": _shapes_records,
    "refcoco": _from_file(importers.from_minigptv2_refcoco),
    "pope": _from_file(importers.from_pope),
    "coco_captions": _from_file(importers.from_coco_captions),
    "records": _from_file(read_jsonl),
}


def benchmark_records(config: EvalConfig, out: Path) -> tuple[list[Record], Path]:
    """The records of the benchmark and the folder their image paths are relative to."""
    if config.benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {config.benchmark!r}; choose one of {tuple(BENCHMARKS)}")
    return BENCHMARKS[config.benchmark](config, out)


def _prompt_and_reference(record: Record) -> tuple[str, str]:
    user = next((m.content for m in record.messages if m.role == "user"), None)
    if user is None:
        raise ValueError(f"record {record.id!r} has no user turn to ask")
    answer = next((m.content for m in record.messages if m.role == "assistant"), "")
    return user, answer


def _read_rows(path: Path) -> dict[str, dict]:
    """The complete rows of a predictions file by id; a line cut by a crash mid-write is left out."""
    rows: dict[str, dict] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            rows[row["id"]] = row
        except (json.JSONDecodeError, KeyError, TypeError):
            continue  # predict that record again
    return rows


def _write_rows(path: Path, rows: Iterable[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
    os.replace(tmp, path)


def record_question(record: Record) -> tuple[str, list]:
    """The prompt a record asks and the boxes its `<box:i>` slots point at (every object's, in pixels)."""
    return _prompt_and_reference(record)[0], [o.box for o in record.objects]


def prediction_row(record: Record, image, answer, frame_mode: str) -> dict:
    """The row of `predictions.jsonl` for `answer` to `record`'s question: what scoring needs (task_metrics.py)."""
    prompt, reference = _prompt_and_reference(record)
    return {
        "id": record.id, "task": record_task(record), "image": record.image,
        "width": image.width if image else None, "height": image.height if image else None,
        "frame": frame_mode, "prompt": prompt, "reference": reference,
        "objects": [{"box": list(o.box), "label": o.label} for o in record.objects],
        "meta": record.meta, "prediction": answer.text, "prediction_text": answer.plain_text,
        "prediction_objects": [o.to_dict() for o in answer.objects],
    }


def predict(
    lm: GroundLM, records: Sequence[Record], image_root: Path, path: Path, config: EvalConfig,
    shards: Shards = Shards(),
) -> list[dict]:
    """Generate an answer per record in batches, appending rows to this process's file (`path` itself when
    one process runs, else its part file, `shards.py`); returns the rows this process holds, in record order.

    With `config.resume` the rows already written (by this process's share of an interrupted run) are kept
    and only the records no process holds are predicted."""
    own = shards.own_file(path)
    done: dict[str, dict] = {}
    earlier = shards.files_to_read(path)
    if config.resume:
        for source in earlier:
            done.update(_read_rows(source))
        # one clean file (no cut line) to append to; the files taken over are now in it
        _write_rows(own, done.values())
        for source in earlier:
            if source != own:
                source.unlink()
    else:
        for source in earlier:
            source.unlink()
    finished = shards.union(set(done))
    todo = [r for r in records if r.id not in finished]
    mine = shards.deal([todo[start : start + config.batch_size] for start in range(0, len(todo), config.batch_size)])
    total = sum(len(b) for b in mine) if shards.world > 1 else len(records)
    if shards.world > 1:
        print(f"eval rank {shards.rank} of {shards.world}: {total} records to predict, {len(done)} taken over",
              file=sys.stderr, flush=True)
    frame_mode = lm.processor.config.frame
    with open(own, "a") as f, tqdm(total=total, initial=total - sum(len(b) for b in mine), desc="eval",
                                    unit="sample", disable=not shards.main) as bar:
        for batch in mine:
            images = [load_image(image_root / r.image) if r.image else None for r in batch]
            prompts, boxes = map(list, zip(*(record_question(r) for r in batch), strict=True))
            answers = lm.ask_many(images, prompts, boxes=boxes, max_new_tokens=config.max_new_tokens,
                                  batch_size=config.batch_size)
            for record, image, answer in zip(batch, images, answers, strict=True):
                row = prediction_row(record, image, answer, frame_mode)
                done[record.id] = row
                f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
            bar.update(len(batch))
    return [done[r.id] for r in records if r.id in done]


def _merge(rows: list[dict], records: Sequence[Record], path: Path, shards: Shards) -> None:
    """Gather every rank's rows and write the one `path` in record order (rank 0), then drop the part files."""
    gathered = shards.gather(rows)
    if shards.main:
        by_id = {row["id"]: row for row in gathered}
        _write_rows(path, (by_id[r.id] for r in records if r.id in by_id))
    shards.barrier()  # `path` holds every row before any part file goes
    shards.own_file(path).unlink(missing_ok=True)


def evaluate(lm: GroundLM, out: str | Path, config: EvalConfig) -> dict:
    """Run the benchmark, write `predictions.jsonl`, `metrics.json`, `report.md` and example pictures.

    Under torchrun every process runs this: each predicts its share, rank 0 writes the files (shards.py); every
    process returns the metrics."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "predictions.jsonl"
    with sharded() as shards:
        if shards.main:  # rank 0 writes a generated benchmark (shapes) before the others read it
            records, image_root = benchmark_records(config, out)
        shards.barrier()
        if not shards.main:
            records, image_root = benchmark_records(config, out)
        if config.limit is not None:
            records = records[: config.limit]
        rows = predict(lm, records, image_root, path, config, shards)
        if shards.world == 1:
            return rescore(path, out, image_root=image_root, convention=config.convention)
        _merge(rows, records, path, shards)
        metrics = rescore(path, out, image_root=image_root, convention=config.convention) if shards.main else None
        return shards.broadcast(metrics)


def read_predictions(path: str | Path) -> list[dict]:
    """Prediction rows of a `predictions.jsonl`, with an error naming the line of a broken row."""
    rows = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: invalid JSON ({err.msg})") from err
    return rows


def reread(
    rows: list[dict], codec: str, *, input_size: int = 224, reading: str = "codec", scale: float = 1000.0,
    where: str = "predictions",
) -> list[dict]:
    """`rows` with each raw answer (`prediction`) read again in the location format named `codec`: its objects
    (boxes mapped to the row's image through its `frame`) and its plain text, so another model's raw outputs are
    scored in their own format. `input_size` is the model's input side, for formats in pixels of it; `reading`
    and `scale` choose how answers are read (`readings.py`: the codec's parse, MiniGPT-v2's strict rule, or
    lenient free-text boxes on a grid of `scale`)."""
    from ..location import make_codec
    from ..processor import ProcessorConfig
    from .readings import reader as make_reader

    codec_ = make_codec(ProcessorConfig(location_codec=codec, image_size=input_size))
    read = make_reader(reading, codec, codec_, scale)
    out = []
    for n, row in enumerate(rows, start=1):
        text = row.get("prediction")
        if not isinstance(text, str):
            raise ValueError(f"{where}: row {n} ({row.get('id')!r}): no raw answer in field 'prediction'")
        width, height = row.get("width"), row.get("height")
        frame = Frame(width, height, row.get("frame") or "resize") if width and height else None
        objects = read(text, (width, height) if width and height else None)
        for obj in objects:
            if obj.box is None:  # a codec's box in the model's frame (tool readings give original pixels)
                obj.box = tuple(frame.denormalize(obj.box_norm)) if frame is not None else None
        out.append({**row, "prediction_text": codec_.strip(text), "prediction_objects": [o.to_dict() for o in objects]})
    return out


def rescore(
    predictions: str | Path, out: str | Path, *, image_root: Path | None = None, convention: str = "default",
    codec: str | None = None, input_size: int = 224, reading: str = "codec", scale: float = 1000.0,
    predictions_format: str = "groundlm",
) -> dict:
    """Score an existing predictions file (no model needed) and write `metrics.json` and `report.md`.

    With `codec`, every raw answer is read again in that location format first (`reread`, with `reading`).
    `predictions_format` names the tool that wrote the file (`tool_logs.PREDICTION_FORMATS`); another tool's
    raw answers are always read again, with `reading` (its own: `lmms_eval`, `vlmevalkit`) or a `codec`."""
    from .readings import CODEC_FREE
    from .tool_logs import read_prediction_rows

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_prediction_rows(predictions, predictions_format)
    if not rows:
        raise ValueError(f"{predictions} holds no predictions")
    if codec is None and reading in CODEC_FREE:
        codec = "text"  # any codec: the reading does not use it
    if predictions_format != "groundlm" and codec is None:
        raise ValueError(f"{predictions_format} predictions hold raw answers only: give --reading "
                         f"{' or '.join(sorted(CODEC_FREE))} (the tools' own parsers) or the --codec they are written in")
    if codec is not None:
        rows = reread(rows, codec, input_size=input_size, reading=reading, scale=scale, where=str(predictions))
    elif reading != "codec":
        raise ValueError(f"--reading {reading} reads raw answers again: give the --codec they are written in")
    metrics = score_predictions(rows, convention=iou_convention(convention))
    metrics_path = out / "metrics.json"
    tmp = metrics_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, metrics_path)
    write_report(rows, metrics, out, image_root=image_root)
    return metrics

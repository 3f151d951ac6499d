"""lmms-eval scores a groundlm model on a local RefCOCO-layout task exactly as `groundlm eval` does
(`make test-lmms`).

Runs in `.venv-lmms` (lmms-eval 0.7 and groundlm installed with `-e .[lmms]`; see the Makefile):
1. the model: the small ShapesWorld REC model of shapes_rec.yaml (LLaVA-1.5's pad frame, text boxes), trained
   with `groundlm train` into WORKDIR/train and reused while the recipe is unchanged, or `--model DIR`;
2. the data: ShapesWorld referring expressions (val split) written as a parquet file with lmms-lab/RefCOCO's
   columns (`question_id, image, question, answer, segmentation, bbox, iscrowd, file_name`); a third of the
   scenes are widened and a third made taller, so LLaVA's padded square differs from the original image;
3. a local lmms-eval task: a yaml that includes lmms-eval's own `refcoco_bbox_rec` template (its
   `process_docs`, prompt, parser and metrics, from the installed package) and points `dataset_path: parquet`
   at the file;
4. `lmms-eval --model groundlm` (found through groundlm's entry point) with `--log_samples`, in one process
   and, with `--processes 2`, again under `torchrun` (the evaluator shards the documents per rank and gathers
   them over gloo; every rank must run and the scores must not change);
5. `groundlm data import refcoco-lmms` of the same parquet file and `groundlm eval --benchmark records
   --convention default` (lmms-eval's rule: continuous IoU, hit when IoU >= 0.5);
6. Acc@0.5 must be equal, the mean IoU equal within the rounding of the written boxes (4 decimals); on every row
   the box lmms-eval parsed must be groundlm's as written, lmms-eval's IoU of it groundlm's, and the hit the
   same (`row_differences`, which check_vlmevalkit.py and check_families.py use too); `groundlm eval
   --predictions-format lmms_samples --reading lmms_eval` of lmms-eval's own samples log must give lmms-eval's
   Acc@0.5 and mean IoU;
7. multiple choice (`loglikelihood`): a local `output_type: multiple_choice` task of ShapesWorld colour questions
   with four choices; lmms-eval's `acc` and each row's pick must equal an independent scoring with the groundlm
   model (the highest summed log-probability of a choice, one plain forward pass each; shapes_mc.py).
Exit codes: 0 equal, 1 a difference or a failure, 77 skipped (lmms-eval not importable here).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import shapes_mc  # beside this file (the script's directory is on sys.path)

HERE = Path(__file__).resolve().parent
RECIPE = HERE / "shapes_rec.yaml"
TASK = "groundlm_shapes_refcoco_bbox_rec"
REC_PROMPT = "[refer] give me the location of {}"  # the ShapesWorld model's instruction (MiniGPT-v2's)
MAX_NEW_TOKENS = 48  # groundlm eval's default, so both decode the same answers
# How far one row's IoU under a tool may be from groundlm eval's: the tools read boxes written with 4 decimals,
# which move each corner by at most 5e-5 of a side; against ShapesWorld targets, at least a tenth of a side wide,
# that is about 4 x 5e-5 / 0.1 = 2e-3 of IoU at most (the written box itself is checked exactly, row_differences).
IOU_ROUNDING = 5e-3


def log(message: str) -> None:
    print(f"[check_lmms] {message}", flush=True)


def run(cmd: list[str], timeout: float, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `cmd`, failing with its output when it fails or outlives `timeout` seconds."""
    log("$ " + " ".join(cmd))
    try:
        done = subprocess.run(cmd, timeout=timeout, capture_output=True, text=True, env=env)
    except subprocess.TimeoutExpired as err:
        raise SystemExit(f"FAIL: {cmd[0]} did not finish within {timeout:.0f} s") from err
    if done.returncode != 0:
        raise SystemExit(
            f"FAIL: {' '.join(cmd)} exited {done.returncode}:\n{done.stdout[-3000:]}{done.stderr[-4000:]}"
        )
    return done


def groundlm_cli(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "groundlm", *args], timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trained_model(recipe: Path, run_dir: Path, timeout: float, depends_on: bytes = b"") -> Path:
    """Train `recipe` into `run_dir` (skipped when that run exists for this very recipe and `depends_on`, the
    bytes of whatever else decides the result, e.g. how its starting checkpoint is built)."""
    digest = hashlib.sha256(recipe.read_bytes() + depends_on).hexdigest()
    stamp = run_dir / "recipe.sha256"
    if (run_dir / "model" / "config.json").is_file() and stamp.is_file() and stamp.read_text() == digest:
        log(f"reusing the model trained from {recipe.name} in {run_dir / 'model'}")
        return run_dir / "model"
    if run_dir.exists():
        subprocess.run(["rm", "-rf", str(run_dir)], check=True)
    started = time.monotonic()
    groundlm_cli("train", str(recipe), "--out", str(run_dir), timeout=timeout)
    stamp.write_text(digest)
    log(f"trained {recipe.name} in {time.monotonic() - started:.0f} s")
    return run_dir / "model"


# ---- the data -----------------------------------------------------------------------------------------------
def reshaped(image, box, how: int):
    """The scene as is (0), widened (1) or made taller (2) on a canvas of its background colour, and its box."""
    from PIL import Image

    extra = 24
    dx, dy = {0: (0, 0), 1: (extra, 0), 2: (0, extra)}[how]
    canvas = Image.new("RGB", (image.width + dx, image.height + dy), image.getpixel((0, 0)))
    canvas.paste(image, (dx // 2, dy // 2))
    x1, y1, x2, y2 = box
    return canvas, (x1 + dx // 2, y1 + dy // 2, x2 + dx // 2, y2 + dy // 2)


def write_parquet(workdir: Path, scenes: int) -> Path:
    """ShapesWorld referring expressions as lmms-lab/RefCOCO rows (COCO [x, y, w, h] pixel boxes)."""
    import io

    from datasets import Dataset, Features, Image, Sequence, Value
    from PIL import Image as PILImage

    from groundlm.data.shapes import ShapesConfig, write_shapes
    from groundlm.records import read_jsonl

    shapes = workdir / "shapes"
    records = read_jsonl(write_shapes(shapes, scenes, "val", tasks=("refer",), config=ShapesConfig(image_size=64),
                                      progress=False))
    rows = {k: [] for k in ("question_id", "image", "question", "answer", "segmentation", "bbox", "iscrowd", "file_name")}
    for n, record in enumerate(records):
        target = record.objects[0]
        image, (x1, y1, x2, y2) = reshaped(PILImage.open(shapes / record.image).convert("RGB"), target.box, n % 3)
        png = io.BytesIO()
        image.save(png, format="PNG")
        rows["question_id"].append(record.id)
        rows["image"].append({"bytes": png.getvalue(), "path": None})
        rows["question"].append(record.meta["expression"])
        rows["answer"].append([record.meta["expression"]])
        rows["segmentation"].append([x1, y1, x2, y1, x2, y2, x1, y2])
        rows["bbox"].append([x1, y1, x2 - x1, y2 - y1])
        rows["iscrowd"].append(0)
        rows["file_name"].append(f"{record.id}.png")
    features = Features({
        "question_id": Value("string"), "image": Image(), "question": Value("string"),
        "answer": Sequence(Value("string")), "segmentation": Sequence(Value("float32")),
        "bbox": Sequence(Value("float32")), "iscrowd": Value("int8"), "file_name": Value("string"),
    })
    path = workdir / "refcoco_shapes.parquet"
    Dataset.from_dict(rows, features=features).to_parquet(str(path))
    log(f"wrote {len(records)} RefCOCO-layout rows to {path}")
    return path


def write_task(workdir: Path, parquet: Path) -> Path:
    """A local lmms-eval task on `parquet` that takes everything else from lmms-eval's refcoco_bbox_rec."""
    import lmms_eval

    template = Path(lmms_eval.__file__).parent / "tasks" / "refcoco" / "_default_template_bbox_rec_yaml"
    if not template.is_file():
        raise SystemExit(f"FAIL: lmms-eval has no refcoco_bbox_rec template at {template}")
    tasks = workdir / "tasks"
    tasks.mkdir(parents=True, exist_ok=True)
    (tasks / f"{TASK}.yaml").write_text(
        f"task: {TASK}\n"
        f"include: {template}\n"
        "dataset_path: parquet\n"
        "dataset_kwargs:\n"
        f"  data_files:\n    test: {parquet}\n"
        "test_split: test\n"
    )
    return tasks


# ---- the two evaluations ------------------------------------------------------------------------------------
def lmms_eval_run(model: Path, tasks: Path, out: Path, processes: int, timeout: float,
                  max_new_tokens: int = MAX_NEW_TOKENS) -> tuple[dict, dict]:
    """Run lmms-eval; return its metrics of the task and its per-sample predictions by question id."""
    if out.exists():
        subprocess.run(["rm", "-rf", str(out)], check=True)
    model_args = (f"pretrained={model},device=cpu,batch_size=8,max_new_tokens={max_new_tokens},"
                  f"rec_prompt={REC_PROMPT}")
    args = ["--model", "groundlm", "--model_args", model_args, "--tasks", TASK, "--include_path", str(tasks),
            "--batch_size", "8", "--output_path", str(out), "--log_samples"]
    if processes > 1:
        # torchrun (`accelerate launch --cpu --num_processes N` starts a single process on a CPU-only machine)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
               str(free_port()), "-m", "lmms_eval", *args]
    else:
        cmd = [sys.executable, "-m", "lmms_eval", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1" if processes > 1 else os.environ.get("OMP_NUM_THREADS", "2"),
           "HF_DATASETS_CACHE": str(out.parent / "hf_datasets_cache")}
    started = time.monotonic()
    done = run(cmd, timeout, env=env)
    output = done.stdout + done.stderr
    for rank in range(processes):  # the evaluator logs each rank it runs on
        if f"Running on rank {rank}" not in output:
            raise SystemExit(f"FAIL: lmms-eval never ran on rank {rank} of {processes}:\n{output[-3000:]}")
    log(f"lmms-eval ({processes} process{'es' if processes > 1 else ''}) took {time.monotonic() - started:.0f} s")
    results = sorted(out.rglob("*results*.json"), key=lambda p: p.stat().st_mtime)
    samples = sorted(out.rglob(f"*samples_{TASK}*.jsonl"), key=lambda p: p.stat().st_mtime)
    if not results or not samples:
        raise SystemExit(f"FAIL: lmms-eval wrote no results or samples under {out}")
    metrics = json.loads(results[-1].read_text())["results"][TASK]
    by_question = {}
    for line in samples[-1].read_text().splitlines():
        if line.strip():
            sample = json.loads(line)
            data = sample["refcoco_ACC@0.5"]  # the metric's per-document value: refcoco_bbox_rec's dict
            if isinstance(data, str):  # logged as its str() when not JSON-serialisable: a Python literal
                data = ast.literal_eval(data)
            by_question[data["ann_id"]] = {**sample, "refcoco_ACC@0.5": data}
    return metrics, {**by_question, "__file__": samples[-1]}


def rescored_log(samples: Path, workdir: Path) -> dict:
    """groundlm's re-scoring of lmms-eval's own samples log with lmms-eval's reading."""
    out = workdir / "groundlm-rescored-log"
    groundlm_cli("eval", "--predictions", str(samples), "--predictions-format", "lmms_samples", "--reading",
                 "lmms_eval", "--out", str(out), timeout=600)
    return json.loads((out / "metrics.json").read_text())["refer"]


def groundlm_run(model: Path, parquet: Path, workdir: Path, timeout: float,
                 max_new_tokens: int = MAX_NEW_TOKENS) -> tuple[dict, list[dict]]:
    """Import the parquet file into records and evaluate with `groundlm eval`; return metrics and rows."""
    data = workdir / "groundlm-data"
    groundlm_cli("data", "import", "refcoco-lmms", str(parquet), "--out", str(data), "--force", timeout=600)
    out = workdir / "groundlm-eval"
    groundlm_cli("eval", str(model), "--benchmark", "records", "--data", str(data / "records.jsonl"),
                 "--out", str(out), "--convention", "default", "--batch-size", "8",
                 "--max-new-tokens", str(max_new_tokens), timeout=timeout)
    metrics = json.loads((out / "metrics.json").read_text())
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines() if line.strip()]
    return metrics, rows


def compare(lmms: dict, samples: dict, ours: dict, rows: list[dict], label: str) -> list[str]:
    """The differences between lmms-eval's scores and groundlm's (empty when they agree)."""
    problems = []
    refer = ours["refer"]
    log_file = samples.pop("__file__")
    relog = rescored_log(log_file, log_file.parent)
    log(f"{label}: groundlm eval --predictions-format lmms_samples of that log: accuracy {relog['accuracy']:.4f}, "
        f"mean IoU {relog['mean_iou']:.4f}")
    if abs(relog["accuracy"] - lmms["refcoco_ACC@0.5,none"]) > 1e-12 or abs(relog["mean_iou"] - lmms["refcoco_IoU,none"]) > 1e-9:
        problems.append(f"{label}: re-scoring lmms-eval's log gives {relog}, lmms-eval {lmms}")
    acc_lmms, iou_lmms = lmms["refcoco_ACC@0.5,none"], lmms["refcoco_IoU,none"]
    log(f"{label}: lmms-eval Acc@0.5 {acc_lmms:.4f}, mean IoU {iou_lmms:.4f} over {len(samples)} rows; "
        f"groundlm eval accuracy {refer['accuracy']:.4f} ({refer['hits']}/{refer['total']}), mean IoU "
        f"{refer['mean_iou']:.4f}")
    if len(samples) != refer["total"]:
        problems.append(f"{label}: lmms-eval scored {len(samples)} rows, groundlm {refer['total']}")
    if abs(acc_lmms - refer["accuracy"]) > 1e-12:
        problems.append(f"{label}: Acc@0.5 differs: lmms-eval {acc_lmms} vs groundlm {refer['accuracy']}")
    if abs(iou_lmms - refer["mean_iou"]) > 1e-3:
        problems.append(f"{label}: mean IoU differs: lmms-eval {iou_lmms} vs groundlm {refer['mean_iou']}")
    for row in rows:
        sample = samples.get(row["meta"]["question_id"])
        if sample is None:
            problems.append(f"{label}: lmms-eval has no sample for {row['meta']['question_id']}")
            continue
        data = sample["refcoco_ACC@0.5"]
        w, h = row["width"], row["height"]
        target = row["objects"][0]["box"]
        expected = [v / s for v, s in zip(target, (w, h, w, h), strict=True)]
        if any(abs(a - b) > 1e-5 for a, b in zip(data["bbox"], expected, strict=True)):
            problems.append(f"{label}: row {row['id']}: lmms-eval's target {data['bbox']} is not {expected}")
        problems += [f"{label}: row {row['id']}: {p}" for p in row_differences(data["pred"], row)]
    return problems


def written_box(row: dict) -> list[float]:
    """groundlm eval's first box of a row as the harness writes it for the tools: fractions of the original
    image, clipped to [0, 1], `Harness.decimals` (4) digits; [0, 0, 0, 0] (what both tools' parsers fall back
    to) when the answer has no box."""
    objects = row["prediction_objects"]
    if not objects:
        return [0.0, 0.0, 0.0, 0.0]
    sides = (row["width"], row["height"], row["width"], row["height"])
    return [round(min(max(v / s, 0.0), 1.0), 4) for v, s in zip(objects[0]["box"], sides, strict=True)]


def row_iou(row: dict) -> float:
    """groundlm eval's continuous IoU of a row (its first box against the target; 0 without a box)."""
    from groundlm.geometry import box_iou

    objects = row["prediction_objects"]
    return box_iou(objects[0]["box"], row["objects"][0]["box"]) if objects else 0.0


def row_differences(pred: list[float], row: dict, iou: float | None = None) -> list[str]:
    """How a tool's reading of one row differs from groundlm eval's (empty when it agrees):
    - the box the tool parsed (`pred`, fractions of the image) is groundlm's box as written, exactly;
    - the tool's IoU (`iou`; by default lmms-eval's own `compute_iou` of `pred` and the target) is groundlm's
      `box_iou` of that written box, to float precision: the same score of the same box;
    - it is groundlm eval's IoU of the unrounded box within `IOU_ROUNDING`, and the hit (IoU >= 0.5) is the same."""
    from groundlm.evaluate.rec import is_hit
    from groundlm.geometry import box_iou

    out = []
    mine = written_box(row)
    if any(abs(a - b) > 1e-9 for a, b in zip(pred, mine, strict=True)):
        out.append(f"the tool read the box {list(pred)}, groundlm answered {mine} ({row['prediction']!r})")
    sides = (row["width"], row["height"], row["width"], row["height"])
    target = row["objects"][0]["box"]
    if iou is None:
        from lmms_eval.tasks.refcoco.utils_rec import compute_iou  # only lmms-eval's check imports lmms-eval

        iou = compute_iou(list(pred), [v / s for v, s in zip(target, sides, strict=True)])
    of_written = box_iou([v * s for v, s in zip(mine, sides, strict=True)], target)
    if abs(iou - of_written) > 1e-9:
        out.append(f"the tool's IoU {iou!r} of {list(pred)} is not groundlm's {of_written!r} of the same box")
    ours = row_iou(row)
    if abs(iou - ours) > IOU_ROUNDING:
        out.append(f"IoU {iou:.6f} under the tool, {ours:.6f} under groundlm eval ({row['prediction']!r})")
    if is_hit(iou) != is_hit(ours):
        out.append(f"hit {is_hit(iou)} under the tool, {is_hit(ours)} under groundlm eval ({row['prediction']!r})")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("runs/test-lmms"))
    parser.add_argument("--model", type=Path, help="a groundlm model directory (default: train the recipe)")
    parser.add_argument("--scenes", type=int, default=30, help="ShapesWorld val scenes (one expression each)")
    parser.add_argument("--processes", type=int, default=2, help="also run lmms-eval with this many processes")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--checks", default="rec,mc", help="which parts to run: rec (RefCOCO), mc (multiple choice)")
    args = parser.parse_args()
    checks = set(args.checks.split(","))
    if not checks or checks - {"rec", "mc"}:
        parser.error(f"--checks takes rec and/or mc, got {args.checks!r}")
    try:
        import lmms_eval  # noqa: F401
    except ImportError as err:
        log(f"SKIP: lmms-eval cannot be imported in {sys.executable}: {err}")
        return 77
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    model = args.model.resolve() if args.model else trained_model(RECIPE, workdir / "train", args.timeout)
    problems, passed = [], []
    if "rec" in checks:
        parquet = write_parquet(workdir, args.scenes)
        tasks = write_task(workdir, parquet)
        ours, rows = groundlm_run(model, parquet, workdir, args.timeout)
        lmms, samples = lmms_eval_run(model, tasks, workdir / "lmms-1", 1, args.timeout)
        found = compare(lmms, samples, ours, rows, "1 process")
        if args.processes > 1:
            lmms_n, samples_n = lmms_eval_run(model, tasks, workdir / f"lmms-{args.processes}", args.processes,
                                              args.timeout)
            found += compare(lmms_n, samples_n, ours, rows, f"{args.processes} processes")
        problems += found
        if not found:
            passed.append("lmms-eval's refcoco_bbox_rec scores equal groundlm eval's on every row")
    if "mc" in checks:
        found = shapes_mc.check(model, workdir, args.scenes, run, log, args.timeout)
        problems += found
        if not found:
            passed.append("lmms-eval's multiple-choice acc and every row's pick equal the independent argmax of "
                          "the summed log-probabilities")
    for p in problems:
        log("FAIL: " + p)
    for p in passed:
        log("OK: " + p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

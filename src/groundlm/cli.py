"""The `groundlm` command line (typer)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from .cli_curate import curate
from .cli_data import data_export, data_import, data_shard

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Grounded vision-language models.")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


@app.command("new-model")
def new_model_cmd(
    out: Path = typer.Argument(..., help="Directory to write the model into."),
    preset: str = typer.Option("tiny", help="Model size preset."),
    seed: int = typer.Option(0, help="Seed of the random weights."),
    force: bool = typer.Option(False, help="Overwrite a non-empty directory."),
) -> None:
    """Write a randomly initialised model (weights, config, tokenizer, processor) to OUT."""
    from .presets import PRESETS, new_model

    if preset not in PRESETS:
        _fail(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    if out.exists() and not out.is_dir():
        _fail(f"{out} is a file; a model is a directory")
    if out.exists() and any(out.iterdir()) and not force:
        _fail(f"{out} exists and is not empty (use --force to overwrite)")
    new_model(out, preset, seed=seed)
    typer.echo(f"wrote a random '{preset}' model to {out}")


DEVICE_HELP = "Where the model runs: auto (a CUDA GPU when there is one, else the CPU), cpu, cuda, cuda:N or mps."
DTYPE_HELP = "Weights' dtype: auto (the checkpoint's), float32, bfloat16 or float16."


def _check_placement(device: str, dtype: str) -> None:
    """Refuse an unusable --device / --dtype before anything is loaded, naming the option."""
    from .devices import PlacementError, resolve_device, resolve_dtype

    try:
        resolve_device(device)
        resolve_dtype(dtype)
    except PlacementError as err:
        _fail(f"--{err.option}: {err}")


def _parse_boxes(boxes: str | None) -> list[list[float]]:
    if not boxes:
        return []
    try:
        value = json.loads(boxes)
        if value and not isinstance(value[0], list):
            value = [value]
        if not all(isinstance(b, list) and len(b) == 4 for b in value):
            raise ValueError
        return [[float(v) for v in b] for b in value]
    except (ValueError, TypeError, json.JSONDecodeError):
        _fail(f"--boxes must be JSON like [x1,y1,x2,y2] or [[x1,y1,x2,y2], ...] in pixels, got {boxes!r}")
        raise  # unreachable: _fail exits


@app.command()
def ask(
    model: str = typer.Argument(..., help="Model directory (or a hub id, if you have network)."),
    image: Path = typer.Argument(..., help="Image file."),
    prompt: str = typer.Argument(..., help='Prompt, e.g. "[refer] the red circle"; <box:0> points at --boxes.'),
    boxes: str = typer.Option(None, help="Boxes the prompt points at: JSON [[x1,y1,x2,y2], ...] in pixels."),
    as_json: bool = typer.Option(False, "--json", help="Print the answer and its objects as JSON."),
    max_new_tokens: int = typer.Option(64, help="Longest answer in tokens."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
) -> None:
    """Ask MODEL a question about IMAGE."""
    from .images import ImageError
    from .inference import load

    box_list = _parse_boxes(boxes)
    _check_placement(device, dtype)
    try:
        lm = load(model, device=device, dtype=dtype)
        answer = lm.ask(image, prompt, boxes=box_list, max_new_tokens=max_new_tokens)
    except (ImageError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
        return
    if as_json:
        typer.echo(json.dumps(answer.to_dict(), indent=2))
        return
    typer.echo(answer.text)
    for obj in answer.objects:
        typer.echo(f"  {obj.phrase or '-'}: {[round(v, 1) for v in obj.box]}")


@app.command("eval")
def eval_cmd(
    model: str = typer.Argument(None, help="Model directory (omit with --predictions)."),
    benchmark: str = typer.Option(
        "shapes", help="shapes (ShapesWorld test split), refcoco, pope, coco_captions or records (with --data)."
    ),
    data: Path = typer.Option(None, help="records.jsonl for --benchmark records."),
    images: Path = typer.Option(None, help="Image folder (default: the records file's folder)."),
    out: Path = typer.Option(Path("runs/eval"), help="Output folder."),
    limit: int = typer.Option(None, help="Evaluate only the first N records."),
    scenes: int = typer.Option(100, help="ShapesWorld test scenes (one record per task each)."),
    batch_size: int = typer.Option(16, help="Prompts per generation batch."),
    max_new_tokens: int = typer.Option(48, help="Longest answer in tokens."),
    resume: bool = typer.Option(False, help="Continue a partial run in OUT."),
    convention: str = typer.Option("default", help="REC IoU convention: default (>= 0.5) or minigptv2."),
    predictions: Path = typer.Option(None, help="Re-score this predictions.jsonl without a model."),
    codec: str = typer.Option(None, help="With --predictions: read the raw answers in this location format "
                              "(text, qwen_vl, shikra, ...; docs/location-codecs.md)."),
    input_size: int = typer.Option(224, help="With --codec qwen2_5_vl: the model input's side in pixels."),
    reading: str = typer.Option("codec", help="With --codec: how answers are read: codec (its format anywhere), "
                                "minigptv2 (MiniGPT-v2's strict rule, --codec text), lenient (also free-text "
                                "[a, b, c, d] / (a,b),(c,d)), lmms_eval or vlmevalkit (those tools' RefCOCO "
                                "parsers, no --codec needed); evaluate/readings.py."),
    scale: float = typer.Option(1000.0, help="With --reading lenient: the grid of free-text integer boxes."),
    device: str = typer.Option("auto", help=DEVICE_HELP + " Under torchrun, each rank takes cuda:LOCAL_RANK."),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    predictions_format: str = typer.Option("groundlm", help="Who wrote --predictions: groundlm, lmms_samples "
                                           "(lmms-eval --log_samples JSONL of refcoco_bbox_rec) or vlmevalkit "
                                           "(its RefCOCO predictions as TSV/CSV/JSONL); evaluate/tool_logs.py."),
) -> None:
    """Evaluate MODEL on a benchmark (or re-score --predictions); writes predictions, metrics and a report.

    Under `torchrun --nproc_per_node N -m groundlm eval ...` the records are shared out over the N processes
    and rank 0 writes the one predictions file (docs/evaluation.md)."""
    from .evaluate.report import metrics_table
    from .evaluate.runner import EvalConfig, evaluate, rescore
    from .evaluate.shards import is_main_process

    try:
        if predictions is not None:
            metrics = rescore(predictions, out, image_root=images, convention=convention, codec=codec,
                              input_size=input_size, reading=reading, scale=scale,
                              predictions_format=predictions_format)
        else:
            if model is None:
                _fail("give a MODEL directory, or --predictions FILE to re-score")
            from .inference import load

            _check_placement(device, dtype)
            config = EvalConfig(benchmark=benchmark, data=data, images=images, scenes=scenes, limit=limit,
                                batch_size=batch_size, max_new_tokens=max_new_tokens, resume=resume,
                                convention=convention)
            metrics = evaluate(load(model, device=device, dtype=dtype), out, config)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
        return
    if not is_main_process():
        return
    typer.echo(metrics_table(metrics))
    typer.echo(f"wrote {out}/metrics.json and {out}/report.md")


@app.command("train")
def train_cmd(
    recipe: str = typer.Argument(..., help="A recipe YAML file, or a shipped recipe: shapes, minigpt4, minigptv2, llava."),
    out: Path = typer.Option(None, "--out", help="Run directory (default: runs/<recipe name>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the newest checkpoint in --out."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Tiny stand-in model, ShapesWorld for absent data, 2 steps per stage."
    ),
    steps: int = typer.Option(None, "--steps", help="Run every stage for this many steps instead."),
) -> None:
    """Train with RECIPE: every stage in turn, checkpoints and metrics in --out, the model in OUT/model."""
    import os

    from .train import RecipeError, TrainingStopped, load_recipe, override_steps, train
    from .train import dry_run as make_dry_run

    try:
        r = load_recipe(recipe, world_size=int(os.environ.get("WORLD_SIZE", "1")))
        if dry_run:
            r = make_dry_run(r)
        if steps is not None:
            r = override_steps(r, steps)
        train(r, out or Path("runs") / (f"{r.name}-dry-run" if dry_run else r.name), resume=resume)
    except TrainingStopped as err:
        typer.secho(str(err), fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(code=err.exit_code) from None
    except (RecipeError, FileNotFoundError, FileExistsError, ValueError) as err:
        _fail(str(err))


@app.command()
def demo(
    minutes: float = typer.Option(None, "--minutes", help="Wall-time budget; every stage's steps scale to fit (default 15)."),
    quick: bool = typer.Option(False, "--quick", help="A 2-minute first look (same stages, fewer steps)."),
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run folder (a previous demo there is replaced)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the model, the data order and the adapters."),
) -> None:
    """Train the demo model on ShapesWorld (the shipped pretrained parts, a new connector), evaluate every task,
    write OUT/report.md."""
    from .demo import DemoConfig, print_summary, run_demo
    from .train import RecipeError, TrainingStopped

    try:
        metrics = run_demo(DemoConfig(out=out, minutes=minutes, quick=quick, seed=seed))
    except TrainingStopped as err:
        typer.secho(str(err), fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(code=err.exit_code) from None
    except (RecipeError, FileNotFoundError, FileExistsError, ValueError) as err:
        _fail(str(err))
        return
    typer.echo(print_summary(metrics, out))


@app.command("pretrain")
def pretrain_cmd(
    part: str = typer.Argument(..., help="The part to pretrain: tower (images only) or language (text only)."),
    out: Path = typer.Option(..., "--out", help="Folder: the training run in OUT/run, the part in OUT/part."),
    steps: int = typer.Option(None, "--steps", help="Train for this many steps instead of the recipe's."),
) -> None:
    """Pretrain one of the demo's parts as shipped in the package (groundlm/demo/parts/); resumes OUT/run."""
    from .demo.parts import pretrain
    from .train import RecipeError, TrainingStopped

    try:
        summary = pretrain(part, out, steps=steps)
    except TrainingStopped as err:
        typer.secho(str(err), fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(code=err.exit_code) from None
    except (RecipeError, FileNotFoundError, FileExistsError, ValueError) as err:
        _fail(str(err))
        return
    typer.echo(json.dumps(summary, indent=2))


@app.command("export")
def export_cmd(
    model: str = typer.Argument(..., help="Model directory."),
    out: Path = typer.Argument(..., help="Directory to write the exported model into."),
    format: str = typer.Option(
        "llava-hf", "--format", help="llava-hf: transformers' LLaVA directory (transformers, vLLM, SGLang)."
    ),
    force: bool = typer.Option(False, help="Overwrite a non-empty directory."),
) -> None:
    """Write MODEL to OUT for a runtime without groundlm: same logits, pixels and prompt string.

    llava-hf (src/groundlm/export/llava_hf.py) takes a CLIP or SigLIP tower, the mlp2x_gelu connector and a
    location codec without heads (boxes written in the text); anything else is refused with the reason."""
    from .export import EXPORT_FORMATS, export_model

    if format not in EXPORT_FORMATS:
        _fail(f"unknown export format {format!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if out.exists() and not out.is_dir():
        _fail(f"{out} is a file; a model is a directory")
    if out.exists() and any(out.iterdir()) and not force:
        _fail(f"{out} exists and is not empty (use --force to overwrite)")
    try:
        export_model(model, out, format)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))
        return
    typer.echo(f"wrote a {format} model to {out}")


@app.command()
def serve(
    model: str = typer.Argument(..., help="Model directory."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (loopback unless told otherwise)."),
    port: int = typer.Option(8000, help="Port."),
    api_key: str = typer.Option(None, help="Require this bearer key (default: $GROUNDLM_API_KEY, else none)."),
    ui: bool = typer.Option(True, help="Mount the web page at /ui."),
    device: str = typer.Option("auto", help=DEVICE_HELP),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
) -> None:
    """Serve MODEL: an OpenAI-compatible API at /v1/chat/completions and a web page at /ui."""
    from .serve import run

    _check_placement(device, dtype)
    try:
        run(model, host=host, port=port, api_key=api_key, ui=ui, device=device, dtype=dtype)
    except (FileNotFoundError, ValueError) as err:
        _fail(str(err))


app.command("curate")(curate)

data_app = typer.Typer(no_args_is_help=True, help="Make, import, export, check and look at record files.")
app.add_typer(data_app, name="data")
data_app.command("import")(data_import)
data_app.command("export")(data_export)
data_app.command("shard")(data_shard)


@data_app.command("shapes")
def data_shapes(
    out: Path = typer.Argument(..., help="Directory for images/ and records.jsonl."),
    n: int = typer.Option(1000, "--n", help="Number of scenes."),
    split: str = typer.Option("train", help="train, val or test (fixed seeds: identical on every machine)."),
    image_size: int = typer.Option(64, help="Side of the square images in pixels."),
) -> None:
    """Write N ShapesWorld scenes of SPLIT (one record per task per scene) to OUT."""
    from .data.shapes import SPLIT_SEEDS, ShapesConfig, write_shapes

    if split not in SPLIT_SEEDS:
        _fail(f"unknown split {split!r}; choose one of {sorted(SPLIT_SEEDS)}")
    path = write_shapes(out, n, split, config=ShapesConfig(image_size=image_size))
    typer.echo(f"wrote {path}")


@data_app.command("check")
def data_check(file: Path = typer.Argument(..., help="A records.jsonl file.")) -> None:
    """Validate FILE: counts per task, and every invalid row as file:line: field: message."""
    from collections import Counter

    from .records import check_jsonl
    from .tasks import record_task

    if not file.is_file():
        _fail(f"{file} not found")
    records, problems = check_jsonl(file)
    tasks = Counter(record_task(r) for r in records)
    typer.echo(f"{file}: {len(records)} valid records")
    for task, count in sorted(tasks.items()):
        typer.echo(f"  {task:<14} {count}")
    if problems:
        for p in problems:
            typer.secho(str(p), fg=typer.colors.RED, err=True)
        _fail(f"{len(problems)} problem(s) in {file}")


@data_app.command("show")
def data_show(
    file: Path = typer.Argument(..., help="A records.jsonl file."),
    index: int = typer.Option(0, "--index", help="Which record (0-based)."),
    out: Path = typer.Option(Path("record.png"), "--out", help="PNG to write."),
    image_root: Path = typer.Option(None, help="Folder the image paths are relative to (default: FILE's)."),
) -> None:
    """Draw record INDEX of FILE (its boxes, labels and masks) into a PNG, and print its conversation."""
    from .images import ImageError, load_image
    from .records import RecordValidationError, read_jsonl
    from .visualize import Drawable, draw

    try:
        records = read_jsonl(file)
    except (RecordValidationError, OSError) as err:
        _fail(str(err))
    if not 0 <= index < len(records):
        _fail(f"--index {index} out of range: {file} has {len(records)} records")
    record = records[index]
    if record.image is None:
        _fail(f"record {record.id!r} has no image")
    try:
        image = load_image((image_root or file.parent) / record.image)
    except ImageError as err:
        _fail(str(err))
    items = [Drawable(o.box, f"{i}: {o.label}" if o.label else str(i), o.mask) for i, o in enumerate(record.objects)]
    draw(image, items).save(out)
    for m in record.messages:
        typer.echo(f"{m.role}: {m.content}")
    typer.echo(f"wrote {out}")


@app.command("import")
def import_cmd(
    kind: str = typer.Argument(..., help="The checkpoint's layout: llava-hf, llava (groundlm.weights.IMPORTERS)."),
    src: Path = typer.Argument(..., help="The checkpoint: a directory, or a file (LLaVA's mm_projector.bin)."),
    out: Path = typer.Option(..., "--out", help="Directory to write the groundlm model into."),
    option: list[str] = typer.Option(
        [], "--option", "-o", help="An importer option KEY=VALUE (repeatable; VALUE read as YAML), e.g. "
        "-o frame=resize, -o vision_tower=DIR. docs/published-models.md lists them."
    ),
    force: bool = typer.Option(False, help="Write into a non-empty directory."),
) -> None:
    """Write the published checkpoint SRC as a groundlm model directory (groundlm.load and init_from read it)."""
    import yaml

    from .weights import WeightsError, import_model

    if out.exists() and not out.is_dir():
        _fail(f"{out} is a file; a model is a directory")
    if out.exists() and any(out.iterdir()) and not force:
        _fail(f"{out} exists and is not empty (use --force to overwrite)")
    options = {}
    for item in option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            _fail(f"--option {item!r}: expected KEY=VALUE")
        options[key] = yaml.safe_load(value)
    try:
        import_model(kind, src, out, **options)
    except (WeightsError, FileNotFoundError, ValueError) as err:
        _fail(str(err))
    typer.echo(f"wrote a groundlm model ({kind} import of {src}) to {out}")


def main() -> None:
    """Entry point for `python -m groundlm`."""
    app()

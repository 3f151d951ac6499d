"""The `groundlm` command line (typer)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

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
    if out.exists() and any(out.iterdir()) and not force:
        _fail(f"{out} exists and is not empty (use --force to overwrite)")
    new_model(out, preset, seed=seed)
    typer.echo(f"wrote a random '{preset}' model to {out}")


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
) -> None:
    """Ask MODEL a question about IMAGE."""
    from .images import ImageError
    from .inference import load

    box_list = _parse_boxes(boxes)
    try:
        lm = load(model)
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


def main() -> None:
    """Entry point for `python -m groundlm`."""
    app()

"""`groundlm data import` and `groundlm data export`: other formats → records.jsonl, and records → other formats.

`IMPORT_FORMATS` maps a FORMAT name to how it is read (an importer in src/groundlm/data/importers) and which
command-line options apply to it; the exporters are `data.exporters.EXPORTERS`. Both commands report what was
skipped with `--on-error skip`, and show a progress bar (rich) on long inputs in a terminal.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import typer

from .records import Record

# Inputs at least this large (bytes, or records for an export) get a progress bar in a terminal.
LONG_FILE = 1 << 20
LONG_EXPORT = 2000


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


@dataclass
class ImportArgs:
    """The command-line options an importer may take (`ImportFormat.options` says which apply)."""

    image_root: Path | None = None
    codec: str | None = None
    annotations: Path | None = None
    label_map: Path | None = None
    crowd: str = "skip"
    rng: random.Random | None = None
    on_error: str = "raise"
    report: object = None
    out: Path | None = None  # the output folder, where images shipped inside the source are written

    def policy(self) -> dict:
        return {"on_error": self.on_error, "report": self.report}

    def options(self) -> dict:
        return {"rng": self.rng, **self.policy()}

    def codec_args(self) -> dict:
        # the image root gives image sizes, to scale boxes written in a codec back to pixels
        return {"codec": self.codec, "image_root": self.image_root}


@dataclass(frozen=True)
class ImportFormat:
    """How one FORMAT is read: `run(src, args)`, the options that apply (beyond --on-error), and a summary."""

    run: Callable[[Path, ImportArgs], list[Record]]
    options: tuple[str, ...]
    help: str


def _importers():
    from .data import importers as im

    return im


def _need(value, option: str, fmt: str):
    if value is None:
        _fail(f"{fmt} needs {option}")
    return value


IMPORT_FORMATS: dict[str, ImportFormat] = {
    "coco-instances": ImportFormat(
        lambda src, a: _importers().from_coco_instances(src, crowd=a.crowd, **a.options()),
        ("crowd", "seed"), "COCO instances_*.json → one [detection] record per image and category",
    ),
    "odvg": ImportFormat(
        lambda src, a: _importers().from_odvg(src, label_map=a.label_map, **a.options()),
        ("label_map", "seed"), "Grounding DINO's ODVG JSONL → [detection] and [grounding] records",
    ),
    "llava": ImportFormat(
        lambda src, a: _importers().from_llava(src, **a.codec_args(), **a.policy()),
        ("codec", "image_root"), "LLaVA conversations JSON/JSONL (boxes read in --codec)",
    ),
    "sharegpt": ImportFormat(
        lambda src, a: _importers().from_sharegpt(src, **a.codec_args(), **a.policy()),
        ("codec", "image_root"), "ShareGPT messages/images JSON (boxes read in --codec)",
    ),
    "llama-factory": ImportFormat(
        lambda src, a: _importers().from_sharegpt(src, **a.codec_args(), **a.policy()),
        ("codec", "image_root"), "LLaMA-Factory ShareGPT JSON (boxes read in --codec)",
    ),
    "internvl": ImportFormat(
        lambda src, a: _importers().from_llava(src, codec="internvl", image_root=a.image_root, **a.policy()),
        ("image_root",), "InternVL conversations with <ref>/<box>[[...]] boxes (0-1000)",
    ),
    "qwen2_5_vl": ImportFormat(
        lambda src, a: _importers().from_llava(src, codec="qwen2_5_vl", image_root=a.image_root, **a.policy()),
        ("image_root",), "qwen-vl-finetune JSON with bbox_2d pixel boxes",
    ),
    "swift": ImportFormat(
        lambda src, a: _importers().from_swift(src, image_root=a.image_root, **a.policy()),
        ("image_root",), "ms-swift JSONL with <ref-object>/<bbox> and objects",
    ),
    "coco-captions": ImportFormat(
        lambda src, a: _importers().from_coco_captions(src, **a.options()),
        ("seed",), "COCO captions_*.json → [caption] records",
    ),
    "vqav2": ImportFormat(
        lambda src, a: _importers().from_vqav2(src, a.annotations, **a.options()),
        ("annotations", "seed"), "VQAv2 questions (+ --annotations) → [vqa] records",
    ),
    "okvqa": ImportFormat(
        lambda src, a: _importers().from_okvqa(src, a.annotations, **a.options()),
        ("annotations", "seed"), "OK-VQA questions (+ --annotations) → [vqa] records",
    ),
    "gqa": ImportFormat(
        lambda src, a: _importers().from_gqa(src, **a.options()), ("seed",), "GQA questions JSON → [vqa] records",
    ),
    "pope": ImportFormat(
        lambda src, a: _importers().from_pope(src, **a.policy()), (), "POPE question files → yes/no records",
    ),
    "refcoco-minigptv2": ImportFormat(
        lambda src, a: _importers().from_minigptv2_refcoco(src, **a.options()),
        ("seed",), "MiniGPT-v2's RefCOCO/+/g evaluation JSON → [refer] records",
    ),
    "refer-rec": ImportFormat(
        lambda src, a: _importers().from_refer_rec(
            src, _need(a.annotations, "--annotations (instances.json)", "refer-rec"), **a.options()
        ),
        ("annotations", "seed"), "refer toolkit refs(*).p + --annotations instances.json → [refer] records",
    ),
    "refer-reg": ImportFormat(
        lambda src, a: _importers().from_refer_reg(
            src, _need(a.annotations, "--annotations (instances.json)", "refer-reg"), **a.options()
        ),
        ("annotations", "seed"), "refer toolkit refs(*).p + --annotations instances.json → [identify] records",
    ),
    "flickr30k-grounding": ImportFormat(
        lambda src, a: _importers().from_flickr30k_grounding(src, **a.options()),
        ("seed",), "Flickr30k Entities root folder → [grounding] records",
    ),
    "flickr30k-detection": ImportFormat(
        lambda src, a: _importers().from_flickr30k_detection(src, **a.options()),
        ("seed",), "Flickr30k Entities root folder → [detection] records",
    ),
    "refcoco-lmms": ImportFormat(
        lambda src, a: _importers().from_lmms_refcoco(src, a.out, **a.options()),
        ("seed",), "lmms-lab RefCOCO/+/g parquet (lmms-eval) → [refer] records, images written to OUT/images",
    ),
    "refcoco-vlmevalkit": ImportFormat(
        lambda src, a: _importers().from_vlmevalkit_refcoco(src, a.out, **a.options()),
        ("seed",), "VLMEvalKit RefCOCO.tsv (base64 images) → [refer] records, images written to OUT/images",
    ),
    "llava-caps-boxes": ImportFormat(
        lambda src, a: _importers().from_llava_caps_boxes(src, image_root=a.image_root, **a.options()),
        ("image_root", "seed"), "LLaVA caps_boxes JSONL → [caption] and [detection] records",
    ),
}  # fmt: skip


def _given(options: dict) -> dict:
    """The options set on the command line (None and an unset flag mean not given; 0 is a value)."""
    return {k: v for k, v in options.items() if v is not None and v is not False}


def _check_options(fmt: str, given: dict, applies: tuple[str, ...]) -> None:
    for name in _given(given):
        if name not in applies:
            flag = "--" + name.replace("_", "-")
            _fail(f"{flag} does not apply to {fmt} (it takes: {', '.join(applies) or 'no options'})")


@contextmanager
def _progress(description: str, total: int | None, long: bool) -> Iterator[Callable[[], None]]:
    """A callback advancing a rich progress bar on stderr, shown only for long inputs in a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=True, disable=not (long and console.is_terminal)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def _summary(report, what: str) -> None:
    if report.skipped:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in report.skipped.most_common())
        typer.secho(f"skipped {report.n_skipped} {what} ({reasons})", fg=typer.colors.YELLOW, err=True)


def _size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else LONG_FILE  # a folder (Flickr30k) counts as long


def data_import(
    fmt: str = typer.Argument(..., metavar="FORMAT", help="One of: " + ", ".join(IMPORT_FORMATS)),
    src: Path = typer.Argument(..., help="The source file (or folder for flickr30k-*)."),
    out: Path = typer.Option(..., "--out", help="Folder to write records.jsonl into."),
    image_root: Path = typer.Option(None, help="Folder the source's image paths are relative to (image sizes)."),
    codec: str = typer.Option(None, help="The location format the source's boxes are written in (llava, "
                              "sharegpt, llama-factory; docs/location-codecs.md)."),
    annotations: Path = typer.Option(None, help="vqav2/okvqa: the annotations file; refer-*: instances.json."),
    label_map: Path = typer.Option(None, help="odvg: the label map JSON (label → category name)."),
    crowd: str = typer.Option(None, help="coco-instances: skip (default) or keep crowd boxes."),
    seed: int = typer.Option(None, help="Draw instructions from the task pools with this seed (training); "
                             "default: the fixed evaluation prompts."),
    on_error: str = typer.Option("raise", help="raise: stop at the first broken row; skip: skip and count it."),
    force: bool = typer.Option(False, help="Replace an existing OUT/records.jsonl."),
) -> None:
    """Read SRC in FORMAT and write OUT/records.jsonl (docs/data-format.md, "Import and export")."""
    from .data.importers import ImportReport, ImportRowError
    from .records import RecordValidationError, write_jsonl

    if fmt not in IMPORT_FORMATS:
        _fail(f"unknown import format {fmt!r}; choose one of {', '.join(IMPORT_FORMATS)}")
    spec = IMPORT_FORMATS[fmt]
    given = {"image_root": image_root, "codec": codec, "annotations": annotations, "label_map": label_map,
             "crowd": crowd, "seed": seed}
    _check_options(fmt, given, spec.options)
    if on_error not in ("raise", "skip"):
        _fail(f"--on-error must be raise or skip, got {on_error!r}")
    if crowd not in (None, "skip", "keep"):
        _fail(f"--crowd must be skip or keep, got {crowd!r}")
    if not src.exists():
        _fail(f"{src} not found")
    target = out / "records.jsonl"
    if target.exists() and not force:
        _fail(f"{target} exists (use --force to replace it)")
    report = ImportReport()
    args = ImportArgs(image_root=image_root, codec=codec, annotations=annotations, label_map=label_map,
                      crowd=crowd or "skip", rng=None if seed is None else random.Random(seed),
                      on_error=on_error, report=report, out=out)
    try:
        with _progress(f"importing {src.name}", None, _size(src) >= LONG_FILE) as tick:
            report.on_row = tick
            records = spec.run(src, args)
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(target, records)
    except ImportRowError as err:
        _fail(f"{err}\n(--on-error skip skips such rows and counts them)")
    except (RecordValidationError, FileNotFoundError, ValueError, OSError) as err:
        _fail(str(err))
    _summary(report, "rows")
    typer.echo(f"{report}; wrote {target}")


def data_export(
    fmt: str = typer.Argument(..., metavar="FORMAT", help="One of: swift, llama-factory, llava, qwen2_5_vl."),
    records_file: Path = typer.Argument(..., metavar="RECORDS", help="A records.jsonl file."),
    out: Path = typer.Option(..., "--out", help="Folder to write the data file (and its companions) into."),
    codec: str = typer.Option(None, help="llava, llama-factory: the location format boxes are written in "
                              "(default llava and qwen2_5_vl; docs/location-codecs.md)."),
    frame: str = typer.Option(None, help="resize or pad: override the codec's published frame."),
    smart_resize: bool = typer.Option(False, "--smart-resize", help="Pixel boxes (qwen2_5_vl) in pixels of "
                                      "the smart_resize'd image instead of the original."),
    min_pixels: int = typer.Option(None, help="With --smart-resize: the trainer's min_pixels."),
    max_pixels: int = typer.Option(None, help="With --smart-resize: the trainer's max_pixels."),
    image_root: Path = typer.Option(None, help="Folder the records' images are in, for image sizes "
                                    "(default: RECORDS's folder)."),
    on_error: str = typer.Option("raise", help="raise: stop at the first record that cannot be written; "
                                 "skip: skip and count it."),
) -> None:
    """Write the records of RECORDS in FORMAT into OUT (docs/data-format.md, "Import and export")."""
    from .data.exporters import EXPORTERS, ExportError, ExportReport, write_export
    from .records import RecordValidationError, read_jsonl

    if fmt not in EXPORTERS:
        _fail(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORTERS)}")
    if on_error not in ("raise", "skip"):
        _fail(f"--on-error must be raise or skip, got {on_error!r}")
    given = {"codec": codec, "frame": frame, "smart_resize": smart_resize, "min_pixels": min_pixels,
             "max_pixels": max_pixels}
    ctor = EXPORTERS[fmt]
    _check_options(fmt, given, ctor.options)
    if not records_file.is_file():
        _fail(f"{records_file} not found")
    try:
        exporter = ctor(**_given(given))
        records = read_jsonl(records_file)
    except (ValueError, RecordValidationError, OSError) as err:
        _fail(str(err))
        return
    # read_jsonl keeps every non-blank line in order, so record i is the i-th non-blank line
    with open(records_file, encoding="utf-8-sig") as f:
        lines = [n for n, line in enumerate(f, start=1) if line.strip()]
    report = ExportReport()
    try:
        with _progress(f"exporting {records_file.name}", len(records), len(records) >= LONG_EXPORT) as tick:
            path = write_export(exporter, records, out, image_root=image_root or records_file.parent,
                                on_error=on_error, report=report,  # type: ignore[arg-type]
                                where=lambda i: f"{records_file}:{lines[i]}", progress=tick)
    except ExportError as err:
        _fail(f"{err}\n(--on-error skip skips such records and counts them)")
        return
    except (ValueError, OSError) as err:
        _fail(str(err))
        return
    _summary(report, "records")
    typer.echo(f"{report}; wrote {path}")


def data_shard(
    records_file: Path = typer.Argument(..., metavar="RECORDS", help="A records.jsonl file."),
    out: Path = typer.Option(..., "--out", help="Folder for shard-NNNNNN.tar and shards.json."),
    per_shard: int = typer.Option(10_000, "--per-shard", help="Samples per tar shard (write at least one "
                                  "shard per training process)."),
    image_root: Path = typer.Option(None, help="Folder the records' images are in (default: RECORDS's folder)."),
) -> None:
    """Stream RECORDS and its images into WebDataset tar shards in OUT, for a stage source `shards: OUT`
    (docs/recipes.md); shuffle the records first: training reads each shard in order."""
    from .data.shards import INDEX, write_shards
    from .records import RecordValidationError

    if not records_file.is_file():
        _fail(f"{records_file} not found")
    try:
        shards = write_shards(records_file, out, per_shard=per_shard, image_root=image_root)
    except (ValueError, RecordValidationError, OSError) as err:
        _fail(str(err))
        return
    typer.echo(f"{sum(s.samples for s in shards)} samples in {len(shards)} shards; index {out / INDEX}")

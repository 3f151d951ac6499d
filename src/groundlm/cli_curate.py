"""`groundlm curate PIPELINE RECORDS... --out FILE`: records written by an LLM (docs/curation.md).

The chat LLM is any OpenAI-compatible endpoint (`--base-url`, `--model`, `--api-key`, or the environment:
OPENAI_BASE_URL, GROUNDLM_CURATE_MODEL, OPENAI_API_KEY); minigpt4-detail also needs the groundlm model that
describes the images (`--describer DIR`, or `--describer-url` for one behind `groundlm serve`). Answers are
cached in FILE's `.cache.sqlite`, so the same command run again after a crash or Ctrl-C resumes.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import typer

from .cli_data import _fail


def _progress_bar():
    """A rich progress bar on stderr (only in a terminal) with the tokens spent and the skips so far."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}")]
    return Progress(*columns, console=console, transient=True, disable=not console.is_terminal)


def curate(
    pipeline: str = typer.Argument(..., metavar="PIPELINE", help="minigpt4-detail, llava-instruct or gvc."),
    sources: list[Path] = typer.Argument(..., metavar="RECORDS...", help="Record files with the images, their "
                                         "objects, captions or conversations (merged per image)."),
    out: Path = typer.Option(..., "--out", help="The records file to write."),
    base_url: str = typer.Option(None, envvar="OPENAI_BASE_URL", help="The chat LLM's OpenAI-compatible URL "
                                 "(…/v1)."),
    model: str = typer.Option(None, envvar="GROUNDLM_CURATE_MODEL", help="The chat LLM's model name."),
    api_key: str = typer.Option(None, envvar="OPENAI_API_KEY", show_default=False,
                                help="The chat LLM's API key (better in the environment)."),
    image_root: Path = typer.Option(None, help="Folder the records' images are in (default: the first "
                                    "RECORDS file's folder)."),
    prompts: Path = typer.Option(None, help="A prompt set folder replacing the shipped one (docs/curation.md)."),
    cache: Path = typer.Option(None, help="The answer cache (default: OUT with .cache.sqlite)."),
    concurrency: int = typer.Option(4, help="Requests in flight at once."),
    log_every: float = typer.Option(30.0, help="Seconds between progress lines when stderr is not a terminal "
                                    "(a log file); a terminal shows a progress bar instead."),
    max_retries: int = typer.Option(5, help="Retries of a request that failed (connection, 429, 5xx)."),
    backoff: float = typer.Option(1.0, help="Seconds before the first retry; doubled for each next one."),
    invalid_retries: int = typer.Option(2, help="New answers asked for after an invalid one, before skipping."),
    retry_invalid: bool = typer.Option(False, help="Ask again the requests an earlier run gave up on."),
    temperature: float = typer.Option(0.7, help="The chat LLM's sampling temperature."),
    max_tokens: int = typer.Option(1024, help="The longest answer of the chat LLM."),
    timeout: float = typer.Option(120.0, help="Seconds one request may take."),
    limit: int = typer.Option(None, help="Curate only the first N images (to try a prompt set)."),
    describer: Path = typer.Option(None, help="minigpt4-detail: the groundlm model directory that describes."),
    describer_url: str = typer.Option(None, help="minigpt4-detail: the describing model's server (…/v1)."),
    describer_model: str = typer.Option("groundlm", help="With --describer-url: its model name."),
    describer_api_key: str = typer.Option(None, envvar="GROUNDLM_API_KEY", show_default=False,
                                          help="With --describer-url: its API key."),
    describe_max_tokens: int = typer.Option(300, help="minigpt4-detail: the longest description per turn."),
    device: str = typer.Option("auto", help="With --describer: where the model runs."),
    dtype: str = typer.Option("auto", help="With --describer: the weights' dtype."),
) -> None:
    """Make records with PIPELINE from RECORDS: ask the LLM, check every answer, write the valid ones to OUT."""
    from . import curate as C
    from .records import RecordValidationError

    if pipeline not in C.PIPELINES:
        _fail(f"unknown pipeline {pipeline!r}; choose one of {', '.join(C.PIPELINES)}")
    if not base_url or not model:
        _fail("give the chat LLM: --base-url and --model (or OPENAI_BASE_URL and GROUNDLM_CURATE_MODEL)")
    for source in sources:
        if not source.is_file():
            _fail(f"{source} not found")
    try:
        built = C.PIPELINES[pipeline](C.PromptSet(prompts or C.shipped(pipeline)))
        subjects = C.read_subjects(sources, image_root)
    except (C.PromptError, RecordValidationError, ValueError, OSError) as err:
        _fail(str(err))
        return
    if limit is not None:
        subjects = subjects[:limit]
    stop = threading.Event()
    retry = C.Backoff(retries=max_retries, first_s=backoff)
    client = C.LLMClient(C.Endpoint(base_url, model, api_key, timeout), retry, stop)
    seeing = None
    if built.needs_describer:
        if (describer is None) == (describer_url is None):
            _fail(f"{pipeline} needs the model that describes the images: --describer DIR or --describer-url URL")
        try:
            seeing = (C.LocalDescriber(describer, device=device, dtype=dtype) if describer is not None else
                      C.ServedDescriber(C.Endpoint(describer_url, describer_model, describer_api_key, timeout),
                                        retry, stop))
        except (FileNotFoundError, ValueError) as err:
            _fail(str(err))
        except OSError as err:  # a folder without a groundlm model (transformers names the missing file)
            _fail(f"--describer {describer}: not a groundlm model directory ({err})")
    settings = C.Settings(temperature=temperature, max_tokens=max_tokens, invalid_retries=invalid_retries,
                          retry_invalid=retry_invalid, describe_max_tokens=describe_max_tokens)
    cache_path = cache or out.with_name(out.name + ".cache.sqlite")
    try:
        answers = C.Cache(cache_path)
    except ValueError as err:
        _fail(str(err))
        return
    session = C.Session(client, answers, settings, describer=seeing,
                        image_root=image_root or sources[0].parent)
    bar = _progress_bar()
    try:
        with bar:
            task = bar.add_task(pipeline, total=len(subjects), status="")

            logged = [time.monotonic()]  # when the last progress line went to a log

            def advance(tally: C.Tally) -> None:
                status = (f"{tally.prompt_tokens + tally.completion_tokens} tokens, {tally.cached} cached, "
                          f"{tally.n_skipped} skipped")
                bar.update(task, advance=1, status=status)
                if bar.disable:  # no terminal: a plain line now and then, and when the last image is done
                    done, now = int(bar.tasks[0].completed), time.monotonic()
                    if now - logged[0] >= log_every or done == len(subjects):
                        logged[0] = now
                        typer.echo(f"{pipeline}: {done}/{len(subjects)} images, {status}", err=True)

            records = C.curate_subjects(built, subjects, session, concurrency=concurrency, stop=stop,
                                        on_done=advance)
    except C.Interrupted:
        typer.secho(f"interrupted: {session.tally.summary()}\n{len(answers)} answers are kept in {cache_path}; "
                    "run the same command again to continue", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(code=130) from None
    except C.EndpointError as err:
        _fail(str(err))
        return
    answers.close()  # left open on Ctrl-C: a request still in flight may yet be stored
    C.write_records(out, records)
    typer.echo(f"{session.tally.summary()}; wrote {out}")

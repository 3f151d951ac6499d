"""How fast this machine trains each stage of a recipe: measured once, cached, reused.

`groundlm demo --minutes N` fits a recipe's schedule to N minutes. Machines differ by more than 2x (bf16
autocast is ~1.9x faster than fp32 where the CPU has native bf16, and ~100x slower where it has not), so a
schedule calibrated on one machine overruns or underuses another. The first demo on a machine therefore
trains a few steps of every stage and records the samples/s of each; that demo then records the speed its whole
run kept (a short probe under-reads it), and later runs read that record, so from the second demo on the same
seed gives the same steps, the same model and the same metrics on the same machine. Delete the cache file (or
set `GROUNDLM_CACHE`) to measure again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path

import torch

from ..train import train
from ..train.monitor import read_metrics
from ..train.precision import resolve_precision
from ..train.recipe import Recipe, override_steps

# Per stage; the first WARMUP_STEPS are not timed (allocation, first touch of the data). The timed steps are
# enough for their median to settle at the speed a stage keeps over a whole run; fewer under-read it, and the
# budget is then left partly unused.
PROBE_STEPS = 20
WARMUP_STEPS = 5
# The cache key of the speeds a whole demo run kept (`record_run_speeds`), beside the probe's.
RUN_SUFFIX = "|run"


def cache_path() -> Path:
    """The speed cache: $GROUNDLM_CACHE/speeds.json, else ~/.cache/groundlm/speeds.json (XDG_CACHE_HOME)."""
    root = os.environ.get("GROUNDLM_CACHE")
    if root is None:
        root = str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "groundlm")
    return Path(root) / "speeds.json"


def machine_key(recipe: Recipe) -> str:
    """What the speeds depend on: the recipe (name, model and stages), the CPU, the threads, precision, torch.

    The model, the configs of the pretrained parts it starts from and every stage field but the schedule's
    lengths go in as a digest: a changed data mixture changes the speed too (ShapesWorld's refer samples cost
    more to build than its VQA ones).
    """
    cpu = torch.cpu.get_capabilities().get("cpu_name", "") if hasattr(torch.cpu, "get_capabilities") else ""
    stages = ",".join(
        f"{s.name}:{s.batch_size}:{resolve_precision(s.precision)}:{s.objective}" for s in recipe.stages
    )
    lengths = ("steps", "warmup_steps", "warmup_ratio", "save_every")
    what = {
        "model": dataclasses.asdict(recipe.model),
        "parts": _part_configs(recipe),
        "stages": [{k: v for k, v in dataclasses.asdict(s).items() if k not in lengths} for s in recipe.stages],
    }
    digest = hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return "|".join(
        [
            recipe.name,
            stages,
            digest,
            cpu or platform.processor(),
            f"threads={torch.get_num_threads()}",
            torch.__version__,
        ]
    )


def _part_configs(recipe: Recipe) -> dict[str, str]:
    """The config.json of each pretrained part the model starts from (a local folder): a part's path can stay
    while its architecture, and so the speed, changes."""
    spec = recipe.model
    init = spec.init_from if isinstance(spec.init_from, str) or spec.init_from is None else spec.init_from.path
    configs = {}
    for name, where in (("vision_tower", spec.vision_tower), ("language_model", spec.language_model),
                        ("init_from", init)):
        path = Path(where) / "config.json" if where else None
        if path is not None and path.is_file():
            configs[name] = hashlib.sha1(path.read_bytes()).hexdigest()[:12]
    return configs


def measure_speeds(recipe: Recipe, *, progress: bool = False) -> dict[str, float]:
    """Samples/s of every stage of `recipe` on this machine, from PROBE_STEPS real training steps each."""
    probe = override_steps(recipe, PROBE_STEPS)
    with tempfile.TemporaryDirectory(prefix="groundlm-probe-") as tmp:
        train(probe, Path(tmp) / "run", progress=progress)
        rows = read_metrics(Path(tmp) / "run" / "metrics.jsonl")
    speeds = {}
    for stage in recipe.stages:
        timed = [r["samples_per_s"] for r in rows if r["stage"] == stage.name][WARMUP_STEPS:]
        if not timed:
            raise RuntimeError(f"the speed probe logged no timed step for stage {stage.name!r}")
        speeds[stage.name] = float(statistics.median(timed))
    return speeds


def stage_speeds(recipe: Recipe, *, progress: bool = False) -> tuple[dict[str, float], bool]:
    """This machine's samples/s per stage of `recipe`: from the cache, else measured and cached.

    Returns the speeds and whether they were measured now.
    """
    path = cache_path()
    key = machine_key(recipe)
    cache = _read(path)
    for known in (key + RUN_SUFFIX, key):  # what a whole run kept, else the probe's reading
        if known in cache:
            return {k: float(v) for k, v in cache[known].items()}, False
    if progress:
        print(f"measuring this machine's training speed ({PROBE_STEPS} steps per stage, once; cached in {path})",
              flush=True)
    speeds = measure_speeds(recipe, progress=progress)
    _store(path, cache, key, speeds)
    return speeds, True


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # no cache yet, or a torn one: measure again


def _store(path: Path, cache: dict, key: str, speeds: dict[str, float]) -> None:
    cache[key] = speeds
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cache, indent=2) + "\n")
    tmp.replace(path)  # atomic: a crash leaves the old cache


def run_speeds(rows: list[dict], recipe: Recipe) -> dict[str, float]:
    """Samples/s each stage kept over a whole run, from its metrics rows: samples over the steps' summed time
    (not a median of the steps' speeds: long and short batches alternate)."""
    speeds = {}
    for stage in recipe.stages:
        steps = [r for r in rows if r["stage"] == stage.name and r.get("samples_per_s")]
        seconds = sum(stage.batch_size * stage.grad_accum / r["samples_per_s"] for r in steps)
        if steps and seconds > 0:
            speeds[stage.name] = len(steps) * stage.batch_size * stage.grad_accum / seconds
    return speeds


def record_run_speeds(recipe: Recipe, rows: list[dict]) -> dict[str, float] | None:
    """After a demo planned from the probe, cache the speeds its run kept, once: the probe's 20 steps read a
    stage up to a fifth slower than a whole run keeps, leaving that share of the budget unused. Later demos plan
    from the run's record and never rewrite it, so they train the same steps. Returns what was recorded."""
    path = cache_path()
    cache = _read(path)
    key = machine_key(recipe) + RUN_SUFFIX
    speeds = run_speeds(rows, recipe)
    if key in cache or set(speeds) != {s.name for s in recipe.stages}:
        return None
    _store(path, cache, key, speeds)
    return speeds


def training_minutes(recipe: Recipe, speeds: dict[str, float]) -> float:
    """Minutes `recipe`'s stages take at `speeds` (samples/s per stage)."""
    missing = [s.name for s in recipe.stages if s.name not in speeds]
    if missing:
        raise ValueError(f"no speed for stages {missing}")
    seconds = sum(s.steps * s.batch_size * s.grad_accum / speeds[s.name] for s in recipe.stages)
    return seconds / 60.0

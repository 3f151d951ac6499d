"""The training loop: one explicit loop, stage after stage, resumable at any checkpoint.

Per stage: set up what trains (modules, LoRA), build the data mixture, the stage's strategy (`strategy: ddp |
fsdp | deepspeed`, train/strategies/), which wraps the model and builds AdamW after wrapping with one parameter
group per module (and decay / no decay), and a warmup + cosine schedule. The strategy does backward, clipping,
the non-finite check and the update, and saves its (sharded) share of each checkpoint; the loop never asks
which one it has. Launch with `torchrun --nproc_per_node N -m groundlm train ...` (on a CPU-only machine: N
gloo processes); docs/scaling.md covers GPUs and several nodes.

What a stage optimises is its objective (train/objectives.py): the module the strategy prepares, the loss units
of each sample (supervised tokens, image patches) and its summed loss. The step's loss is the mean over every
loss unit of the optimizer step: all micro-batches of all processes. Each process divides its loss sum by the
global unit count (one all-reduce before the forward), so N processes x batch B give the same loss and
gradients as 1 process x N*B, whatever the padding or the answer lengths. A step whose loss or gradient norm is
not finite is skipped (no update) and counted; too many in a row stop the run with a checkpoint, as does
Ctrl-C (or SIGTERM).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import random
import shutil
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import PartialState
from torch import nn

from ..data.mixture import Mixture
from . import checkpoint
from .build import build_for_recipe, stage_processor
from .control import RunState, StopSignal, TrainHooks, TrainingStopped, shortened
from .loader import MicroBatch, StageLoader
from .monitor import MetricsLog, Progress, task_means
from .objectives import OBJECTIVES, Objective
from .optim import WarmupCosine, warmup_cosine
from .packing import OWNER, SubBatch, split_by_length
from .params import (
    canonical_name,
    configure_trainable,
    load_trained_state,
    merge_lora,
    named_parameters,
    set_activation_checkpointing,
    set_lora,
    set_train_modes,
)
from .plots import draw_run
from .precision import resolve_precision
from .recipe import LoraSpec, Recipe, RecipeError, StageSpec, to_dict, to_yaml
from .sources import StageData, build_sources
from .strategies import STRATEGIES, StageSetup, Strategy, barrier, gather_objects, reduce_sum
from .trackers import TRACKERS

# ------------------------------------------------------------------------------------------------------------
# The run


@dataclass
class _Run:
    """Everything a run carries from stage to stage."""

    recipe: Recipe
    out: Path
    model: nn.Module
    processor: object
    state: RunState
    hooks: TrainHooks
    progress: bool
    distributed: PartialState
    cpu: bool
    stop: StopSignal = dataclasses.field(default_factory=StopSignal)
    recipe_yaml: str = ""
    resume_from: checkpoint.Checkpoint | None = None
    metrics: MetricsLog | None = None
    # Tensors of the checkpoint resumed from that are not the model's: its stage objective's (objectives.py)
    objective_state: dict | None = None

    @property
    def rank(self) -> int:
        """This process's index."""
        return self.distributed.process_index

    @property
    def world(self) -> int:
        """The number of processes."""
        return self.distributed.num_processes

    @property
    def main(self) -> bool:
        """Whether this process writes the files (metrics, checkpoints, the model)."""
        return self.distributed.is_main_process


def train(
    recipe: Recipe,
    out: str | Path,
    *,
    resume: bool = False,
    hooks: TrainHooks | None = None,
    progress: bool = True,
) -> Path:
    """Run every stage of a resolved recipe into `out`; returns `out/model` (the merged, saved model).

    `resume=True` continues from the newest checkpoint in `out` (the recipe must equal the one saved there);
    without it, a directory that already holds checkpoints is refused. Raises `TrainingStopped` after saving
    a checkpoint when interrupted or when `max_nonfinite` losses in a row occur.
    """
    out = Path(out)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # accelerate ignores torchrun's WORLD_SIZE on a machine without GPUs unless told to use the CPU.
    cpu = world > 1 and not torch.cuda.is_available()
    distributed = PartialState(cpu=cpu)
    recipe_yaml = to_yaml(recipe)

    resume_from = checkpoint.to_resume(out, resume, recipe_yaml, distributed.process_index)
    found = resume_from.path if resume_from is not None else None

    templates = [s.template for s in recipe.stages if s.template]
    model, processor = build_for_recipe(recipe.model, seed=recipe.seed, templates=templates)
    state = RunState(world_size=world)
    objective_state = None
    if resume_from is not None:
        state = RunState(**resume_from.state)
        if state.world_size != world:
            print(
                f"warning: {found.name} was written by {state.world_size} processes, this run has {world}; "
                "the data order and numerics will differ from an uninterrupted run",
                flush=True,
            )
            state.world_size = world
        # Rebuild the structure the weights were saved in (adapters attached), then load them.
        set_lora(model, None, LoraSpec(**state.lora) if state.lora else None)
        present = named_parameters(model)
        load_trained_state(model, {k: v for k, v in resume_from.weights.items() if k in present}, str(found))
        objective_state = {k: v for k, v in resume_from.weights.items() if k not in present}

    run = _Run(recipe, out, model, processor, state, hooks or TrainHooks(), progress, distributed, cpu)
    run.recipe_yaml, run.resume_from, run.objective_state = recipe_yaml, resume_from, objective_state
    if run.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.yaml").write_text(recipe_yaml)
        resume_at = state.global_step if resume_from is not None else None
        tracker = None
        if recipe.log_with is not None:
            tracker = TRACKERS[recipe.log_with](out, recipe.name, to_dict(recipe), resume_at)
        run.metrics = MetricsLog(out / "metrics.jsonl", resume_at, tracker)
        if resume_from is not None:
            print(f"resuming from {found} (stage {state.stage}, step {state.stage_step})", flush=True)
    run.stop.install()
    try:
        for index in range(state.stage, len(recipe.stages)):
            _run_stage(run, index)
        return _finish(run)
    finally:
        run.stop.restore()
        if run.metrics is not None:
            run.metrics.close()


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _shorten_stage(run: _Run, index: int, steps: int, done: int = 0) -> StageSpec:
    """Run stage `index` for `steps` steps, `done` of them run (control.shortened); the saved recipe says so."""
    stage = run.recipe.stages[index]
    stages = list(run.recipe.stages)
    stages[index] = shortened(stage, steps, done)
    if stages[index] is stage:
        return stage
    run.recipe = dataclasses.replace(run.recipe, stages=stages)
    run.recipe_yaml = to_yaml(run.recipe)
    if run.main:
        (run.out / "recipe.yaml").write_text(run.recipe_yaml)
        print(
            f"\nstage {index} ({stage.name}): {steps} of its {stage.steps} steps fit in the time", flush=True
        )
    return run.recipe.stages[index]


def _run_stage(run: _Run, index: int) -> None:
    """Set up stage `index` (what trains, its objective, data, optimizer, Accelerator), run its steps, save."""
    resuming = run.resume_from is not None and run.state.stage == index and run.state.stage_step > 0
    if not resuming and run.hooks.stage_steps is not None:
        _shorten_stage(run, index, run.hooks.stage_steps(index, run.recipe.stages[index], 0))
    recipe, state, model = run.recipe, run.state, run.model
    stage = recipe.stages[index]
    at, seed = f"{recipe.name}: stages[{index}]", recipe.seed * 1000 + index
    if not resuming:
        state.stage, state.stage_step, state.mixture, state.scheduler = index, 0, None, None
        # Same seed on every process, so adapters start identical (DDP also broadcasts rank 0's weights).
        _seed(seed)
    current = LoraSpec(**state.lora) if state.lora else None
    changed = set_lora(model, current, stage.lora)
    state.lora = dataclasses.asdict(stage.lora) if stage.lora else None
    groups = configure_trainable(model, stage, at)
    present = named_parameters(model)
    trained = set(state.trained) | set(changed) | {n for g in groups for n in g["names"]}
    state.trained = sorted(n for n in trained if n in present)  # merged adapters are gone
    set_train_modes(model)
    set_activation_checkpointing(model, stage.gradient_checkpointing)
    _set_attention(model, stage.attn_implementation, f"{at}.attn_implementation")

    # The objective may train through a module of its own (objectives.py): the strategy prepares that one.
    objective = OBJECTIVES[stage.objective](stage, model, run.processor, seed=seed)
    groups += objective.param_groups
    if run.objective_state is not None:  # the first stage after a resume
        objective.load_state_dict(run.objective_state, str(run.resume_from.path))
        run.objective_state = None

    processor = stage_processor(run.processor, stage.template)
    data = build_sources(
        stage.data,
        processor,
        at,
        images_only=objective.images_only,
        rank=run.rank,
        world=run.world,
        batch_size=stage.batch_size,
        seed=seed,
    )
    # One global batch of batch_size x processes per micro-step; each process takes its slice.
    mixture = Mixture(data.sources, seed=seed, batch_size=stage.batch_size * run.world)
    strategy = STRATEGIES[stage.strategy](run.cpu)
    setup = StageSetup(
        precision=resolve_precision(stage.precision),
        batch_size=stage.batch_size,
        grad_accum=stage.grad_accum,
        world=run.world,
        max_grad_norm=stage.max_grad_norm,
        deepspeed_config=stage.deepspeed_config,
        where=at,
    )
    # The optimizer is built by the strategy after wrapping, so it holds the tensors that train.
    module = strategy.prepare(
        objective.module, [{k: v for k, v in g.items() if k != "names"} for g in groups], setup
    )
    schedule = WarmupCosine(stage.warmup_steps or 0, stage.steps, stage.min_lr_ratio)
    # Stepped by hand once per applied update: a skipped (non-finite) step must not advance it.
    scheduler = warmup_cosine(strategy.optimizer, schedule)
    if resuming:
        strategy.load(run.resume_from.path)
        scheduler.load_state_dict(state.scheduler)
        mixture.load_state_dict(state.mixture)
    if resuming and run.resume_from.rng is not None:
        checkpoint.set_rng_state(run.resume_from.rng)
    else:
        _seed(seed + 7919 * (run.rank + 1))  # e.g. LoRA dropout differs per process
    run.resume_from = None
    # Batches are built ahead by worker processes (loader.py), in the mixture's order whatever their number.
    loader = StageLoader(
        data,
        processor,
        objective,
        mixture,
        rank=run.rank,
        batch_size=stage.batch_size,
        num_workers=stage.num_workers,
        prefetch=stage.prefetch,
        packed=stage.packing,
        seed=seed,
    )

    title = f"[{index + 1}/{len(recipe.stages)}] {stage.name}"
    bar = Progress(stage.steps, state.stage_step, title, run.main and run.progress)
    ctx = _StageContext(run, stage, strategy, objective, module, scheduler, loader, data, processor)
    try:
        while True:
            if run.hooks.stage_steps is not None and state.stage_step > 0:
                steps = run.hooks.stage_steps(index, ctx.stage, state.stage_step)
                if steps < ctx.stage.steps:
                    ctx.stage = _shorten_stage(run, index, steps, state.stage_step)
                    schedule.total, schedule.warmup = steps, ctx.stage.warmup_steps or 0
                    bar.bar.total = steps
            if state.stage_step >= ctx.stage.steps:
                break
            _step(ctx, bar)
    finally:
        bar.close()
        loader.close()
    # Stage done: the checkpoint marks the next stage's start (its optimizer starts fresh).
    state.stage, state.stage_step = index + 1, 0
    _save(ctx, with_optimizer=False)
    run.model = strategy.release(run.model, lambda: _rebuild(run), _module_names(run.model, state.trained))
    if run.main:
        for name, dataset in data.datasets.items():
            if dataset.report.skipped:
                print(f"stage {index} ({stage.name}): {name}: {dataset.report.summary()}", flush=True)


@dataclass
class _StageContext:
    """What one stage's steps need: the objective, the prepared model and optimizer, schedule, data."""

    run: _Run
    stage: StageSpec
    strategy: Strategy  # owns the optimizer
    objective: Objective
    model: nn.Module  # prepared by the strategy (DDP-wrapped, sharded, an engine): the objective's module
    scheduler: torch.optim.lr_scheduler.LRScheduler
    loader: StageLoader  # the micro-batches, and the mixture position of the last one taken
    data: StageData
    processor: object  # the stage's (its template)


def _reduce(ctx: _StageContext, values: list[float]) -> list[float]:
    """Sum `values` over the processes (one collective; a no-op for one process)."""
    return reduce_sum(values, ctx.strategy.device)


def _module_names(model: nn.Module, canonical: list[str]) -> set[str]:
    """The module's own parameter names (peft wrappers included) of the canonical `names`."""
    wanted = set(canonical)
    return {n for n, _ in model.named_parameters() if canonical_name(n) in wanted}


def _rebuild(run: _Run) -> nn.Module:
    """A fresh model of the run's current structure (its adapters attached), for a strategy's `release`."""
    templates = [s.template for s in run.recipe.stages if s.template]
    model, _ = build_for_recipe(run.recipe.model, seed=run.recipe.seed, templates=templates)
    set_lora(model, None, LoraSpec(**run.state.lora) if run.state.lora else None)
    return model


def _set_attention(model: nn.Module, name: str, where: str) -> None:
    """Switch the model (tower and language model) to transformers' attention kernel `name`; `auto` takes
    flash_attention_2 where the flash_attn package and a GPU are, else sdpa."""
    if name == "auto":
        flash = importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()
        name = "flash_attention_2" if flash else "sdpa"
    try:
        model.set_attn_implementation(name)
    except (ImportError, ValueError) as err:
        raise RecipeError(f"{where}: {name} is not available here: {err}") from None


def _step(ctx: _StageContext, bar: Progress) -> None:
    """One optimizer step: draw, forward/backward every micro-batch, update (or skip), log, maybe save."""
    run, stage, state, strategy, objective = ctx.run, ctx.stage, ctx.run.state, ctx.strategy, ctx.objective
    start = time.perf_counter()
    step = state.global_step + 1
    b = stage.batch_size
    position = ctx.loader.state_dict()  # to give the batches back if this step is not run
    micro = []
    for _ in range(stage.grad_accum):
        item: MicroBatch = ctx.loader.next()
        batch = dict(item.batch)
        if item.owner is not None:  # packed rows: the objective maps row positions back to samples
            batch[OWNER] = item.owner
        batch = {k: v.to(strategy.device) for k, v in batch.items()}
        micro.append((item.source, batch, item.tasks))
    units = [objective.units(m[1]) for m in micro]
    # Every process must agree to stop at the same step, so the stop request travels with the unit count.
    total_units, stop_votes = _reduce(
        ctx, [float(sum(int(u.sum()) for u in units)), float(run.stop.received is not None)]
    )
    if stop_votes > 0:
        ctx.loader.rewind(position)
        saved = _save(ctx)
        raise TrainingStopped(
            f"interrupted at step {state.global_step}; checkpoint {saved}; continue with --resume", saved, 130
        )
    total_units = max(total_units, 1.0)

    # Each process divides by the step's global unit count; every strategy averages gradients over the
    # processes, so that is multiplied back: the gradient is that of the mean over all units.
    scale = run.world / total_units
    loss_sum = 0.0
    logged: dict = {}  # the fields the objective adds to the metrics row: its last forward's
    task_sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for i, ((_source, batch, tasks), counts) in enumerate(zip(micro, units, strict=True)):
        # group_by_length: one forward/backward per length-grouped sub-batch (train/packing.py)
        parts = [SubBatch(list(range(len(tasks))), batch)]
        if stage.group_by_length:
            parts = split_by_length(batch, ctx.processor.image_token_id)
        per_sample = torch.zeros(len(tasks))  # [B]
        for j, part in enumerate(parts):
            last = i == len(micro) - 1 and j == len(parts) - 1  # the step's last backward
            with strategy.sync(last):
                part_losses, terms = objective.losses(ctx.model, part.batch)  # [B_part]
                logged.update(terms)
                loss = part_losses.sum() * scale
                if run.hooks.loss is not None:
                    loss = run.hooks.loss(step, loss)
                strategy.backward(loss)
            per_sample[part.rows] = part_losses.detach().float().cpu()
            loss_sum += float(loss.detach()) / scale
        for task, total, count in zip(tasks, per_sample.detach().tolist(), counts.tolist(), strict=True):
            task_sums[task][0] += total
            task_sums[task][1] += count
    if run.hooks.after_backward is not None:
        run.hooks.after_backward(step, objective.module)

    (total_loss,) = _reduce(ctx, [loss_sum])
    step_loss = total_loss / total_units
    lrs = {g["module"]: g["lr"] for g in strategy.optimizer.param_groups}  # the rates this step uses
    # Clip, then update unless the loss or the gradient norm is not finite (the strategy's; train/strategies/)
    result = strategy.step(stage.max_grad_norm, math.isfinite(step_loss))
    grad_norm, finite = result.grad_norm, result.applied
    if finite:
        ctx.scheduler.step()
        state.nonfinite_run = 0
    else:
        state.nonfinite_total += 1
        state.nonfinite_run += 1

    state.stage_step += 1
    state.global_step += 1
    samples = b * run.world * stage.grad_accum
    state.samples += samples
    speed = samples / max(time.perf_counter() - start, 1e-9)
    task_loss = {}
    if finite:  # every process agrees: the loss and gradient norm are reduced over all of them
        task_loss = task_means(gather_objects(dict(task_sums)))
    if run.main:
        run.metrics.write(
            {
                "step": state.global_step,
                "stage": stage.name,
                "stage_step": state.stage_step,
                "loss": step_loss if finite else None,
                "task_loss": task_loss,
                "lr": max(lrs.values()),
                "lr_groups": lrs,
                "samples_per_s": round(speed, 2),
                "grad_norm": grad_norm if grad_norm is not None and math.isfinite(grad_norm) else None,
                "skipped": not finite,
                "nonfinite": state.nonfinite_total,
                "source": sorted({m[0] for m in micro}),
                **logged,
            }
        )
    bar.update(step_loss if finite else None, max(lrs.values()), speed)

    if state.nonfinite_run >= stage.max_nonfinite:
        saved = _save(ctx)
        raise TrainingStopped(
            f"stopped at step {state.global_step}: {state.nonfinite_run} non-finite losses in a row "
            f"(max_nonfinite={stage.max_nonfinite}; {state.nonfinite_total} in total). The weights are those "
            f"of the last good step, saved in {saved}. Lower the learning rate, use fp32, or check the data; "
            "then continue with --resume.",
            saved,
            1,
        )
    if stage.save_every and state.stage_step % stage.save_every == 0 and state.stage_step < stage.steps:
        _save(ctx)


def _save(ctx: _StageContext, with_optimizer: bool = True) -> Path:
    """Write a checkpoint of the current step from all processes; returns its directory."""
    run, state = ctx.run, ctx.run.state

    # The trained weights, consolidated (a collective under sharding: every process gathers, the main one
    # writes). From the model's own object (strategies wrap it, they do not copy it), so an objective's module
    # (the dense stage's tower + head) does not hide the language model's weights trained in earlier stages.
    weights = {}
    for name, tensor in ctx.strategy.full_tensors(run.model, _module_names(run.model, state.trained)):
        if run.main:  # the others only take part in the gathers
            weights[canonical_name(name)] = tensor.contiguous().clone()

    def contents() -> dict:
        state.mixture = ctx.loader.state_dict() if with_optimizer else None
        state.scheduler = ctx.scheduler.state_dict() if with_optimizer else None
        if with_optimizer:  # mid-stage: the objective's own tensors too
            weights.update(ctx.objective.state_dict())
        return {"weights": weights, "state": dataclasses.asdict(state), "recipe_yaml": run.recipe_yaml}

    return checkpoint.save(
        run.out,
        state.global_step,
        rank=run.rank,
        main=run.main,
        barrier=barrier,
        contents=contents,
        shards=ctx.strategy.save if with_optimizer else None,
    )


def _finish(run: _Run) -> Path:
    """Merge adapters, save the model and processor to OUT/model (atomically), and draw the loss curves."""
    target = run.out / "model"
    if run.main:
        merge_lora(run.model)
        tmp = run.out / ".tmp-model"
        shutil.rmtree(tmp, ignore_errors=True)
        run.model.save_pretrained(tmp)
        run.processor.save_pretrained(tmp)
        checkpoint.replace_dir(tmp, target, run.out / ".old-model")
        draw_run(run.out, run.recipe.name)
        print(
            f"done: {run.state.global_step} steps, {run.state.nonfinite_total} skipped; model in {target}",
            flush=True,
        )
    run.distributed.wait_for_everyone()
    return target

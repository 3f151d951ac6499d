"""The training loop: one explicit loop on accelerate, stage after stage, resumable at any checkpoint.

Per stage: set up what trains (modules, LoRA), build the data mixture, AdamW with one parameter group per
module (and decay / no decay), a warmup + cosine schedule, and a fresh `Accelerator` with the stage's
precision and gradient accumulation. Distribution (DDP; FSDP or DeepSpeed through accelerate's config) is
accelerate's; launch with `torchrun --nproc_per_node N -m groundlm train ...` or `accelerate launch
--multi_gpu --num_processes N -m groundlm train ...` (on a CPU-only machine both give N gloo processes).

The loss is the mean over every supervised token of the optimizer step: all micro-batches of all processes.
Each process divides its token-loss sum by the global token count (one all-reduce before the forward), so
N processes x batch B give the same loss and gradients as 1 process x N*B, whatever the padding or the
answer lengths. A step whose loss or gradient norm is not finite is skipped (no update) and counted; too many
in a row stop the run with a checkpoint, as does Ctrl-C (or SIGTERM).
"""

from __future__ import annotations

import contextlib
import dataclasses
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
import torch.nn.functional as F
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedDataParallelKwargs, gather_object
from torch import nn

from ..data.mixture import Mixture
from ..processor import IGNORE_INDEX
from . import checkpoint
from .build import build_for_recipe, stage_processor
from .control import RunState, StopSignal, TrainHooks, TrainingStopped
from .dense import HEAD, DenseTargets, build_dense_model, dense_losses
from .location_objective import TERMS_ATTRIBUTE, lm_location_losses
from .monitor import MetricsLog, Progress, rewind_metrics
from .optim import WarmupCosine, adamw, warmup_cosine
from .packing import SubBatch, split_by_length
from .params import (
    configure_trainable,
    load_trained_state,
    merge_lora,
    named_parameters,
    set_lora,
    set_train_modes,
    trained_state,
)
from .precision import resolve_precision
from .recipe import LoraSpec, Recipe, StageSpec, to_yaml
from .soft_targets import coordinate_token_ids, soft_coordinate_losses
from .sources import StageData, build_sources

# ------------------------------------------------------------------------------------------------------------
# Objectives


def lm_token_losses(
    model: nn.Module, batch: dict[str, torch.Tensor], soft: tuple[torch.Tensor, float] | None = None
) -> torch.Tensor:
    """Next-token cross-entropy per position, [B, T-1], zero where the label is -100.

    Computed here rather than by the language model so the loop can weigh tokens across processes and
    report a loss per sample (per task). `soft` = (coordinate token ids, sigma) gives coordinate tokens
    Gaussian targets (train/soft_targets.py).
    """
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    inputs["use_cache"] = False  # no generation here; a cache would only cost memory
    logits = model(**inputs).logits  # [B, T, V]
    targets = batch["labels"][:, 1:]  # [B, T-1]
    if soft is not None:
        return soft_coordinate_losses(logits[:, :-1], targets, soft[0], soft[1], IGNORE_INDEX)
    return F.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )


# A stage objective is two functions of a batch: how many loss units each sample holds (known before the
# forward, so the step can be normalised across processes) and each sample's summed loss. A new stage type
# adds a branch to both.


def objective_units(objective: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Loss units per sample, [B]: for `lm`, the supervised tokens; for `dense_patches`, the patches."""
    if objective == "lm":
        return (batch["labels"][:, 1:] != IGNORE_INDEX).sum(1)
    if objective == "dense_patches":
        fg = batch["dense_fg"]  # [B, P]
        return torch.full((fg.shape[0],), fg.shape[1], dtype=torch.long)
    raise ValueError(f"unknown objective {objective!r}")  # recipe.py validates; a new objective lands here


def objective_losses(
    stage: StageSpec,
    model: nn.Module,
    batch: dict[str, torch.Tensor],
    coordinate_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Summed loss per sample, [B]: for `lm`, the token cross-entropy over the answer tokens (soft targets
    on `coordinate_ids` with the stage's `coordinate_sigma`); for `dense_patches`, the per-patch losses of
    train/dense.py (`model` is then the tower + head)."""
    if stage.objective == "lm":
        # embedding codec: + box/cycle(/mask) losses (train/location_objective.py)
        if "trigger_boxes" in batch:
            return lm_location_losses(model, batch)
        soft = (coordinate_ids, stage.coordinate_sigma) if stage.coordinate_sigma else None
        return lm_token_losses(model, batch, soft).sum(1)
    if stage.objective == "dense_patches":
        return dense_losses(model, batch, stage.dense)
    raise ValueError(f"unknown objective {stage.objective!r}")


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
    stop: StopSignal
    recipe_yaml: str
    resume_from: checkpoint.Checkpoint | None
    metrics: MetricsLog | None = None
    head_state: dict | None = None  # a dense_patches head's weights from the checkpoint resumed from

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

    found = checkpoint.latest(out)
    if found is not None and not resume:
        raise FileExistsError(
            f"{out} already holds a run (checkpoint {found.name}); pass --resume to continue it, or another --out"
        )
    resume_from = checkpoint.read(found, distributed.process_index) if found is not None else None
    if resume_from is not None and resume_from.recipe_yaml != recipe_yaml:
        raise ValueError(
            f"the recipe differs from the one {found} was trained with; resume with the same recipe "
            f"(saved as {found / 'recipe.yaml'}) or start a new run in another --out"
        )

    templates = [s.template for s in recipe.stages if s.template]
    model, processor = build_for_recipe(recipe.model, seed=recipe.seed, templates=templates)
    state = RunState(world_size=world)
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
        weights = {k: v for k, v in resume_from.weights.items() if not k.startswith(HEAD + ".")}
        load_trained_state(model, weights, str(found))

    run = _Run(
        recipe,
        out,
        model,
        processor,
        state,
        hooks or TrainHooks(),
        progress,
        distributed,
        cpu,
        StopSignal(),
        recipe_yaml,
        resume_from,
    )
    if resume_from is not None:
        run.head_state = {k: v for k, v in resume_from.weights.items() if k.startswith(HEAD + ".")}
    if run.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "recipe.yaml").write_text(recipe_yaml)
        if resume_from is not None:
            rewind_metrics(out / "metrics.jsonl", state.global_step)
        else:
            (out / "metrics.jsonl").unlink(missing_ok=True)
        run.metrics = MetricsLog(out / "metrics.jsonl")
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


def _set_checkpointing(model: nn.Module, on: bool) -> None:
    """Activation (gradient) checkpointing on or off; non-reentrant, so frozen inputs need no grad hack."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x; the old names warn
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_disable()


def _accelerator(stage: StageSpec, cpu: bool) -> Accelerator:
    """A fresh Accelerator for a stage.

    accelerate keeps one global state and refuses a second Accelerator with other numerics, so the state is
    reset between stages (the process group, in `PartialState`, stays).
    """
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    # A forward may leave trainable weights unused: tower layers after the selected feature layer, the
    # Q-Former's text-only feed-forward. DDP must be told, at the cost of one graph traversal per step.
    return Accelerator(
        mixed_precision="bf16" if resolve_precision(stage.precision) == "bf16" else "no",
        gradient_accumulation_steps=stage.grad_accum,
        cpu=cpu,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def _shorten_stage(run: _Run, index: int, steps: int, done: int = 0) -> StageSpec:
    """Run stage `index` for `steps` (<= its recipe's) steps, `done` of them run; the saved recipe says so.

    Shortened as it starts, the stage keeps its warmup share; once running, its warmup is what it was."""
    stage = run.recipe.stages[index]
    if not max(1, done) <= steps <= stage.steps:
        raise ValueError(
            f"stage_steps hook: stage {stage.name} has {stage.steps} steps ({done} run), cannot run {steps}"
        )
    if steps == stage.steps:
        return stage
    warmup = stage.warmup_steps or 0
    warmup = min(round(warmup * steps / stage.steps) if done == 0 else warmup, steps - 1)
    stages = list(run.recipe.stages)
    stages[index] = dataclasses.replace(stage, steps=steps, warmup_steps=warmup)
    run.recipe = dataclasses.replace(run.recipe, stages=stages)
    run.recipe_yaml = to_yaml(run.recipe)
    if run.main:
        (run.out / "recipe.yaml").write_text(run.recipe_yaml)
        print(f"\nstage {index} ({stage.name}): {steps} of its {stage.steps} steps fit in the time", flush=True)
    return run.recipe.stages[index]


def _run_stage(run: _Run, index: int) -> None:
    resuming = run.resume_from is not None and run.state.stage == index and run.state.stage_step > 0
    if not resuming and run.hooks.stage_steps is not None:
        _shorten_stage(run, index, run.hooks.stage_steps(index, run.recipe.stages[index], 0))
    recipe, state, model = run.recipe, run.state, run.model
    stage = recipe.stages[index]
    where = f"stage {index} ({stage.name})"
    if not resuming:
        state.stage, state.stage_step, state.mixture, state.scheduler = index, 0, None, None
        # Same seed on every process, so adapters start identical (DDP also broadcasts rank 0's weights).
        _seed(recipe.seed * 1000 + index)
    current = LoraSpec(**state.lora) if state.lora else None
    changed = set_lora(model, current, stage.lora)
    state.lora = dataclasses.asdict(stage.lora) if stage.lora else None
    groups = configure_trainable(model, stage, f"{recipe.name}: stages[{index}]")
    present = named_parameters(model)
    trained = set(state.trained) | set(changed) | {n for g in groups for n in g["names"]}
    state.trained = sorted(n for n in trained if n in present)  # merged adapters are gone
    set_train_modes(model)
    _set_checkpointing(model, stage.gradient_checkpointing)

    # A dense_patches stage trains the tower through a head of its own (train/dense.py): the module that
    # accelerate prepares is then the tower + head, not the whole model.
    target, head, targets = model, None, None
    if stage.objective == "dense_patches":
        vocab = len(run.processor.tokenizer)
        target = build_dense_model(model, stage.dense, vocab, seed=recipe.seed * 1000 + index + 31)
        head = target.dense_head
        if resuming and run.head_state:
            head.load_state_dict({k[len(HEAD) + 1 :]: v for k, v in run.head_state.items()})
        head_lr = stage.dense.head_lr or max(stage.train.values(), default=stage.lora.lr if stage.lora else 1e-3)
        for decay in (True, False):
            members = [(n, p) for n, p in head.named_parameters() if (p.ndim >= 2) == decay]
            groups.append(
                {
                    "params": [p for _, p in members],
                    "names": [f"{HEAD}.{n}" for n, _ in members],
                    "lr": head_lr,
                    "weight_decay": stage.weight_decay if decay else 0.0,
                    "module": HEAD,
                }
            )
        cfg = model.config
        targets = DenseTargets(
            run.processor.tokenizer, cfg.image_size, cfg.vision_config.patch_size, stage.dense.min_cover
        )
    run.head_state = None

    processor = stage_processor(run.processor, stage.template)
    dense = stage.objective == "dense_patches"
    data = build_sources(stage.data, processor, f"{recipe.name}: stages[{index}]", images_only=dense)
    # One global batch of batch_size x processes per micro-step; each process takes its slice.
    mixture = Mixture(data.sources, seed=recipe.seed * 1000 + index, batch_size=stage.batch_size * run.world)
    optimizer = adamw([{k: v for k, v in g.items() if k != "names"} for g in groups], betas=(0.9, 0.999))
    schedule = WarmupCosine(stage.warmup_steps or 0, stage.steps, stage.min_lr_ratio)
    scheduler = warmup_cosine(optimizer, schedule)
    if resuming:
        optimizer.load_state_dict(run.resume_from.optimizer)
        scheduler.load_state_dict(state.scheduler)
        mixture.load_state_dict(state.mixture)
    trainable = [p for g in groups for p in g["params"]]
    accelerator = _accelerator(stage, run.cpu)
    # The scheduler is stepped by hand once per optimizer update: accelerate's wrapper would step it once per
    # process, and a skipped (non-finite) step must not advance it.
    prepared, prepared_optimizer = accelerator.prepare(target, optimizer)
    if resuming and run.resume_from.rng is not None:
        checkpoint.set_rng_state(run.resume_from.rng)
    else:
        _seed(recipe.seed * 1000 + index + 7919 * (run.rank + 1))  # e.g. LoRA dropout differs per process
    run.resume_from = None

    bar = Progress(
        stage.steps,
        state.stage_step,
        f"[{index + 1}/{len(recipe.stages)}] {stage.name}",
        run.main and run.progress,
    )
    ctx = _StageContext(
        run,
        index,
        stage,
        accelerator,
        prepared,
        prepared_optimizer,
        scheduler,
        mixture,
        data,
        processor,
        trainable,
        head,
        targets,
        coordinate_token_ids(processor) if stage.coordinate_sigma else None,
    )
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
    # Stage done: the checkpoint marks the next stage's start (its optimizer starts fresh).
    state.stage, state.stage_step = index + 1, 0
    _save(ctx, with_optimizer=False)
    accelerator.unwrap_model(prepared, keep_fp32_wrapper=False)  # drop the autocast wrapper of this stage
    accelerator.free_memory()
    if run.main:
        for name, dataset in data.datasets.items():
            if dataset.report.skipped:
                print(f"{where}: {name}: {dataset.report.summary()}", flush=True)


@dataclass
class _StageContext:
    """What one stage's steps need: the prepared model and optimizer, schedule, data."""

    run: _Run
    index: int
    stage: StageSpec
    accelerator: Accelerator
    model: nn.Module  # prepared (possibly DDP-wrapped)
    optimizer: torch.optim.Optimizer  # prepared
    scheduler: torch.optim.lr_scheduler.LRScheduler
    mixture: Mixture
    data: StageData
    processor: object
    trainable: list[nn.Parameter]
    head: nn.Module | None = None  # dense_patches: the training-only head (saved in checkpoints only)
    targets: DenseTargets | None = None  # dense_patches: per-patch targets of the samples
    coordinate_ids: torch.Tensor | None = None  # coordinate_sigma: the coordinate tokens in value order, [K]


def _reduce(ctx: _StageContext, values: list[float]) -> list[float]:
    """Sum `values` over the processes (one collective; a no-op for one process)."""
    if ctx.run.world == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=ctx.accelerator.device)
    return ctx.accelerator.reduce(tensor, reduction="sum").tolist()


def _step(ctx: _StageContext, bar: Progress) -> None:
    """One optimizer step: draw, forward/backward every micro-batch, update (or skip), log, maybe save."""
    run, stage, state, acc = ctx.run, ctx.stage, ctx.run.state, ctx.accelerator
    start = time.perf_counter()
    step = state.global_step + 1
    b, rank = stage.batch_size, run.rank
    position = ctx.mixture.state_dict()  # to give the batches back if this step is not run
    micro = []
    for _ in range(stage.grad_accum):
        name, indices = ctx.mixture.next_batch()
        samples = ctx.data.samples(name, indices[rank * b : (rank + 1) * b])
        batch = ctx.processor.pad(samples, side="right")
        tasks = [s.meta.get("task") or name for s in samples]
        if ctx.targets is not None:
            batch.update(ctx.targets.batch(samples))
            tasks = [stage.objective] * len(samples)  # the conversations are not what this stage trains
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        micro.append((name, batch, tasks))
    units = [objective_units(stage.objective, m[1]) for m in micro]
    # Every process must agree to stop at the same step, so the stop request travels with the unit count.
    total_units, stop_votes = _reduce(
        ctx, [float(sum(int(u.sum()) for u in units)), float(run.stop.received is not None)]
    )
    if stop_votes > 0:
        ctx.mixture.load_state_dict(position)
        saved = _save(ctx)
        raise TrainingStopped(
            f"interrupted at step {state.global_step}; checkpoint {saved}; continue with --resume", saved, 130
        )
    total_units = max(total_units, 1.0)

    # Each process divides by the step's global unit count; accelerate divides by grad_accum and DDP averages
    # over processes, so both are multiplied back: the gradient is that of the mean over all units.
    scale = run.world * stage.grad_accum / total_units
    loss_sum = 0.0
    task_sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for (_source, batch, tasks), counts in zip(micro, units, strict=True):
        # group_by_length: one forward/backward per length-grouped sub-batch (train/packing.py)
        parts = [SubBatch(list(range(len(tasks))), batch)]
        if stage.group_by_length:
            parts = split_by_length(batch, ctx.processor.image_token_id)
        per_sample = torch.zeros(len(tasks))  # [B]
        with acc.accumulate(ctx.model):
            for j, part in enumerate(parts):
                # DDP all-reduces on the micro-step's last backward only (no_sync is a no-op on one process)
                last = j == len(parts) - 1
                with contextlib.nullcontext() if last else acc.no_sync(ctx.model):
                    part_losses = objective_losses(
                        stage, ctx.model, part.batch, ctx.coordinate_ids
                    )  # [B_part]
                    loss = part_losses.sum() * scale
                    if run.hooks.loss is not None:
                        loss = run.hooks.loss(step, loss)
                    acc.backward(loss)
                per_sample[part.rows] = part_losses.detach().float().cpu()
                loss_sum += float(loss.detach()) / scale
        for task, total, count in zip(tasks, per_sample.detach().tolist(), counts.tolist(), strict=True):
            task_sums[task][0] += total
            task_sums[task][1] += count
    if run.hooks.after_backward is not None:
        run.hooks.after_backward(step, acc.unwrap_model(ctx.model))

    (total_loss,) = _reduce(ctx, [loss_sum])
    step_loss = total_loss / total_units
    lrs = {g["module"]: g["lr"] for g in ctx.optimizer.param_groups}  # the rates this step uses
    grad_norm = None
    finite = math.isfinite(step_loss)
    if finite:
        max_norm = stage.max_grad_norm if stage.max_grad_norm else float("inf")
        grad_norm = float(acc.clip_grad_norm_(ctx.trainable, max_norm))
        finite = math.isfinite(grad_norm)
    if finite:
        ctx.optimizer.step()
        ctx.scheduler.step()
        state.nonfinite_run = 0
    else:
        state.nonfinite_total += 1
        state.nonfinite_run += 1
    ctx.optimizer.zero_grad(set_to_none=True)

    state.stage_step += 1
    state.global_step += 1
    samples = b * run.world * stage.grad_accum
    state.samples += samples
    speed = samples / max(time.perf_counter() - start, 1e-9)
    task_loss = _task_losses(ctx, task_sums) if finite else {}
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
                # embedding codec: this process's last micro-batch's location terms (box_l1, box_giou, ...)
                **({"location_losses": terms} if (terms := getattr(run.model, TERMS_ATTRIBUTE, None)) else {}),
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


def _task_losses(ctx: _StageContext, task_sums: dict[str, list[float]]) -> dict[str, float]:
    """Per-task mean token loss of the step over all processes."""
    if ctx.run.world > 1:
        merged: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for part in gather_object([dict(task_sums)]):
            for task, (total, count) in part.items():
                merged[task][0] += total
                merged[task][1] += count
        task_sums = merged
    return {t: total / count for t, (total, count) in sorted(task_sums.items()) if count > 0}


def _save(ctx: _StageContext, with_optimizer: bool = True) -> Path:
    """Write a checkpoint of the current step from all processes; returns its directory."""
    run, state, acc = ctx.run, ctx.run.state, ctx.accelerator
    if run.main:
        checkpoint.begin(run.out, state.global_step)
    acc.wait_for_everyone()
    tmp = checkpoint.temp_dir(run.out, state.global_step)
    checkpoint.write_rank(tmp, run.rank)
    if run.main:
        state.mixture = ctx.mixture.state_dict() if with_optimizer else None
        state.scheduler = ctx.scheduler.state_dict() if with_optimizer else None
        # The model's own object (prepare wraps it, it does not copy it), so a dense stage's tower + head
        # wrapper does not hide the language model's weights trained in earlier stages.
        weights = trained_state(run.model, state.trained)
        if ctx.head is not None and with_optimizer:
            weights.update({f"{HEAD}.{k}": v.detach().clone() for k, v in ctx.head.state_dict().items()})
        checkpoint.write_main(
            tmp,
            weights=weights,
            optimizer=ctx.optimizer.state_dict() if with_optimizer else None,
            state=dataclasses.asdict(state),
            recipe_yaml=run.recipe_yaml,
        )
    acc.wait_for_everyone()
    final = run.out / checkpoint.CHECKPOINTS / checkpoint.step_name(state.global_step)
    if run.main:
        final = checkpoint.commit(run.out, state.global_step)
    acc.wait_for_everyone()
    return final


def _finish(run: _Run) -> Path:
    """Merge adapters, save the model and processor to OUT/model (atomically), and draw the loss curves."""
    target = run.out / "model"
    if run.main:
        merge_lora(run.model)
        tmp = run.out / ".tmp-model"
        shutil.rmtree(tmp, ignore_errors=True)
        run.model.save_pretrained(tmp)
        run.processor.save_pretrained(tmp)
        old = run.out / ".old-model"
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
        try:
            from .plots import plot_losses

            plot_losses(run.out / "metrics.jsonl", run.out / "loss.png", title=run.recipe.name)
        except ImportError:
            print("matplotlib is not installed: no loss.png (pip install matplotlib)", flush=True)
        except ValueError as err:
            print(f"no loss.png: {err}", flush=True)
        print(
            f"done: {run.state.global_step} steps, {run.state.nonfinite_total} skipped; model in {target}",
            flush=True,
        )
    run.distributed.wait_for_everyone()
    return target

"""`strategy: deepspeed`: DeepSpeed's ZeRO-2 or ZeRO-3 engine driven directly, from a JSON config.

The config is a shipped one (`deepspeed_config: zero2` or `zero3`, the files beside this module, equivalent
to LLaVA's scripts/zero2.json and zero3.json) or a file of the user's. Its "auto" fields are filled from the
stage: micro-batch size, gradient accumulation, the global batch, `gradient_clipping` (`max_grad_norm`),
`bf16.enabled` (`precision: bf16`; DeepSpeed then holds the module in bf16 and keeps fp32 master weights in the
optimizer), and ZeRO's bucket sizes from the language model's hidden size (as the HF Trainer does). fp16 is
not offered. The optimizer is the loop's AdamW over its parameter groups (several learning rates, decay / no
decay, LoRA), handed to the engine, which partitions its state; an "optimizer" or "scheduler" block in the
config is refused (the loop's schedule applies).

The update: the engine runs with `managed_gradient_accumulation: false`, so the loop owns the step boundary
(any number of backward calls, then one `step`). Clipping is the engine's (`gradient_clipping`); the
non-finite rule holds through the engine: a step whose gradient norm is not finite is not applied
(`was_step_applied`), and a step whose reduced loss is not finite is counted as skipped by the loop after
DeepSpeed found its gradients non-finite too (a NaN loss gives NaN gradients).

Checkpoints: DeepSpeed's own `save_checkpoint` / `load_checkpoint` under `<checkpoint>/deepspeed/`, each process
writing and reading its own ZeRO partition (`zero_pp_rank_<r>_*optim_states.pt`). Those files are torch pickles;
DeepSpeed's loader would unpickle them with `weights_only=False`, so the engine's checkpoint loader is replaced
by `torch.load(weights_only=True)` admitting only the three DeepSpeed types the files hold (`_safe_types`).
Full weights come from
`deepspeed.utils.safe_get_full_fp32_param` (trained, the fp32 master) and, under ZeRO-3, `GatheredParameters`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from ..optim import adamw
from .base import StageSetup, StepResult, copy_into, device, ensure_process_group

DIRECTORY = "deepspeed"
TAG = "state"
SHIPPED = ("zero2", "zero3")


def _safe_types() -> list:
    """The DeepSpeed classes its ZeRO checkpoints pickle (found with torch's get_unsafe_globals_in_checkpoint)."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


def safe_load(path: str, map_location=None):
    """A DeepSpeed checkpoint file read without running code: tensors, containers and `_safe_types()` only."""
    with torch.serialization.safe_globals(_safe_types()):
        return torch.load(path, map_location=map_location, weights_only=True)


def config_path(name: str) -> Path:
    """The JSON file of a `deepspeed_config`: a shipped name or a path."""
    if name in SHIPPED:
        return Path(str(resources.files("groundlm.train.strategies") / f"{name}.json"))
    return Path(name)


def load_config(name: str, where: str) -> dict:
    """The config of `deepspeed_config`, read and checked (errors name the stage field and the file)."""
    path = config_path(name)
    if not path.is_file():
        raise ValueError(f"{where}.deepspeed_config: {name!r} is neither {' nor '.join(SHIPPED)} nor a file")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}.deepspeed_config: {path}: not valid JSON: {err}") from err
    if not isinstance(config, dict) or not isinstance(config.get("zero_optimization", {}), dict):
        raise ValueError(f"{where}.deepspeed_config: {path}: expected an object with zero_optimization")
    for block in ("optimizer", "scheduler"):
        if block in config:
            raise ValueError(
                f"{where}.deepspeed_config: {path}: remove the {block!r} block; the recipe's stage sets the "
                "optimizer (AdamW per parameter group) and its schedule"
            )
    if _fill(config.get("fp16", {}).get("enabled"), False):
        raise ValueError(f"{where}.deepspeed_config: {path}: fp16 is not supported; use precision: bf16")
    return config


def _fill(value, auto):
    return auto if value == "auto" else value


def filled_config(config: dict, setup: StageSetup, hidden: int | None) -> dict:
    """`config` with every "auto" field set from the stage (and `hidden`, the language model's width)."""
    c = json.loads(json.dumps(config))
    micro = setup.batch_size
    c["train_micro_batch_size_per_gpu"] = _fill(c.get("train_micro_batch_size_per_gpu", "auto"), micro)
    c["gradient_accumulation_steps"] = _fill(c.get("gradient_accumulation_steps", "auto"), setup.grad_accum)
    c["train_batch_size"] = _fill(c.get("train_batch_size", "auto"), micro * setup.grad_accum * setup.world)
    c["gradient_clipping"] = _fill(c.get("gradient_clipping", "auto"), setup.max_grad_norm or 0.0)
    c["bf16"] = {
        **c.get("bf16", {}),
        "enabled": _fill(c.get("bf16", {}).get("enabled", "auto"), setup.precision == "bf16"),
    }
    c["fp16"] = {**c.get("fp16", {}), "enabled": False}
    if c["bf16"]["enabled"]:
        c["bf16"].setdefault("check_grad_overflow", True)  # skip non-finite steps as in fp32
    zero = c.setdefault("zero_optimization", {})
    sizes = {
        "reduce_bucket_size": hidden * hidden if hidden else 5e8,
        "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden) if hidden else 5e8,
        "stage3_param_persistence_threshold": 10 * hidden if hidden else 1e5,
    }
    for key, value in sizes.items():
        if zero.get(key) == "auto":
            zero[key] = value
    left = [k for k, v in _walk(c) if v == "auto"]
    if left:
        raise ValueError(f"{setup.where}.deepspeed_config: cannot fill 'auto' at {left}")
    c["managed_gradient_accumulation"] = False  # the loop calls step() once per optimizer step
    c.setdefault("steps_per_print", 1 << 30)
    c.setdefault("wall_clock_breakdown", False)
    return c


def _walk(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix, obj


def _hidden(module: nn.Module) -> int | None:
    config = getattr(module, "config", None)
    text = getattr(config, "text_config", None) or config
    return getattr(text, "hidden_size", None)


class DeepSpeedStrategy:
    """ZeRO-2 / ZeRO-3 through a DeepSpeed engine the loop steps itself."""

    def __init__(self, cpu: bool):
        self.device = device()
        self.engine = None

    def prepare(self, module: nn.Module, groups: list[dict], setup: StageSetup) -> nn.Module:
        import deepspeed  # optional dependency (pip install groundlm[deepspeed])

        ensure_process_group()
        if self.device.type == "cpu":
            # DeepSpeed's CPU backend would first compile a shared-memory all-reduce kernel with the system's
            # C++ compiler (minutes, at every fresh start, and racing between processes); gloo, already up,
            # does the job.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        config = filled_config(load_config(setup.deepspeed_config, setup.where), setup, _hidden(module))
        self.stage = config["zero_optimization"].get("stage", 0)
        if not config["bf16"]["enabled"]:
            module.float()  # fp32 training: parts loaded in bf16 are upcast (no master copy without bf16)
        self.optimizer = adamw(groups, betas=(0.9, 0.999))
        # DeepSpeed reads LOCAL_RANK while it runs; one process without a launcher has none. Set until
        # `release`, so it does not stay in the environment of processes started later.
        self.set_local_rank = "LOCAL_RANK" not in os.environ
        os.environ.setdefault("LOCAL_RANK", "0")
        self.engine, _, _, _ = deepspeed.initialize(
            model=module, optimizer=self.optimizer, config=config, dist_init_required=False
        )
        return self.engine

    def sync(self, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # ZeRO reduces (partitions) gradients in every backward

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)  # the loop's scale already counts the micro-steps

    def step(self, max_norm: float | None, loss_finite: bool) -> StepResult:
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        norm = None if norm is None else float(norm)
        applied = bool(self.engine.was_step_applied()) and norm is not None and math.isfinite(norm)
        return StepResult(norm if applied else None, applied and loss_finite)

    def full_tensors(self, model: nn.Module, names: set[str]) -> Iterator[tuple[str, torch.Tensor]]:
        from deepspeed.runtime.zero import GatheredParameters
        from deepspeed.utils import safe_get_full_fp32_param

        for name, p in model.named_parameters():
            if name not in names:
                continue
            full = safe_get_full_fp32_param(p) if p.requires_grad else None
            if full is None and hasattr(p, "ds_id"):  # a frozen ZeRO-3 parameter
                with GatheredParameters([p], modifier_rank=None):
                    full = p.data.detach().clone()
            if full is None:
                full = p.detach()
            yield name, full.to("cpu")

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(
            str(directory / DIRECTORY), tag=TAG, save_latest=False, exclude_frozen_parameters=True
        )

    def load(self, directory: Path) -> None:
        self.engine.checkpoint_engine.load = safe_load  # no unpickling of arbitrary objects
        path, _ = self.engine.load_checkpoint(
            str(directory / DIRECTORY), tag=TAG, load_lr_scheduler_states=False, load_module_strict=False
        )
        if path is None:
            raise FileNotFoundError(f"{directory / DIRECTORY}: no DeepSpeed checkpoint {TAG!r} readable here")

    def release(self, model: nn.Module, rebuild: Callable[[], nn.Module], names: set[str]) -> nn.Module:
        fresh = copy_into(rebuild(), self.full_tensors(model, names))
        self.engine.destroy()
        self.engine = None
        if self.set_local_rank:
            os.environ.pop("LOCAL_RANK", None)
        return fresh

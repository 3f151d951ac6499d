"""`strategy: ddp` (the default): every process holds the whole model; accelerate wraps it in
DistributedDataParallel and runs the stage's bf16 autocast.

accelerate stays here because it still does two things well on this path: it picks the device and backend of
each process (gloo on a CPU machine, NCCL on GPUs) and wraps the model's forward in autocast for `precision:
bf16`. Accumulation, clipping and the non-finite check are this module's `step` (accelerate's
gradient-accumulation bookkeeping is not used: the loop scales each loss itself). accelerate's FSDP and
DeepSpeed plugins are not used: on a machine without GPUs accelerate silently falls back to DDP with them;
`fsdp.py` and `deepspeed.py` drive those engines directly.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from .. import checkpoint
from ..optim import adamw
from ..precision import stage_accelerator
from .base import StageSetup, StepResult, clip_and_step, world

OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_JSON = "optimizer.json"


class DDPStrategy:
    """Data parallel: whole model per process, gradients all-reduced after the step's last backward."""

    def __init__(self, cpu: bool):
        self.cpu = cpu
        self.accelerator = None
        self.module: nn.Module | None = None
        self.params: list[nn.Parameter] = []

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def prepare(self, module: nn.Module, groups: list[dict], setup: StageSetup) -> nn.Module:
        self.accelerator = stage_accelerator(setup.precision, 1, self.cpu)
        optimizer = adamw(groups, betas=(0.9, 0.999))
        self.optimizer = optimizer
        self.params = [p for g in groups for p in g["params"]]
        # DDP keeps the parameter objects, so the optimizer built above holds the tensors that train.
        self.module, self._prepared_optimizer = self.accelerator.prepare(module, optimizer)
        return self.module

    def sync(self, last: bool) -> contextlib.AbstractContextManager:
        # DDP all-reduces on the step's last backward only (no_sync is a no-op on one process)
        return contextlib.nullcontext() if last else self.accelerator.no_sync(self.module)

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)

    def step(self, max_norm: float | None, loss_finite: bool) -> StepResult:
        return clip_and_step(self.params, self.optimizer, max_norm, loss_finite, float)

    def full_tensors(self, model: nn.Module, names: set[str]) -> Iterator[tuple[str, torch.Tensor]]:
        for name, p in model.named_parameters():
            if name in names:
                yield name, p.detach().to("cpu")

    def save(self, directory: Path) -> None:
        # Every process holds the same optimizer state: the main one writes it (pickle-free, checkpoint.py).
        if not _is_main():
            return
        checkpoint.write_state(directory, OPTIMIZER_JSON, OPTIMIZER_TENSORS, self.optimizer.state_dict())

    def load(self, directory: Path) -> None:
        self.optimizer.load_state_dict(checkpoint.read_state(directory, OPTIMIZER_JSON, OPTIMIZER_TENSORS))

    def release(self, model: nn.Module, rebuild: Callable[[], nn.Module], names: set[str]) -> nn.Module:
        self.accelerator.unwrap_model(self.module, keep_fp32_wrapper=False)  # drop this stage's autocast
        self.accelerator.free_memory()
        return model


def _is_main() -> bool:
    return world() == 1 or dist.get_rank() == 0

"""What a training strategy does for the loop (train/loop.py), and the process-group helpers they share.

A strategy owns everything that depends on how the model is spread over processes: it wraps the stage's
module, builds the optimizer *after* wrapping (so the optimizer holds the tensors that train), runs backward,
clipping, the non-finite check and the update, gathers full (consolidated) weights, saves and loads its
sharded checkpoint state, and hands back a plain model when the stage ends. The loop calls only the methods of
`Strategy`; the variants are `ddp.py`, `fsdp.py` and `deepspeed.py`, named in `strategies/__init__.py`.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class StepResult:
    """What one optimizer update did: the gradient norm before clipping (None when not finite) and whether
    the weights changed (False: a non-finite loss or gradient norm; the step was skipped)."""

    grad_norm: float | None
    applied: bool


@dataclass
class StageSetup:
    """What a strategy needs to know about the stage it prepares (filled by the loop from the recipe)."""

    precision: str  # fp32 | bf16 (resolved)
    batch_size: int  # per process and micro-step
    grad_accum: int
    world: int
    max_grad_norm: float | None
    deepspeed_config: str  # a shipped name (zero2, zero3) or a JSON file; deepspeed only
    where: str  # the stage's place in the recipe, for error messages


class Strategy(Protocol):
    """How one stage's module is distributed, updated and saved."""

    device: torch.device
    optimizer: torch.optim.Optimizer  # the torch optimizer whose param_groups carry each group's lr

    def prepare(self, module: nn.Module, groups: list[dict], setup: StageSetup) -> nn.Module:
        """Wrap `module` (the objective's), build the optimizer over `groups` (AdamW groups, `params` taken
        before wrapping, in the same order), and return what the forward runs on."""

    def sync(self, last: bool) -> contextlib.AbstractContextManager:
        """The context of one backward; `last`: the step's last backward (where gradients are reduced)."""

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradient of `loss` (already scaled: gradients are averaged over processes)."""

    def step(self, max_norm: float | None, loss_finite: bool) -> StepResult:
        """Clip to `max_norm`, update unless the loss or the gradient norm is not finite, clear gradients."""

    def full_tensors(self, model: nn.Module, names: set[str]) -> Iterator[tuple[str, torch.Tensor]]:
        """The parameters of `model` (the run's whole model) called `names` as full CPU tensors, by name, on
        every process (a collective under sharding: every process iterates to the end)."""

    def save(self, directory: Path) -> None:
        """(Every process.) Write this process's share of the model and optimizer state under `directory`."""

    def load(self, directory: Path) -> None:
        """(Every process, after `prepare`.) Restore what `save` wrote."""

    def release(self, model: nn.Module, rebuild: Callable[[], nn.Module], names: set[str]) -> nn.Module:
        """End of stage: a plain (unwrapped, unsharded) model for the next stage and for saving. Where the
        weights cannot be unwrapped in place, `rebuild()` makes a fresh model of the same structure (every
        weight as loaded) and the parameters called `names` (all trained so far) are copied into it."""


# ------------------------------------------------------------------------------------------------------------
# Process groups


def clip_and_step(
    params: list, optimizer, max_norm: float | None, loss_finite: bool, norm_of: Callable[[torch.Tensor], float]
) -> StepResult:
    """The loop's clip → skip-non-finite → step for an optimizer the strategy owns: the gradient norm of
    `params` clipped to `max_norm` (`norm_of` turns clip_grad_norm_'s result into a float, across shards if
    need be); a non-finite loss or norm skips the update. Gradients are cleared either way."""
    norm = None
    applied = loss_finite
    if applied:
        norm = norm_of(torch.nn.utils.clip_grad_norm_(params, max_norm or float("inf")))
        applied = math.isfinite(norm)
    if applied:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(norm if applied else None, applied)


def ensure_process_group() -> None:
    """A process group even for one process (sharding engines need one; torchrun's is made by the loop)."""
    if dist.is_available() and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)


def world() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """`values` summed over every process (one collective; as is for one process)."""
    if world() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather_objects(obj) -> list:
    """`obj` of every process, in rank order (picklable plain data made by this run's own processes)."""
    if world() == 1:
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every process."""
    if world() > 1:
        dist.barrier()


def device() -> torch.device:
    """This process's device: its GPU under torchrun on a GPU machine, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def copy_into(fresh: nn.Module, tensors: Iterator[tuple[str, torch.Tensor]]) -> nn.Module:
    """Put named full tensors into `fresh`'s parameters (same names, same structure), keeping their dtype (an
    fp32 master weight stays fp32); returns `fresh`."""
    params = dict(fresh.named_parameters())
    with torch.no_grad():
        for name, tensor in tensors:
            params[name].data = tensor.clone()
    return fresh


@contextlib.contextmanager
def nothing() -> Iterator[None]:
    """No context."""
    yield

"""`strategy: fsdp`: torch's FSDP2 (`fully_shard`) driven directly, parameters, gradients and optimizer state
sharded over the processes.

Wrapping: every transformer block of the tower and the language model (the classes transformers lists in the
models' `_no_split_modules`: `LlamaDecoderLayer`, `CLIPEncoderLayer`, ...) is its own FSDP unit, then the root
module takes the rest (embeddings, connector, heads). Master weights are fp32: parts loaded in bfloat16 are
upcast one block at a time just before that block is sharded (each process then keeps 1/N of them), and with
`precision: bf16` a `MixedPrecisionPolicy` computes in bf16 and reduces gradients in fp32. The optimizer is
built after sharding, over the sharded (DTensor) parameters, in the loop's groups (several learning rates,
decay / no decay, LoRA adapters; frozen parameters stay out and keep their values).

Checkpoints: `torch.distributed.checkpoint` (DCP) under `<checkpoint>/fsdp/`, each process writing its own
shard file (`__<rank>_0.distcp`) and reading back only its shards; the trained parameters and the optimizer
state are saved (frozen ones are rebuilt from the recipe). At the end of a stage the sharded model is gathered
into a freshly built plain model (`release`), which the next stage shards again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from ..optim import adamw
from .base import StageSetup, StepResult, clip_and_step, copy_into, device, ensure_process_group, world

DIRECTORY = "fsdp"


def shard_units(module: nn.Module) -> list[nn.Module]:
    """The modules that become their own FSDP unit: transformer blocks (transformers' `_no_split_modules`)."""
    names: set[str] = set()
    for m in module.modules():
        names |= set(getattr(m, "_no_split_modules", None) or ())
    names -= {"CLIPVisionEmbeddings", "CLIPTextEmbeddings"}  # small, and they hold the tied positions
    return [m for m in module.modules() if type(m).__name__ in names and m is not module]


def _full_norm(total: torch.Tensor) -> float:
    return float(total.full_tensor() if isinstance(total, DTensor) else total)


class FSDPStrategy:
    """FSDP2: per-block sharding, fp32 master weights, optional bf16 compute."""

    def __init__(self, cpu: bool):
        self.device = device()
        self.module: nn.Module | None = None

    def prepare(self, module: nn.Module, groups: list[dict], setup: StageSetup) -> nn.Module:
        ensure_process_group()
        mesh = init_device_mesh(self.device.type, (world(),))
        compute = torch.bfloat16 if setup.precision == "bf16" else torch.float32
        policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)
        names = {id(p): n for n, p in module.named_parameters()}
        group_names = [[names[id(p)] for p in g["params"]] for g in groups]
        units = shard_units(module)
        in_units = {id(p) for u in units for p in u.parameters()}
        for unit in units:
            unit.float()  # fp32 master weights, one block at a time (fully_shard moves its shard to the device)
            fully_shard(unit, mesh=mesh, mp_policy=policy)
        with torch.no_grad():
            for p in module.parameters():
                if id(p) not in in_units and p.is_floating_point():
                    p.data = p.data.float()
        fully_shard(module, mesh=mesh, mp_policy=policy)
        # fully_shard replaced every parameter by its shard (a DTensor): the groups are rebuilt by name.
        params = dict(module.named_parameters())
        sharded = [
            {**{k: v for k, v in g.items() if k != "params"}, "params": [params[n] for n in ns]}
            for g, ns in zip(groups, group_names, strict=True)
        ]
        self.params = [p for g in sharded for p in g["params"]]
        self.optimizer = adamw(sharded, betas=(0.9, 0.999))
        self.module = module
        return module

    def sync(self, last: bool) -> contextlib.AbstractContextManager:
        # Gradients are reduce-scattered after every backward and accumulate in the sharded .grad.
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, max_norm: float | None, loss_finite: bool) -> StepResult:
        # the norm over every shard of every process (a DTensor's full_tensor is one all-reduce)
        return clip_and_step(self.params, self.optimizer, max_norm, loss_finite, _full_norm)

    def full_tensors(self, model: nn.Module, names: set[str]) -> Iterator[tuple[str, torch.Tensor]]:
        for name, p in model.named_parameters():
            if name not in names:
                continue
            full = p.full_tensor() if isinstance(p, DTensor) else p
            yield name, full.detach().to("cpu")

    def _state(self) -> dict:
        model, optim = get_state_dict(
            self.module, self.optimizer, options=StateDictOptions(ignore_frozen_params=True)
        )
        return {"model": model, "optim": optim}

    def save(self, directory: Path) -> None:
        dcp.save(self._state(), checkpoint_id=directory / DIRECTORY)

    def load(self, directory: Path) -> None:
        state = self._state()
        dcp.load(state, checkpoint_id=directory / DIRECTORY)  # each process reads its own shards
        set_state_dict(
            self.module,
            self.optimizer,
            model_state_dict=state["model"],
            optim_state_dict=state["optim"],
            # frozen weights are not in the checkpoint: the model built from the recipe holds them already
            options=StateDictOptions(ignore_frozen_params=True, strict=False),
        )

    def release(self, model: nn.Module, rebuild: Callable[[], nn.Module], names: set[str]) -> nn.Module:
        if not any(isinstance(m, FSDPModule) for m in model.modules()):
            return model
        return copy_into(rebuild(), self.full_tensors(model, names))

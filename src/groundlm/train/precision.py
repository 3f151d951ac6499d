"""Which numerics a stage trains in: `fp32`, `bf16` autocast, or `auto` (bf16 only where the hardware has it).

bf16 autocast is 1.75-2x faster than fp32 on a CPU with native bf16 (AVX-512 BF16 or AMX), but on one
without it torch emulates bf16 matmuls and they run ~100x slower than fp32 (on an AVX2-only EPYC:
0.5 GFLOP/s bf16 against 81 GFLOP/s fp32 on one core). `auto` picks per machine, so a recipe written on one
machine does not crawl on another; the choice is a pure function of the hardware, so a seed still gives the
same run on the same machine. `stage_accelerator` gives a stage the `Accelerator` of its numerics.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedDataParallelKwargs

PRECISIONS = ("fp32", "bf16", "auto")


def native_bf16() -> bool:
    """Whether bf16 matmuls run natively here: a CUDA GPU with bf16, or a CPU with AVX-512 BF16 or AMX-BF16."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def resolve_precision(precision: str) -> str:
    """`fp32` or `bf16`: `auto` becomes bf16 where `native_bf16()`, else fp32; the others are kept."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16() else "fp32"
    return precision


def stage_accelerator(precision: str, grad_accum: int, cpu: bool) -> Accelerator:
    """A fresh Accelerator for a stage: its precision and gradient accumulation (`cpu`: gloo processes).

    accelerate keeps one global state and refuses a second Accelerator with other numerics, so the state is
    reset between stages (the process group, in `PartialState`, stays).
    """
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    # A forward may leave trainable weights unused: tower layers after the selected feature layer, the
    # Q-Former's text-only feed-forward. DDP must be told, at the cost of one graph traversal per step.
    return Accelerator(
        mixed_precision="bf16" if resolve_precision(precision) == "bf16" else "no",
        gradient_accumulation_steps=grad_accum,
        cpu=cpu,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )

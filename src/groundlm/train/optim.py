"""AdamW, fused where torch supports it for the parameters' device and dtype; the warmup + cosine schedule.

torch's fused AdamW updates every parameter in one kernel per group instead of a loop of per-tensor ops; it
is available on CPU since torch 2.4 (float32, bfloat16, float16, float64) as well as on CUDA. Where it is
not (a device or dtype torch refuses at construction), the default foreach implementation is used. The
result equals the unfused update up to float rounding (tests/test_performance_guards.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch


def adamw(param_groups: Iterable[dict], *, betas: tuple[float, float] = (0.9, 0.999)) -> torch.optim.AdamW:
    """`torch.optim.AdamW` over `param_groups` (dicts with `params`, `lr`, ...), fused when supported."""
    groups = list(param_groups)
    try:
        return torch.optim.AdamW(groups, betas=betas, fused=True)
    except (RuntimeError, ValueError):  # torch refuses fused for this device or dtype
        return torch.optim.AdamW(groups, betas=betas)


def is_fused(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer` runs torch's fused kernel."""
    return bool(optimizer.defaults.get("fused"))


@dataclass
class WarmupCosine:
    """The learning-rate multiplier of step s: linear from 0 over `warmup` steps, then a half cosine from 1 down
    to `min_ratio` at step `total` (transformers' cosine-with-min-lr schedule, the same numbers).

    A callable object rather than a closure: `LambdaLR` saves its fields in its state dict (so a resumed run
    has the schedule it stopped in), and a time budget may lower `total` while the stage runs.
    """

    warmup: int
    total: int
    min_ratio: float

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return step / max(1, self.warmup)
        progress = min((step - self.warmup) / max(1, self.total - self.warmup), 1.0)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, schedule: WarmupCosine) -> torch.optim.lr_scheduler.LambdaLR:
    """A `LambdaLR` of `optimizer` following `schedule` (every parameter group scaled alike)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

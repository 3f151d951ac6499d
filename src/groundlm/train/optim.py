"""AdamW, fused where torch supports it for the parameters' device and dtype.

torch's fused AdamW updates every parameter in one kernel per group instead of a loop of per-tensor ops; it
is available on CPU since torch 2.4 (float32, bfloat16, float16, float64) as well as on CUDA. Where it is
not (a device or dtype torch refuses at construction), the default foreach implementation is used. The
result equals the unfused update up to float rounding (tests/test_performance_guards.py).
"""

from __future__ import annotations

from collections.abc import Iterable

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

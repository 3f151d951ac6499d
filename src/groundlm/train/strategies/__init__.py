"""How a stage is spread over processes: `strategy: ddp | fsdp | deepspeed` (docs/scaling.md).

`STRATEGIES` maps each name to its constructor (taking `cpu`: a CPU-only run of several processes); the loop
asks only for the `Strategy` protocol (base.py), so no code outside this package asks which one it has.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .base import StageSetup, StepResult, Strategy, barrier, gather_objects, reduce_sum
from .ddp import DDPStrategy
from .deepspeed import SHIPPED as DEEPSPEED_CONFIGS
from .deepspeed import DeepSpeedStrategy, load_config
from .fsdp import FSDPStrategy

STRATEGIES: dict[str, Callable[[bool], Strategy]] = {
    "ddp": DDPStrategy,
    "fsdp": FSDPStrategy,
    "deepspeed": DeepSpeedStrategy,
}

# Strategies that keep the whole model in every process: an objective with a module of its own (the dense
# stage's head) runs only under these.
WHOLE_MODEL = ("ddp",)


def check_strategy(strategy: str, deepspeed_config: str, where: str) -> str:
    """Check a stage's `strategy` and its options (ValueError names `where`); returns `deepspeed_config` with
    `~` and variables expanded when it is a file."""
    if strategy not in STRATEGIES:
        raise ValueError(f"{where}.strategy: {strategy!r} is not one of {list(STRATEGIES)}")
    if deepspeed_config not in DEEPSPEED_CONFIGS:
        deepspeed_config = os.path.expandvars(os.path.expanduser(deepspeed_config))
    if strategy == "deepspeed":
        load_config(deepspeed_config, where)
    elif deepspeed_config != DEEPSPEED_CONFIGS[0]:
        raise ValueError(f"{where}.deepspeed_config: applies to strategy: deepspeed only")
    return deepspeed_config


__all__ = [
    "WHOLE_MODEL",
    "check_strategy",
    "DEEPSPEED_CONFIGS",
    "STRATEGIES",
    "StageSetup",
    "StepResult",
    "Strategy",
    "barrier",
    "gather_objects",
    "load_config",
    "reduce_sum",
]

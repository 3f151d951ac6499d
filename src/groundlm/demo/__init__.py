"""`groundlm demo`: the `shapes` recipe trained from scratch within a time budget on this machine, evaluated on
every ShapesWorld task, with a report (`run.py`); the schedule fitted to the budget (`schedule.py`); this
machine's training speed per stage, measured once and cached (`calibrate.py`)."""

from .run import TARGETS, print_summary, run_demo, targets_table
from .schedule import (
    DEFAULT_MINUTES,
    EVAL_SCENES,
    OVERRUN_MINUTES,
    QUICK_MINUTES,
    SUSTAINED_SPEED,
    DemoConfig,
    StageFitter,
    budget_minutes,
    fixed_minutes,
    scale_recipe,
)

__all__ = [
    "DEFAULT_MINUTES",
    "EVAL_SCENES",
    "OVERRUN_MINUTES",
    "QUICK_MINUTES",
    "SUSTAINED_SPEED",
    "TARGETS",
    "DemoConfig",
    "StageFitter",
    "budget_minutes",
    "fixed_minutes",
    "print_summary",
    "run_demo",
    "scale_recipe",
    "targets_table",
]

"""Training: recipes of stages, one explicit loop (DDP, FSDP or DeepSpeed per stage), exact resume.

    from groundlm.train import load_recipe, train
    train(load_recipe("shapes"), "runs/shapes")

Files: `recipe.py` (YAML -> typed recipe), `build.py` (the starting model), `params.py` (what trains, LoRA),
`sources.py` (data of a stage), `objectives.py` (what a stage optimises: `lm`, and `dense_patches` with
`dense.py`; `soft_targets.py`), `loop.py` (the loop), `control.py` (hooks, stop requests, run state),
`checkpoint.py` (atomic, pickle-free checkpoints), `strategies/` (DDP, FSDP2, DeepSpeed ZeRO; docs/scaling.md),
`precision.py` (a stage's numerics and Accelerator),
`packing.py` and `optim.py` (less padding, AdamW and the schedule), `monitor.py` (progress bar, metrics log),
`plots.py` (loss curves), `recipes/*.yaml` (shipped recipes).
"""

from .loop import TrainHooks, TrainingStopped, train
from .recipe import Recipe, RecipeError, dry_run, load_recipe, override_steps, shipped_recipes

__all__ = [
    "Recipe",
    "RecipeError",
    "TrainHooks",
    "TrainingStopped",
    "dry_run",
    "load_recipe",
    "override_steps",
    "shipped_recipes",
    "train",
]

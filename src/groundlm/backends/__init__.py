"""Other model families behind groundlm's API: transformers checkpoints of Qwen2.5-VL, Florence-2, PaliGemma
and Kosmos-2, loaded by `groundlm.load` and answered through the same `GroundLM` (docs/other-models.md).

A backend is a family's processor (`base.FamilyProcessor`: its prompts per groundlm task, its frame, its
location codec from `location/`, its token layout) plus its transformers model, decoded by the family's own
`generate` through `generation.transformers_loop`. `BACKENDS` maps a checkpoint's `config.json` `model_type`
to the function loading it; this package is the only place that knows the family names.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from . import florence2, kosmos2, paligemma, qwen2_5_vl
from .base import FamilyProcessor
from .generation import transformers_loop
from .tasks import UnsupportedTask, read_task

# model_type -> (directory, dtype) -> (model, processor)
BACKENDS: dict[str, Callable[[Path, torch.dtype | None], tuple[object, FamilyProcessor]]] = {
    "qwen2_5_vl": qwen2_5_vl.load,
    "florence2": florence2.load,
    "paligemma": paligemma.load,
    "kosmos-2": kosmos2.load,
}


def family_of(directory: Path) -> str | None:
    """The `model_type` of a directory's `config.json` when a backend serves it, else None (a groundlm model
    directory, or no config at all)."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        return None
    try:
        model_type = json.loads(path.read_text()).get("model_type")
    except (ValueError, AttributeError) as err:
        raise ValueError(f"{path}: not a JSON object ({err})") from err
    return model_type if model_type in BACKENDS else None


def load_family(directory: Path, dtype: torch.dtype | None) -> tuple[object, FamilyProcessor]:
    """The model and processor of a family checkpoint (`family_of(directory)` must name one)."""
    family = family_of(directory)
    if family is None:
        raise ValueError(f"{directory} is not a checkpoint of {', '.join(BACKENDS)}")
    return BACKENDS[family](Path(directory), dtype)


__all__ = ["BACKENDS", "FamilyProcessor", "UnsupportedTask", "family_of", "load_family", "read_task",
           "transformers_loop"]

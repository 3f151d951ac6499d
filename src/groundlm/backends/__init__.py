"""Other model families behind groundlm's API: transformers checkpoints of Qwen2.5-VL, Florence-2, PaliGemma
and Kosmos-2, loaded by `groundlm.load` and answered through the same `GroundLM` (docs/other-models.md).

A backend is a family's processor (`base.FamilyProcessor`: its prompts per groundlm task, its frame, its
location codec from `location/`, its token layout) plus its transformers model, decoded by the family's own
`generate` through `generation.transformers_loop`. `BACKENDS` maps a checkpoint's `config.json` `model_type`
to the function loading it; this package is the only place that knows the family names.

`TRAINABLE` are the families a recipe can start from (`model: {init_from: {kind: qwen2_5_vl, path: DIR}}`,
train/build.py): their token layout labels the answer, so `groundlm train` fine-tunes them on any records in
their own location format, and the trained model is saved in the family's own layout (docs/other-models.md).
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

# model_type -> (directory, dtype) -> (model, processor); the TRAINABLE ones also take `tiny=`
BACKENDS: dict[str, Callable[..., tuple[object, FamilyProcessor]]] = {
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


# The families `groundlm train` fine-tunes, with their processor class (its `tasks`: what the family can be
# trained on): their token layouts label the answer and they save themselves (FamilyProcessor.save_pretrained).
# Florence-2 and Kosmos-2 are served, not trained.
TRAINABLE: dict[str, type[FamilyProcessor]] = {
    "qwen2_5_vl": qwen2_5_vl.Qwen25VLFamily,
    "paligemma": paligemma.PaliGemmaFamily,
}


def load_for_training(
    kind: str, directory: Path, dtype: torch.dtype | None, *, tiny: bool = False
) -> tuple[object, FamilyProcessor]:
    """The model and processor a recipe's `init_from: {kind: KIND, path: DIR}` starts from; `tiny`: a random
    model of the family's architecture at a tiny size with the checkpoint's own tokenizer and processor (its
    weights are not read). The directory's `config.json` must be of family `kind`."""
    if kind not in TRAINABLE:
        raise ValueError(f"init_from.kind: {kind!r} is not a family groundlm trains ({', '.join(TRAINABLE)})")
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"init_from.path: {directory} is not a directory (a {kind} checkpoint)")
    found = family_of(directory)
    if found != kind:
        what = f"a {found} checkpoint" if found else "not a checkpoint of these families (no such model_type)"
        raise ValueError(f"init_from.path: {directory} is {what}, not {kind}; set init_from.kind to match")
    return BACKENDS[kind](Path(directory), dtype, tiny=tiny)


def load_family(directory: Path, dtype: torch.dtype | None) -> tuple[object, FamilyProcessor]:
    """The model and processor of a family checkpoint (`family_of(directory)` must name one)."""
    family = family_of(directory)
    if family is None:
        raise ValueError(f"{directory} is not a checkpoint of {', '.join(BACKENDS)}")
    return BACKENDS[family](Path(directory), dtype)


__all__ = ["BACKENDS", "TRAINABLE", "FamilyProcessor", "UnsupportedTask", "family_of", "load_family",
           "load_for_training", "read_task", "transformers_loop"]

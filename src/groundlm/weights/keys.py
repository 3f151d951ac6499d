"""Reading a published checkpoint's tensors and matching them, key by key, to a groundlm model.

Every importer renames a checkpoint's keys into groundlm's and hands them to `match_weights`, which is strict:
a source key that maps to nothing, an expected weight nothing maps to, or a shape that differs is an error
naming the keys (never a non-strict load that leaves random weights behind). What a groundlm model expects
comes from its config alone (`expected_weights`: the model built on the meta device, no memory used).
Pickled checkpoints are read with `torch.load(weights_only=True)`: tensors and plain containers only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file

# How many names an error lists before it says "... and N more".
SHOWN = 20


class WeightsError(ValueError):
    """A checkpoint that cannot become a groundlm model; the message names the file, field or keys."""


class WrongKind(WeightsError):
    """The source is not in the layout the chosen importer reads (`weights.import_model` then says which
    layout it does look like)."""


def names(keys: Iterable[str]) -> str:
    """Sorted keys for an error message, the first `SHOWN` of them."""
    keys = sorted(keys)
    shown = ", ".join(keys[:SHOWN])
    return shown + (f", ... and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")


def read_json(path: Path) -> dict:
    """A JSON object from `path`, or a WeightsError naming the file."""
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path}: cannot read JSON: {err}") from err
    if not isinstance(value, dict):
        raise WeightsError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def load_pickle(path: Path) -> object:
    """A torch pickle read with `weights_only=True` (tensors and plain containers; no code runs)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise WeightsError(f"{path}: not a readable torch checkpoint (loaded with weights_only=True): {err}") from err


def as_state_dict(value: object, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(value, dict) or not all(isinstance(v, torch.Tensor) for v in value.values()):
        raise WeightsError(f"{path}: expected a flat mapping of names to tensors (a state dict)")
    return dict(value)


def read_file(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one `.safetensors` file or one torch pickle (`.bin`, `.pt`, `.pth`)."""
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except Exception as err:  # safetensors raises its own error types for bad headers
            raise WeightsError(f"{path}: not a readable safetensors file: {err}") from err
    return as_state_dict(load_pickle(path), path)


# The weight files of a transformers directory, in the order they are looked for: single file, then shards.
_SINGLE = ("model.safetensors", "pytorch_model.bin")
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a transformers-style directory (one file, or the shards its index names)."""
    for name in _SINGLE:
        if (directory / name).is_file():
            return [directory / name]
    for name in _INDEXES:
        if (directory / name).is_file():
            index = read_json(directory / name)
            shards = sorted(set((index.get("weight_map") or {}).values()))
            if not shards:
                raise WeightsError(f"{directory / name}: weight_map is empty or missing")
            missing = [s for s in shards if not (directory / s).is_file()]
            if missing:
                raise WeightsError(f"{directory / name} names shards that are not there: {names(missing)}")
            return [directory / s for s in shards]
    raise WeightsError(
        f"{directory}: no weights found (looked for {', '.join(_SINGLE + _INDEXES)})"
    )


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a weight file, or of a directory's weight files (`weight_files`)."""
    files = weight_files(path) if path.is_dir() else [path]
    state: dict[str, torch.Tensor] = {}
    for file in files:
        part = read_file(file)
        twice = set(part) & set(state)
        if twice:
            raise WeightsError(f"{file}: keys also in an earlier shard: {names(twice)}")
        state.update(part)
    return state


def expected_weights(config) -> tuple[dict[str, torch.Size], dict[str, str]]:
    """What a groundlm model of `config` holds: {key: shape}, and its tied keys {copy: source}.

    Built on the meta device, so even a 7B config costs no memory and no initialisation.
    """
    from ..modeling import GroundLMForConditionalGeneration

    with torch.device("meta"):
        model = GroundLMForConditionalGeneration(config)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
    return shapes, tied


def match_weights(
    source: Mapping[str, torch.Tensor],
    rename: Callable[[str], str | None],
    expected: Mapping[str, torch.Size],
    *,
    where: str,
    optional: Iterable[str] = (),
) -> dict[str, torch.Tensor]:
    """`source`'s tensors under groundlm's names (`rename(key)`; None: the key has no place), strictly.

    Raises a WeightsError naming every unknown key (no place, or a place the model does not have), every
    expected key nothing maps to (except `optional` ones, e.g. a tied lm_head) and every shape mismatch.
    """
    out: dict[str, torch.Tensor] = {}
    unknown, clashes = [], []
    for key, tensor in source.items():
        target = rename(key)
        if target is None or target not in expected:
            unknown.append(key)
        elif target in out:
            clashes.append(f"{key} -> {target}")
        else:
            out[target] = tensor
    missing = set(expected) - set(out) - set(optional)
    shapes = [
        f"{k}: checkpoint {tuple(t.shape)}, model {tuple(expected[k])}"
        for k, t in sorted(out.items()) if t.shape != expected[k]
    ]
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} unknown key(s) (no place in the groundlm model): {names(unknown)}")
    if missing:
        problems.append(f"{len(missing)} missing key(s) (groundlm weights nothing provides): {names(missing)}")
    if clashes:
        problems.append(f"key(s) mapping to the same weight: {names(clashes)}")
    if shapes:
        problems.append(f"shape mismatch: {'; '.join(shapes[:SHOWN])}")
    if problems:
        raise WeightsError(f"{where}: " + "; ".join(problems))
    return out


def check_tied(weights: dict[str, torch.Tensor], tied: Mapping[str, str], where: str) -> dict[str, torch.Tensor]:
    """`weights` without the tied copies (the model ties them on load); a copy that differs from its source
    is an error (the config says tied, the checkpoint disagrees)."""
    for copy, original in tied.items():
        if copy in weights and original in weights and not torch.equal(weights[copy], weights[original]):
            raise WeightsError(f"{where}: {copy} is tied to {original} by the config but holds other values")
    return {k: v for k, v in weights.items() if k not in tied}


__all__ = [
    "WeightsError",
    "WrongKind",
    "check_tied",
    "expected_weights",
    "load_pickle",
    "match_weights",
    "names",
    "read_file",
    "read_json",
    "read_state_dict",
    "weight_files",
]

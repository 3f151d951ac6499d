"""Atomic, pickle-free checkpoints that resume a run exactly.

Layout under OUT/checkpoints/:

    step-00000120/          one directory per checkpoint (global optimizer step)
      weights.safetensors   the parameters trained so far (canonical names, see params.py)
      optimizer.safetensors the optimizer's tensors (Adam moments, step counts)    } strategy: ddp
      optimizer.json        the rest of the optimizer state, tensors replaced by references }
      fsdp/, deepspeed/     the sharded model and optimizer state, one file per process (train/strategies/)
      state.json            stage, step, scheduler, mixture position, counters, LoRA spec, trained names
      rng-<rank>.json       python, numpy and torch RNG states of each process
      recipe.yaml           the resolved recipe
    latest                  the name of the newest complete checkpoint

A checkpoint is written into `.tmp-step-…` and renamed into place once complete; `latest` is then replaced
with `os.replace`. A crash at any moment leaves either the old or the new checkpoint, never half of one.
Nothing groundlm writes is pickled: tensors go to safetensors, everything else to JSON. The sharded engines'
own files are theirs (DCP's metadata and DeepSpeed's partitions are pickles; DeepSpeed's are read with
`weights_only=True`, strategies/deepspeed.py): resume those only from your own run directory.

Several processes write into one directory that the main process creates: the run directory must be on a
filesystem every node sees (docs/scaling.md); a process that cannot see it stops with an error naming it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

CHECKPOINTS = "checkpoints"
LATEST = "latest"
_TMP = ".tmp-"


# ------------------------------------------------------------------------------------------------------------
# Nested state <-> (JSON skeleton, flat tensors)


def flatten_state(
    obj: Any, tensors: dict[str, torch.Tensor] | None = None, path: str = ""
) -> tuple[Any, dict]:
    """Split nested state (dicts, lists, tuples, numbers, tensors) into a JSON skeleton and named tensors.

    Tensors become `{"__tensor__": name}`; dicts with non-string keys (an optimizer's integer parameter ids)
    become `{"__items__": [[key, value], ...]}` and tuples `{"__tuple__": [...]}`, so `unflatten_state`
    rebuilds exactly the same types.
    """
    tensors = {} if tensors is None else tensors
    if isinstance(obj, torch.Tensor):
        name = path or "tensor"
        tensors[name] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": name}, tensors
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {
                k: flatten_state(v, tensors, f"{path}.{k}" if path else k)[0] for k, v in obj.items()
            }, tensors
        items = [
            [flatten_state(k, tensors)[0], flatten_state(v, tensors, f"{path}.{k}")[0]]
            for k, v in obj.items()
        ]
        return {"__items__": items}, tensors
    if isinstance(obj, tuple | list):
        values = [flatten_state(v, tensors, f"{path}.{i}")[0] for i, v in enumerate(obj)]
        return ({"__tuple__": values} if isinstance(obj, tuple) else values), tensors
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}, tensors
    if isinstance(obj, np.integer | np.floating):
        return obj.item(), tensors
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj, tensors
    raise TypeError(f"cannot store {type(obj).__name__} at {path or '<root>'} in a checkpoint without pickle")


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `flatten_state`."""
    if isinstance(skeleton, dict):
        if "__tensor__" in skeleton:
            return tensors[skeleton["__tensor__"]]
        if "__items__" in skeleton:
            return {
                unflatten_state(k, tensors): unflatten_state(v, tensors) for k, v in skeleton["__items__"]
            }
        if "__tuple__" in skeleton:
            return tuple(unflatten_state(v, tensors) for v in skeleton["__tuple__"])
        if "__ndarray__" in skeleton:
            return np.asarray(skeleton["__ndarray__"], dtype=skeleton["dtype"])
        return {k: unflatten_state(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


# ------------------------------------------------------------------------------------------------------------
# RNG


def rng_state() -> dict:
    """The python, numpy and torch (CPU, and CUDA when present) RNG states, JSON-ready."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return flatten_state(state)[0]


def set_rng_state(skeleton: dict) -> None:
    """Restore what `rng_state` returned."""
    state = unflatten_state(skeleton, {})
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# ------------------------------------------------------------------------------------------------------------
# Writing


def _write(path: Path, data: bytes) -> None:
    """Write and fsync, so a rename that follows never exposes an unwritten file after a power loss."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def step_name(global_step: int) -> str:
    """The directory name of the checkpoint at a global step."""
    return f"step-{global_step:08d}"


def begin(out: str | Path, global_step: int) -> Path:
    """(Main process.) A fresh temporary directory for the checkpoint of `global_step`; stale ones go."""
    root = Path(out) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f"{_TMP}*"):  # left by a crash mid-write
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f"{_TMP}{step_name(global_step)}"
    tmp.mkdir()
    return tmp


def temp_dir(out: str | Path, global_step: int) -> Path:
    """The temporary directory `begin` made (for the other processes, after a barrier)."""
    return Path(out) / CHECKPOINTS / f"{_TMP}{step_name(global_step)}"


def write_rank(tmp: Path, rank: int) -> None:
    """(Every process.) This process's RNG states."""
    _write(tmp / f"rng-{rank}.json", json.dumps(rng_state()).encode())


def write_state(tmp: Path, skeleton_name: str, tensors_name: str, state: dict) -> None:
    """Nested state (an optimizer's) as a JSON skeleton and a safetensors file of its tensors."""
    skeleton, tensors = flatten_state(state)
    _write(tmp / tensors_name, save_safetensors(tensors))
    _write(tmp / skeleton_name, json.dumps(skeleton).encode())


def read_state(path: Path, skeleton_name: str, tensors_name: str) -> dict:
    """What `write_state` wrote."""
    tensors = load_safetensors((path / tensors_name).read_bytes())
    return unflatten_state(json.loads((path / skeleton_name).read_text()), tensors)


def write_main(
    tmp: Path,
    *,
    weights: dict[str, torch.Tensor],
    optimizer: dict | None = None,
    state: dict,
    recipe_yaml: str,
) -> None:
    """(Main process.) Weights, (a whole-model) optimizer, loop state and recipe."""
    _write(tmp / "weights.safetensors", save_safetensors(weights))
    if optimizer is not None:
        write_state(tmp, "optimizer.json", "optimizer.safetensors", optimizer)
    _write(tmp / "state.json", json.dumps(flatten_state(state)[0], indent=1).encode())
    _write(tmp / "recipe.yaml", recipe_yaml.encode())


def replace_dir(tmp: Path, target: Path, old: Path) -> None:
    """Rename the finished directory `tmp` to `target`; a `target` already there is renamed to `old` first and
    then removed, so at every moment one complete directory exists under one of the two names."""
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def commit(out: str | Path, global_step: int, keep: int = 2) -> Path:
    """(Main process.) Rename the finished temporary directory into place, point `latest` at it, prune."""
    root = Path(out) / CHECKPOINTS
    final = root / step_name(global_step)
    tmp = temp_dir(out, global_step)
    # Saved already at this step (a stop right after a stage ended): the newer state wins. Between the two
    # renames `latest` names a missing directory, and `latest()` falls back to the newest complete one.
    replace_dir(tmp, final, root / f"{_TMP}old-{final.name}")
    pointer = root / f"{LATEST}.tmp"
    _write(pointer, final.name.encode())
    os.replace(pointer, root / LATEST)
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in done[:-keep] if keep > 0 else []:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def save(
    out: str | Path,
    global_step: int,
    *,
    rank: int,
    main: bool,
    barrier: Callable[[], None],
    contents: Callable[[], dict],
    shards: Callable[[Path], None] | None = None,
) -> Path:
    """Write the checkpoint of `global_step`; every process calls it. Returns the checkpoint's directory.

    `contents()` is asked on the main process only, for `write_main`'s keyword arguments; `shards(tmp)` on
    every process, to write its share of a sharded state; `barrier()` waits for every process (the others must
    not write before the directory exists, nor go on before it is committed)."""
    if main:
        begin(out, global_step)
    barrier()
    tmp = temp_dir(out, global_step)
    if not tmp.is_dir():
        raise FileNotFoundError(
            f"process {rank} cannot see the checkpoint directory {tmp} that the main process created: "
            "several nodes need the run directory (--out) on a filesystem they all share (docs/scaling.md)"
        )
    write_rank(tmp, rank)
    if shards is not None:
        shards(tmp)
    if main:
        write_main(tmp, **contents())
    barrier()
    final = Path(out) / CHECKPOINTS / step_name(global_step)
    if main:
        final = commit(out, global_step)
    barrier()
    return final


# ------------------------------------------------------------------------------------------------------------
# Reading


def latest(out: str | Path) -> Path | None:
    """The newest complete checkpoint of a run directory, or None."""
    root = Path(out) / CHECKPOINTS
    pointer = root / LATEST
    if pointer.is_file():
        path = root / pointer.read_text().strip()
        if (path / "state.json").is_file():
            return path
    # No pointer (a crash between rename and pointer update): the newest renamed directory is complete.
    done = sorted(p for p in root.glob("step-*") if (p / "state.json").is_file())
    return done[-1] if done else None


@dataclass
class Checkpoint:
    """A checkpoint read back: where it is, the trained weights, loop state, this rank's RNG (the optimizer's
    state is read by the stage's strategy, each process its own share)."""

    path: Path
    weights: dict[str, torch.Tensor]
    state: dict
    rng: dict | None
    recipe_yaml: str


def read(path: str | Path, rank: int = 0) -> Checkpoint:
    """Read a checkpoint directory (no pickle anywhere)."""
    path = Path(path)
    weights = load_safetensors((path / "weights.safetensors").read_bytes())
    state = unflatten_state(json.loads((path / "state.json").read_text()), {})
    rng_file = path / f"rng-{rank}.json"
    rng = json.loads(rng_file.read_text()) if rng_file.is_file() else None
    return Checkpoint(path, weights, state, rng, (path / "recipe.yaml").read_text())


def to_resume(out: str | Path, resume: bool, recipe_yaml: str, rank: int = 0) -> Checkpoint | None:
    """The newest checkpoint of run directory `out` read for process `rank`, or None for a new run.

    A directory that holds checkpoints needs `resume`, and a resumed run the recipe it was trained with."""
    found = latest(out)
    if found is None:
        return None
    if not resume:
        raise FileExistsError(
            f"{out} already holds a run (checkpoint {found.name}); pass --resume to continue it, or another --out"
        )
    saved = read(found, rank)
    if saved.recipe_yaml != recipe_yaml:
        raise ValueError(
            f"the recipe differs from the one {found} was trained with; resume with the same recipe "
            f"(saved as {found / 'recipe.yaml'}) or start a new run in another --out"
        )
    return saved

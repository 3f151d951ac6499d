"""The demo's pretrained parts: a vision tower that saw only images and a language model that saw only text.

The demo is MiniGPT-v2's recipe in miniature: pretrained parts, a new connector, then every task. The parts
are made by the project's own commands and shipped in the package (`demo/parts/`), so `make demo` loads them
through the same path as CLIP and Vicuna (`vision_tower:` / `language_model:` in the `shapes` recipe):

    groundlm pretrain tower    --out DIR   # recipe `shapes-tower`: dense_patches on ShapesWorld images
    groundlm pretrain language --out DIR   # recipe `shapes-language`: every task over scenes written as text

Each trains its recipe into `DIR/run` (checkpoints, metrics, resumable with the same command) and writes the
part to `DIR/part`: the tower as a CLIP vision model with its `preprocessor_config.json`, the language model
as a Llama causal LM with its tokenizer. The same seed on the same machine (and thread count) gives the same
losses at every step and the same bytes. What each part saw, how long it took and its numbers are in
docs/recipes.md ("The demo's pretrained parts").
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..images import CLIP_MEAN, CLIP_STD
from ..train.monitor import read_metrics

# Where the shipped parts live inside the package (`groundlm:demo/parts/NAME` in a recipe).
SHIPPED = Path(__file__).resolve().parent / "parts"
MAX_SHARD = "3MB"


@dataclass(frozen=True)
class Part:
    """A pretrained part: the recipe that makes it and the module of the trained model it keeps."""

    recipe: str
    module: str  # attribute of GroundLMForConditionalGeneration: vision_tower | language_model
    shipped: str  # the folder name under `demo/parts/`


PARTS: dict[str, Part] = {
    "tower": Part("shapes-tower", "vision_tower", "shapes-tower"),
    "language": Part("shapes-language", "language_model", "shapes-language"),
}


def _image_processor_config(size: int) -> dict:
    """A CLIP image processor's settings that give groundlm's own pixels (`build.image_stats` reads them)."""
    return {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": size},
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
    }


def save_part(name: str, model_dir: str | Path, out: str | Path, *, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write part `name` of the trained groundlm model in `model_dir` to `out`, in `dtype` (bf16 halves the
    bytes the package ships; training loads it in the recipe's dtype)."""
    from ..weights.directory import load_model

    part = PARTS[name]
    model, processor = load_model(Path(model_dir))
    module = getattr(model, part.module).to(dtype)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # the weights of an earlier save go first: transformers would load a stale single file over a new index
    for stale in [*out.glob("model*.safetensors"), *out.glob("model.safetensors.index.json")]:
        stale.unlink()
    # shards stay under the repository's 4 MB per tracked file (transformers' loaders read the index)
    module.save_pretrained(out, max_shard_size=MAX_SHARD)
    if part.module == "vision_tower":
        config = _image_processor_config(model.config.vision_config.image_size)
        (out / "preprocessor_config.json").write_text(json.dumps(config, indent=2) + "\n")
    else:
        processor.tokenizer.save_pretrained(out)
    return out


def pretrain(name: str, out: str | Path, *, steps: int | None = None, progress: bool = True) -> dict:
    """Train part `name`'s recipe into OUT/run (resuming a run there) and write the part to OUT/part.

    Returns the summary written to OUT/part/pretrain.json: recipe, seed, steps, samples, the last losses, threads.
    """
    from ..train import load_recipe, override_steps, train
    from ..train.checkpoint import latest

    if name not in PARTS:
        raise ValueError(f"unknown part {name!r}; choose one of {sorted(PARTS)}")
    part = PARTS[name]
    recipe = load_recipe(part.recipe)
    if steps is not None:
        recipe = override_steps(recipe, steps)
    out = Path(out)
    run = out / "run"
    resume = latest(run) is not None
    model_dir = train(recipe, run, resume=resume, progress=progress)
    saved = save_part(name, model_dir, out / "part")
    rows = read_metrics(run / "metrics.jsonl")
    tail = rows[-50:]
    tasks: dict[str, list[float]] = {}
    for row in tail:
        for task, loss in (row.get("task_loss") or {}).items():
            tasks.setdefault(task, []).append(loss)
    summary = {
        "part": name,
        "recipe": part.recipe,
        "seed": recipe.seed,
        "steps": len(rows),
        "samples": sum(s.steps * s.batch_size for s in recipe.stages),
        "loss_last_50": round(sum(r["loss"] for r in tail) / max(len(tail), 1), 4),
        "task_loss_last_50": {t: round(sum(v) / len(v), 4) for t, v in sorted(tasks.items())},
        "threads": torch.get_num_threads(),
    }
    (saved / "pretrain.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary

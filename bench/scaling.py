"""Scaling of a training step: with image resolution, with the number of image tokens, and over two processes.

1. Step time at 64, 112 and 224 px with a fixed 8-px patch (64, 196, 784 patches), for the `mlp2x_gelu`
   connector (one image token per patch) and `concat4` (MiniGPT-v2: 4 patches per token), on the tiny
   model's widths; steps as bench/train_throughput.py trains them (tower frozen, SDPA, length-grouped,
   fused AdamW, fp32).
2. `groundlm train` on a recipe (ShapesWorld, every task, fp32) as two gloo processes with one thread each
   (torchrun, the loop's DDP path) against one process with two threads, at the same global batch: the
   step time is the median of the loop's own `samples_per_s` in metrics.jsonl after two warm-up steps, so
   start-up and the final save do not count.

    .venv/bin/python bench/scaling.py [--batch-size 8] [--steps 5] [--ddp-preset small] [--ddp-steps 12]
    .venv/bin/python bench/scaling.py --smoke     # seconds per part: proves the script runs

Run it alone: the two-process comparison needs both cores free.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from train_throughput import Variant, groundlm_step, model_for, step_batches

from groundlm.train.monitor import read_metrics

ROOT = Path(__file__).resolve().parents[1]
RESOLUTIONS = (64, 112, 224)
PATCH = 8
CONNECTORS = ("mlp2x_gelu", "concat4")
FRAMEWORK = Variant("groundlm", attention="sdpa", grouped=True, fused=True)


def step_seconds(image_size: int, connector: str, batch_size: int, steps: int) -> tuple[float, int, int]:
    """Mean seconds of a training step after one warm-up step; also the image tokens and mean tokens/sample."""
    model, processor = model_for("tiny", image_size=image_size, patch_size=PATCH, connector=connector)
    batches = step_batches(processor, steps + 1, batch_size)
    step = groundlm_step(model.train(), processor, FRAMEWORK)
    step(batches[0])
    start = time.perf_counter()
    for samples in batches[1:]:
        step(samples)
    seconds = (time.perf_counter() - start) / steps
    tokens = sum(len(s.input_ids) for b in batches for s in b) // sum(len(b) for b in batches)
    return seconds, processor.config.num_image_tokens, tokens


def ddp_recipe(preset: str, batch_size: int, steps: int) -> dict:
    """A one-stage recipe on ShapesWorld (every task, fp32); `batch_size` per process."""
    return {
        "name": "scaling",
        "seed": 0,
        "model": {"preset": preset},
        "stages": [
            {
                "name": "lm",
                "train": {"connector": 1e-3, "language_model": 1e-3},
                "data": [{"name": "shapes", "shapes": {"scenes": 2000}}],
                "steps": steps,
                "batch_size": batch_size,
                "precision": "fp32",
                "group_by_length": True,
            }
        ],
    }


def train_seconds_per_step(
    processes: int, threads: int, preset: str, global_batch: int, steps: int, tmp: Path
) -> float:
    """Median step time of `groundlm train` with `processes` x `threads`, from the loop's own metrics."""
    recipe = tmp / f"recipe-{processes}.yaml"
    recipe.write_text(yaml.safe_dump(ddp_recipe(preset, global_batch // processes, steps)))
    out = tmp / f"run-{processes}"
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command = [
        sys.executable,
        *(launcher if processes > 1 else []),
        "-m",
        "groundlm",
        "train",
        str(recipe),
        "--out",
        str(out),
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"{processes} process(es) failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    rows = read_metrics(out / "metrics.jsonl")[2:]  # the first steps warm up allocator and kernels
    return statistics.median(global_batch / r["samples_per_s"] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ddp-preset", default="small")
    parser.add_argument("--ddp-batch", type=int, default=8, help="global batch of the two-process comparison")
    parser.add_argument("--ddp-steps", type=int, default=12)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    resolutions = RESOLUTIONS
    if args.smoke:
        args.batch_size, args.steps, args.ddp_preset, args.ddp_batch, args.ddp_steps = 2, 1, "tiny", 4, 4
        resolutions = RESOLUTIONS[:2]
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads; tiny widths, patch {PATCH}, batch {args.batch_size}"
    )

    print("\n| image px | connector | image tokens | tokens/sample | step (ms) |")
    print("|---:|---|---:|---:|---:|")
    for size in resolutions:
        for connector in CONNECTORS:
            seconds, image_tokens, tokens = step_seconds(size, connector, args.batch_size, args.steps)
            print(f"| {size} | {connector} | {image_tokens} | {tokens} | {seconds * 1e3:.0f} |", flush=True)

    with tempfile.TemporaryDirectory(prefix="groundlm-scaling-") as tmp:
        one = train_seconds_per_step(1, 2, args.ddp_preset, args.ddp_batch, args.ddp_steps, Path(tmp))
        two = train_seconds_per_step(2, 1, args.ddp_preset, args.ddp_batch, args.ddp_steps, Path(tmp))
    print(f"\n`groundlm train`, preset {args.ddp_preset}, global batch {args.ddp_batch}:")
    print("\n| processes x threads | step (ms) | speed-up |")
    print("|---|---:|---:|")
    print(f"| 1 x 2 | {one * 1e3:.0f} | 1.00 |")
    print(f"| 2 x 1 (torchrun, DDP) | {two * 1e3:.0f} | {one / two:.2f} |")


if __name__ == "__main__":
    main()

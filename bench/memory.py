"""Peak resident memory of training: groundlm against transformers' LLaVA, same weights, batch and steps.

Each measurement runs in a subprocess of its own (this script with `--worker`), so one run's allocations never
count in another's peak. A worker builds groundlm's model (the baseline worker converts it to LLaVA and drops
the original), trains a few steps exactly as bench/train_throughput.py does (tower frozen, connector and
language model trained with AdamW), and prints `ru_maxrss` (peak RSS of the process) and the RSS right
before training.

    .venv/bin/python bench/memory.py [--size base] [--batch-size 8] [--steps 3]
    .venv/bin/python bench/memory.py --smoke     # the tiny size, 2 steps: proves the script runs

Run it alone: the figures are the process's own, but a busy machine stretches the run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import psutil
import torch
from train_throughput import Variant, baseline_step, groundlm_step, model_for, step_batches

from groundlm.export import to_llava

# The groundlm runs: the baseline's numerics, and the framework's speed-ups (fp32).
RUNS = {
    "baseline: LLaVA padded fp32": None,
    "groundlm padded fp32": Variant("padded", attention="sdpa"),
    "groundlm grouped + fused AdamW fp32": Variant("grouped", attention="sdpa", grouped=True, fused=True),
}


def worker(run: str, size: str, batch_size: int, steps: int, threads: int) -> dict:
    """Train `steps` steps of `run` in this process; its peak and pre-training RSS in MiB."""
    torch.set_num_threads(threads)
    model, processor = model_for(size)
    batches = step_batches(processor, steps, batch_size)
    variant = RUNS[run]
    if variant is None:
        trained = to_llava(model).train()
        del model
        gc.collect()
        step = baseline_step(trained, processor)
    else:
        model.train()
        step = groundlm_step(model, processor, variant)
    before = psutil.Process().memory_info().rss / 2**20
    for samples in batches:
        step(samples)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    return {"run": run, "peak_mib": peak, "before_mib": before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="base")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: the run this subprocess measures
    args = parser.parse_args()
    if args.smoke:
        args.size, args.steps, args.batch_size = "tiny", 2, 4
    if args.worker:
        print(json.dumps(worker(args.worker, args.size, args.batch_size, args.steps, args.threads)))
        return

    print(
        f"size {args.size}, batch {args.batch_size}, {args.steps} steps, {args.threads} threads, "
        f"torch {torch.__version__}; each run in its own process"
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    rows = []
    for run in RUNS:
        command = [
            sys.executable,
            str(Path(__file__)),
            "--worker",
            run,
            "--size",
            args.size,
            "--batch-size",
            str(args.batch_size),
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
        ]
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"{run} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    base = rows[0]["peak_mib"]
    print("\n| run | RSS before training (MiB) | peak RSS (MiB) | x baseline peak |")
    print("|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['run']} | {r['before_mib']:.0f} | {r['peak_mib']:.0f} | {r['peak_mib'] / base:.2f} |")


if __name__ == "__main__":
    main()

"""Train a recipe file under one or several processes, optionally dying by SIGKILL at a step.

    python tests/train_strategy_worker.py RECIPE OUT [--resume] [--kill-at STEP]
    torchrun --standalone --nproc_per_node 2 tests/train_strategy_worker.py RECIPE OUT ...

`--kill-at K`: every process sends itself SIGKILL in step K's first forward (after the checkpoints of the steps
before it were written): nothing of step K, and no shutdown code, runs.
"""

from __future__ import annotations

import os
import signal
import sys

import torch

torch.set_num_threads(1)  # each process gets one of the two shared cores

from groundlm.train import TrainHooks, load_recipe, train  # noqa: E402


def main() -> None:
    recipe_file, out = sys.argv[1], sys.argv[2]
    args = sys.argv[3:]
    kill_at = int(args[args.index("--kill-at") + 1]) if "--kill-at" in args else None

    def loss(step: int, value: torch.Tensor) -> torch.Tensor:
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return value

    world = int(os.environ.get("WORLD_SIZE", "1"))
    recipe = load_recipe(recipe_file, world_size=world)
    train(recipe, out, resume="--resume" in args, hooks=TrainHooks(loss=loss), progress=False)


if __name__ == "__main__":
    main()

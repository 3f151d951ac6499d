"""Run one step of the shipped shapes recipe's LM stage (fp32) and save what the two-process test compares.

    python tests/train_dist_worker.py OUT BATCH RESULT               # one process
    torchrun --standalone --nproc_per_node 2 tests/train_dist_worker.py OUT BATCH RESULT

Rank 0 writes the gradients of step 1 (summed over micro-batches and processes, before clipping) to
RESULT.safetensors and the number of processes to RESULT.json; the loss is in OUT/metrics.jsonl.
"""

from __future__ import annotations

import json
import os
import sys

import torch

torch.set_num_threads(1)  # each process gets one of the two shared cores

from safetensors.torch import save_file  # noqa: E402

from groundlm.train import TrainHooks, load_recipe, override_steps, train  # noqa: E402
from groundlm.train.params import named_parameters  # noqa: E402


def main() -> None:
    out, batch, result = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    recipe = override_steps(load_recipe("shapes"), 1)
    # The recipe's language-model stage (its first stage pretrains the tower with dense_patches).
    recipe.stages = [s for s in recipe.stages if s.objective == "lm"][:1]
    stage = recipe.stages[0]
    stage.batch_size = batch
    stage.precision = "fp32"
    stage.warmup_steps = 0
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))

    def grab(step: int, model: torch.nn.Module) -> None:
        if rank == 0:
            grads = {
                n: p.grad.detach().clone() for n, p in named_parameters(model).items() if p.grad is not None
            }
            save_file(grads, result + ".safetensors")
            with open(result + ".json", "w") as f:
                json.dump({"world": world}, f)

    train(recipe, out, hooks=TrainHooks(after_backward=grab), progress=False)


if __name__ == "__main__":
    main()

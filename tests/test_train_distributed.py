"""Two CPU processes (gloo, via torchrun) x batch B give the first-step loss and gradients of one process x 2B.

The loop divides each process's token-loss sum by the token count of the whole step (all processes), and DDP
averages gradients, so both runs compute the same per-token mean; only float summation order differs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from groundlm.train import TrainHooks, train
from groundlm.train.monitor import read_metrics
from groundlm.train.params import named_parameters
from groundlm.train.recipe import from_dict

from .train_helpers import ROOT, child_env, one_thread, tiny_recipe  # noqa: F401 (fixture)

WORKER = str(ROOT / "tests" / "train_dist_worker.py")
B = 4


def _run(command: list[str]) -> None:
    proc = subprocess.run(command, env=child_env(), cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


def test_two_processes_match_one_process_with_twice_the_batch(tmp_path):
    _run([sys.executable, WORKER, str(tmp_path / "one"), str(2 * B), str(tmp_path / "one-grads")])
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            WORKER,
            str(tmp_path / "two"),
            str(B),
            str(tmp_path / "two-grads"),
        ]
    )

    assert json.loads((tmp_path / "one-grads.json").read_text()) == {"world": 1}
    assert json.loads((tmp_path / "two-grads.json").read_text()) == {"world": 2}
    (one,) = read_metrics(tmp_path / "one" / "metrics.jsonl")
    (two,) = read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-5)
    assert two["task_loss"].keys() == one["task_loss"].keys()
    for task, value in one["task_loss"].items():
        assert two["task_loss"][task] == pytest.approx(value, rel=1e-5)
    assert two["grad_norm"] == pytest.approx(one["grad_norm"], rel=1e-4)
    g1, g2 = load_file(tmp_path / "one-grads.safetensors"), load_file(tmp_path / "two-grads.safetensors")
    assert g1.keys() == g2.keys() and len(g1) > 10
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-4, atol=1e-6, msg=name)
    assert (tmp_path / "two" / "model" / "model.safetensors").is_file()  # rank 0 saved the model once


def test_gradient_accumulation_matches_a_bigger_batch(tmp_path):
    """grad_accum 2 x batch B == grad_accum 1 x batch 2B (one source: the same samples either way)."""
    grads = {}

    def grab(key):
        def hook(step, model):
            grads[key] = {n: p.grad.clone() for n, p in named_parameters(model).items() if p.grad is not None}

        return hook

    train(
        from_dict(tiny_recipe(1, batch_size=2 * B, warmup_steps=0)),
        tmp_path / "big",
        hooks=TrainHooks(after_backward=grab("big")),
        progress=False,
    )
    train(
        from_dict(tiny_recipe(1, batch_size=B, grad_accum=2, warmup_steps=0)),
        tmp_path / "accum",
        hooks=TrainHooks(after_backward=grab("accum")),
        progress=False,
    )
    (big,) = read_metrics(tmp_path / "big" / "metrics.jsonl")
    (accum,) = read_metrics(tmp_path / "accum" / "metrics.jsonl")
    assert accum["loss"] == pytest.approx(big["loss"], rel=1e-5)
    for name, g in grads["big"].items():
        torch.testing.assert_close(grads["accum"][name], g, rtol=1e-4, atol=1e-6, msg=name)

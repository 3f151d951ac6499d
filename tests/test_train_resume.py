"""Exact resume: a run killed with SIGKILL and resumed logs the same losses, step for step, as one that was not."""

from __future__ import annotations

import signal
import subprocess
import time

from safetensors.torch import load_file

from groundlm.train import checkpoint
from groundlm.train.monitor import read_metrics

from .train_helpers import groundlm_train, tiny_recipe, write_recipe

STEPS = 40


def _finish(*args: str) -> str:
    proc = groundlm_train(*args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output[-3000:]
    return output


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_recipe(STEPS, save_every=5))

    _finish(str(recipe), "--out", str(tmp_path / "full"))

    killed = tmp_path / "killed"
    proc = groundlm_train(
        str(recipe), "--out", str(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while checkpoint.latest(killed) is None:
        assert proc.poll() is None, "the run ended before writing a checkpoint"
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (killed / "model").exists(), "the run finished before it was killed"
    at_kill = checkpoint.latest(killed)
    assert at_kill is not None
    logged_at_kill = len(read_metrics(killed / "metrics.jsonl"))
    assert logged_at_kill < STEPS

    output = _finish(str(recipe), "--out", str(killed), "--resume")
    assert f"resuming from {at_kill}" in output

    full = read_metrics(tmp_path / "full" / "metrics.jsonl")
    resumed = read_metrics(killed / "metrics.jsonl")
    assert [r["step"] for r in resumed] == list(
        range(1, STEPS + 1)
    )  # steps after the checkpoint were rewound
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]  # exactly equal, step for step
    assert [r["task_loss"] for r in resumed] == [r["task_loss"] for r in full]
    assert [r["lr"] for r in resumed] == [r["lr"] for r in full]
    a = load_file(tmp_path / "full" / "model" / "model.safetensors")
    b = load_file(killed / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)

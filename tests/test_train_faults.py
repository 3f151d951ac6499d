"""Faults: non-finite losses are skipped and counted, too many in a row stop the run with a checkpoint, and
Ctrl-C (SIGINT) saves a checkpoint from which the run resumes exactly."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from groundlm.train import TrainHooks, TrainingStopped, checkpoint, train
from groundlm.train.monitor import read_metrics
from groundlm.train.recipe import from_dict

from .train_helpers import one_thread, tiny_recipe  # noqa: F401 (fixture)


def _nan_at(steps):
    def hook(step, loss):
        return loss * float("nan") if step in steps else loss

    return hook


def test_nonfinite_loss_skips_the_update_and_is_counted(tmp_path):
    seen = {}

    def snapshot(step, model):
        seen[step] = model.connector.linear.weight.detach().clone()

    recipe = from_dict(tiny_recipe(5))
    train(recipe, tmp_path, hooks=TrainHooks(loss=_nan_at({3}), after_backward=snapshot), progress=False)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["skipped"] for r in rows] == [False, False, True, False, False]
    assert rows[2]["loss"] is None and rows[2]["grad_norm"] is None
    assert rows[-1]["nonfinite"] == 1
    assert all(r["loss"] is not None for i, r in enumerate(rows) if i != 2)
    # Step 3 did not update the weights; step 2 did.
    assert torch.equal(seen[3], seen[4])
    assert not torch.equal(seen[2], seen[3])
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_too_many_nonfinite_losses_stop_with_a_checkpoint(tmp_path):
    recipe = from_dict(tiny_recipe(6, max_nonfinite=3))
    with pytest.raises(TrainingStopped, match="3 non-finite losses in a row") as stopped:
        train(recipe, tmp_path, hooks=TrainHooks(loss=_nan_at({2, 3, 4, 5, 6})), progress=False)
    assert stopped.value.exit_code == 1
    saved = checkpoint.latest(tmp_path)
    assert saved == stopped.value.checkpoint_dir and saved.name == "step-00000004"
    state = checkpoint.read(saved).state
    assert state["nonfinite_run"] == 3 and state["stage_step"] == 4
    assert not (tmp_path / "model").exists()

    train(recipe, tmp_path, resume=True, progress=False)  # the data was fine after all
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["skipped"] for r in rows] == [False, True, True, True, False, False]
    assert (tmp_path / "model").is_dir()


def test_ctrl_c_saves_a_checkpoint_and_the_run_resumes_exactly(tmp_path):
    recipe = from_dict(tiny_recipe(6))
    train(recipe, tmp_path / "full", progress=False)
    # Python's default_int_handler, or SIG_IGN when the tests run in a background job (which ignores SIGINT)
    before = signal.getsignal(signal.SIGINT)

    def interrupt(step, loss):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C during step 3
        return loss

    with pytest.raises(TrainingStopped, match="interrupted at step 3") as stopped:
        train(recipe, tmp_path / "cut", hooks=TrainHooks(loss=interrupt), progress=False)
    assert stopped.value.exit_code == 130
    assert checkpoint.latest(tmp_path / "cut").name == "step-00000003"
    assert signal.getsignal(signal.SIGINT) is before  # the handler the run found is restored

    train(recipe, tmp_path / "cut", resume=True, progress=False)
    full = [r["loss"] for r in read_metrics(tmp_path / "full" / "metrics.jsonl")]
    cut = [r["loss"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl")]
    assert cut == full


def test_a_second_run_into_the_same_directory_needs_resume(tmp_path):
    recipe = from_dict(tiny_recipe(1))
    train(recipe, tmp_path, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(recipe, tmp_path, progress=False)
    other = from_dict(tiny_recipe(2))
    with pytest.raises(ValueError, match="recipe differs"):
        train(other, tmp_path, resume=True, progress=False)

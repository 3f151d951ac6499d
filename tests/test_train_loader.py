"""Batches built in worker processes (train/loader.py): the same batches and losses as building them inline,
and a run interrupted with batches prefetched ahead resumes at exactly the next one."""

from __future__ import annotations

import os
import signal

import pytest

from groundlm.train import TrainHooks, TrainingStopped, checkpoint, train
from groundlm.train.monitor import read_metrics
from groundlm.train.recipe import from_dict

from .train_helpers import one_thread, tiny_recipe  # noqa: F401 (fixture)


def _losses(out) -> list[float]:
    return [r["loss"] for r in read_metrics(out / "metrics.jsonl")]


def test_two_workers_give_the_inline_losses_and_resume_exactly_after_ctrl_c(tmp_path):
    inline = from_dict(tiny_recipe(6, num_workers=0))
    train(inline, tmp_path / "inline", progress=False)

    workers = from_dict(tiny_recipe(6, num_workers=2, prefetch=2))

    def interrupt(step, loss):
        if step == 3:  # the workers have built batches of steps 4 and later by now
            os.kill(os.getpid(), signal.SIGINT)
        return loss

    with pytest.raises(TrainingStopped, match="interrupted at step 3"):
        train(workers, tmp_path / "workers", hooks=TrainHooks(loss=interrupt), progress=False)
    assert checkpoint.latest(tmp_path / "workers").name == "step-00000003"
    train(workers, tmp_path / "workers", resume=True, progress=False)

    assert len(_losses(tmp_path / "inline")) == 6
    assert _losses(tmp_path / "workers") == _losses(tmp_path / "inline")  # exactly, step for step

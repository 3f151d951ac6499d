"""Shared pieces of the training tests: a tiny deterministic recipe and a way to run `groundlm train`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def tiny_recipe(steps: int = 8, **stage) -> dict:
    """A recipe small enough for a test: the tiny preset on four ShapesWorld tasks, fp32."""
    return {
        "name": "test",
        "seed": 3,
        "model": {"preset": "tiny"},
        "stages": [
            {
                "name": "lm",
                "train": {"vision_tower": 1e-3, "connector": 1e-3, "language_model": 1e-3},
                "data": [
                    {
                        "name": "shapes",
                        "shapes": {"tasks": ["caption", "vqa", "refer", "identify"], "scenes": 500},
                    }
                ],
                "steps": steps,
                "batch_size": 4,
                "warmup_steps": 2,
                "weight_decay": 0.01,
                "precision": "fp32",
                **stage,
            }
        ],
    }


def write_recipe(path: Path, recipe: dict) -> Path:
    """Write a recipe dict as YAML."""
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def child_env() -> dict:
    """Environment for training subprocesses: one thread each (deterministic, and 2 shared cores), offline."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


def groundlm_train(*args: str, **popen) -> subprocess.Popen:
    """Start `python -m groundlm train ARGS` in a subprocess."""
    return subprocess.Popen(
        [sys.executable, "-m", "groundlm", "train", *args], env=child_env(), cwd=ROOT, **popen
    )


@pytest.fixture(autouse=True)
def one_thread(restore_thread_count):
    """One torch thread for in-process training (the two cores are shared; competing threads crawl);
    conftest.py's `restore_thread_count` puts the count back after each test."""
    torch.set_num_threads(1)

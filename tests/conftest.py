"""Shared fixtures: paths to the read-only real data beside the project, and a tiny random model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
REALDATA = ROOT.parent / "shared" / "realdata"

torch.set_num_threads(2)


def realdata(*parts: str) -> Path:
    """A path under ../shared/realdata, or skip the test when that data is absent on this machine."""
    path = REALDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not present: {path}")
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A random tiny model written with `new_model` (the same path `groundlm new-model` takes)."""
    from groundlm.presets import new_model

    return new_model(tmp_path_factory.mktemp("models") / "tiny", "tiny", seed=0)

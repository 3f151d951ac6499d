"""Shared fixtures: paths to the read-only real data beside the project, and a tiny random model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# ../shared/realdata beside the project; GROUNDLM_REALDATA points elsewhere (a clone made in another folder)
REALDATA = Path(os.environ.get("GROUNDLM_REALDATA") or ROOT.parent / "shared" / "realdata")

torch.set_num_threads(2)


def _restoring_thread_count():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# The one place that restores torch's thread count: every test and every test module (its module-scoped
# fixtures may set it too) leaves it as it found it, whatever it set.
restore_thread_count = pytest.fixture(autouse=True, name="restore_thread_count")(_restoring_thread_count)
restore_module_thread_count = pytest.fixture(
    autouse=True, scope="module", name="restore_module_thread_count"
)(_restoring_thread_count)


@pytest.fixture(scope="module")
def module_one_thread(restore_module_thread_count):
    """One torch thread for a whole module (`pytestmark = pytest.mark.usefixtures("module_one_thread")`): its
    module-scoped models and servers run beside other processes on two shared cores, where competing threads
    crawl; the count is restored after the module."""
    torch.set_num_threads(1)


def realdata(*parts: str) -> Path:
    """A path under REALDATA, or skip the test when that data is absent on this machine."""
    path = REALDATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not present: {path}")
    return path


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    """A random tiny model written with `new_model` (the same path `groundlm new-model` takes)."""
    from groundlm.presets import new_model

    return new_model(tmp_path_factory.mktemp("models") / "tiny", "tiny", seed=0)

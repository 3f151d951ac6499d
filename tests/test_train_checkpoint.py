"""Checkpoint files: pickle-free state round trips, atomic writes, the `latest` pointer."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from groundlm.train import checkpoint


def _optimizer_state() -> dict:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return opt.state_dict()


def test_flatten_round_trip_keeps_types():
    state = _optimizer_state()
    skeleton, tensors = checkpoint.flatten_state(state)
    json.dumps(skeleton)  # the skeleton is plain JSON
    back = checkpoint.unflatten_state(json.loads(json.dumps(skeleton)), tensors)
    assert set(back["state"]) == {0, 1}  # integer parameter ids survive JSON
    assert back["param_groups"][0]["betas"] == (0.9, 0.95)  # tuples too
    for k in (0, 1):
        for name, value in state["state"][k].items():
            assert torch.equal(back["state"][k][name], value)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    opt.load_state_dict(back)  # what a resumed run does


def test_flatten_refuses_objects_that_would_need_pickle():
    with pytest.raises(TypeError, match="without pickle"):
        checkpoint.flatten_state({"fn": object()})


def test_rng_round_trip():
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    saved = json.loads(json.dumps(checkpoint.rng_state()))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    checkpoint.set_rng_state(saved)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def _write(out, step, value):
    tmp = checkpoint.begin(out, step)
    checkpoint.write_rank(tmp, 0)
    checkpoint.write_main(
        tmp,
        weights={"w": torch.full((2,), float(value))},
        optimizer=_optimizer_state(),
        state={"global_step": step},
        recipe_yaml="name: x\n",
    )
    return checkpoint.commit(out, step, keep=2)


def test_crash_mid_write_leaves_previous_checkpoint(tmp_path, monkeypatch):
    _write(tmp_path, 5, 5)
    real_write = checkpoint._write

    def dies_after_weights(path, data):
        real_write(path, data)
        if path.name == "weights.safetensors":
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(checkpoint, "_write", dies_after_weights)
    with pytest.raises(KeyboardInterrupt):
        _write(tmp_path, 10, 10)
    monkeypatch.setattr(checkpoint, "_write", real_write)
    found = checkpoint.latest(tmp_path)
    assert found.name == "step-00000005"
    ck = checkpoint.read(found)
    assert ck.state == {"global_step": 5} and ck.weights["w"].tolist() == [5.0, 5.0]
    assert ck.rng is not None
    assert checkpoint.read_state(found, "optimizer.json", "optimizer.safetensors").keys() == {
        "state",
        "param_groups",
    }
    # The next save clears the half-written directory and completes.
    assert _write(tmp_path, 10, 10).name == "step-00000010"
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_latest_pointer_falls_back_and_old_checkpoints_are_pruned(tmp_path):
    for step in (1, 2, 3):
        _write(tmp_path, step, step)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000002", "step-00000003"]
    (root / "latest").unlink()  # e.g. a crash between the rename and the pointer update
    assert checkpoint.latest(tmp_path).name == "step-00000003"
    assert checkpoint.latest(tmp_path / "nothing-here") is None


def test_checkpoint_holds_no_pickle(tmp_path):
    path = _write(tmp_path, 1, 1)
    for f in path.iterdir():
        data = f.read_bytes()
        assert not data.startswith(b"\x80"), f"{f.name} looks like a pickle"
        assert f.suffix in (".json", ".safetensors", ".yaml")


def test_a_process_that_cannot_see_the_checkpoint_directory_names_the_shared_filesystem(tmp_path):
    # Another node's rank 0 made the directory on its own disk: here it does not exist.
    with pytest.raises(FileNotFoundError, match="filesystem they all share") as err:
        checkpoint.save(tmp_path, 7, rank=1, main=False, barrier=lambda: None, contents=dict)
    assert str(checkpoint.temp_dir(tmp_path, 7)) in str(err.value)

"""GPU fast paths checked on a CPU for equality: the attention kernel a stage names (eager vs sdpa) and
padding-free packed rows in the loop give the same losses; trackers (`log_with`) get every step's metrics."""

from __future__ import annotations

import pytest

from groundlm.train import train
from groundlm.train.monitor import read_metrics
from groundlm.train.recipe import RecipeError, from_dict

from .train_helpers import one_thread, tiny_recipe  # noqa: F401 (fixture)

STEPS = 3


def _losses(tmp_path, name: str, **stage) -> list[float]:
    train(from_dict(tiny_recipe(STEPS, **stage)), tmp_path / name, progress=False)
    return [r["loss"] for r in read_metrics(tmp_path / name / "metrics.jsonl")]


def test_eager_and_sdpa_attention_give_the_same_losses(tmp_path):
    eager = _losses(tmp_path, "eager", attn_implementation="eager")
    sdpa = _losses(tmp_path, "sdpa", attn_implementation="sdpa")
    assert len(eager) == STEPS
    assert eager == pytest.approx(sdpa, abs=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_rows_in_the_loop_give_the_padded_losses(tmp_path, attention):
    padded = _losses(tmp_path, "padded", attn_implementation=attention)
    packed = _losses(tmp_path, "packed", attn_implementation=attention, packing=True)
    assert len(packed) == STEPS
    assert packed == pytest.approx(padded, abs=1e-5)


def test_an_attention_kernel_that_is_not_installed_names_the_field(tmp_path):
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("flash_attn is installed here")
    with pytest.raises(RecipeError, match=r"stages\[0\]\.attn_implementation: flash_attention_2"):
        train(from_dict(tiny_recipe(1, attn_implementation="flash_attention_2")), tmp_path, progress=False)


def test_tensorboard_gets_every_step_of_the_metrics_log(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = from_dict({**tiny_recipe(STEPS), "log_with": "tensorboard"})
    train(recipe, tmp_path, progress=False)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    logged = events.Scalars("loss")
    assert [e.step for e in logged] == [r["step"] for r in rows]
    assert [e.value for e in logged] == pytest.approx([r["loss"] for r in rows], rel=1e-6)  # stored as float32
    assert "task_loss/caption" in events.Tags()["scalars"]


def test_a_packed_micro_batch_is_one_row_without_padding():
    from groundlm.data.mixture import Mixture
    from groundlm.train.build import build_for_recipe
    from groundlm.train.loader import StageLoader
    from groundlm.train.objectives import OBJECTIVES
    from groundlm.train.sources import build_sources

    recipe = from_dict(tiny_recipe(1, packing=True))
    stage = recipe.stages[0]
    model, processor = build_for_recipe(recipe.model, seed=0)
    data = build_sources(stage.data, processor, "test", batch_size=4)
    objective = OBJECTIVES["lm"](stage, model, processor, seed=0)
    loader = StageLoader(data, processor, objective, Mixture(data.sources, batch_size=4), rank=0, batch_size=4,
                         packed=True)  # fmt: skip
    item = loader.next()
    counts = [int((item.owner == i).sum()) for i in range(4)]
    assert item.batch["input_ids"].shape == (1, sum(counts)) and min(counts) > 0  # every sample, no padding
    assert len(set(counts)) > 1  # samples of different lengths share the row
    assert "attention_mask" not in item.batch and item.batch["position_ids"][0, 0] == 0


def test_wandb_logs_offline_without_network(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the default must be offline
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(from_dict({**tiny_recipe(2), "log_with": "wandb"}), tmp_path, progress=False)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))  # the run's records, kept for `wandb sync`
    assert (tmp_path / "wandb-run-id").read_text() in runs[0].name

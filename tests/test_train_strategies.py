"""FSDP2, ZeRO-2 and ZeRO-3 (train/strategies/) under 2 CPU processes (gloo, torchrun, one thread each).

One recipe covers LoRA (on q_proj/v_proj, lr 2e-3), a trained connector at another rate (1e-3), a frozen
vision tower and frozen language-model weights, clipping (max_grad_norm 1.0: the first six gradient norms are
above it) and checkpoints every 3 steps. Per strategy two launches:

1. 2 processes x batch 2, killed by SIGKILL in step 9's forward (checkpoint of step 6 on disk; steps 1-8 logged);
2. `--resume`: steps 7-10 recomputed from the step-6 checkpoint, then OUT/model.

Checked: steps 1-10 equal the 1-process run with batch 4 (strategy ddp) within 1e-4; the resumed steps 7 and 8
equal the killed run's exactly (step 8 updates from the restored Adam moments); OUT/model equals the
consolidated weights of the last checkpoint (adapters merged), and every weight outside `train:` is
bit-identical to the model the recipe builds. A run without clipping differs from the reference by far more
than 1e-4, so matching the reference shows each strategy clips.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from groundlm.train.build import build_for_recipe
from groundlm.train.monitor import read_metrics
from groundlm.train.recipe import from_dict

from .test_train_recipes import parts  # noqa: F401 (fixture: tiny pretrained tower and language model)
from .train_helpers import ROOT, child_env, one_thread, tiny_recipe  # noqa: F401 (fixture)

pytest.importorskip("deepspeed", reason="pip install groundlm[deepspeed] (the Makefile installs it)")

WORKER = str(ROOT / "tests" / "train_strategy_worker.py")
STEPS, KILL_AT, SAVE_EVERY = 10, 9, 3
LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "lr": 2e-3}
STRATEGIES = {
    "fsdp": {"strategy": "fsdp"},
    "zero2": {"strategy": "deepspeed", "deepspeed_config": "zero2"},
    "zero3": {"strategy": "deepspeed", "deepspeed_config": "zero3"},
}


def _recipe(batch_size: int, **stage) -> dict:
    # LoRA dropout 0: dropout masks are drawn per process, so they would differ from the 1-process run.
    stage = {"save_every": SAVE_EVERY, **stage}
    return tiny_recipe(STEPS, batch_size=batch_size, train={"connector": 1e-3}, lora=LORA, **stage)


def _launch(recipe: dict, out, *args: str, processes: int = 2) -> subprocess.CompletedProcess:
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return subprocess.run(
        [*launcher, WORKER, str(path), str(out), *args],
        env=child_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _losses(out) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in read_metrics(out / "metrics.jsonl")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[int, float]:
    """The losses of 1 process x batch 4 under DDP, with clipping (and checked to differ without it)."""
    root = tmp_path_factory.mktemp("reference")
    for name, stage in (("clipped", {}), ("unclipped", {"max_grad_norm": None})):
        proc = _launch(_recipe(4, **stage), root / name, processes=1)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    clipped, unclipped = _losses(root / "clipped"), _losses(root / "unclipped")
    assert sorted(clipped) == list(range(1, STEPS + 1))
    assert max(abs(clipped[s] - unclipped[s]) for s in clipped) > 1e-2  # clipping changes the run
    return clipped


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_sharded_run_matches_one_process_and_resumes_exactly_after_sigkill(name, reference, tmp_path):
    recipe = _recipe(2, **STRATEGIES[name])
    out = tmp_path / "run"
    killed = _launch(recipe, out, "--kill-at", str(KILL_AT))
    assert killed.returncode != 0 and not (out / "model").exists()  # died by SIGKILL mid-run
    before = _losses(out)
    assert sorted(before) == list(range(1, KILL_AT))
    assert (out / "checkpoints" / "latest").read_text() == "step-00000006"  # the last before step 9
    shards = "fsdp" if name == "fsdp" else "deepspeed"
    assert (out / "checkpoints" / "step-00000006" / shards).is_dir()

    resumed = _launch(recipe, out, "--resume")
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-4000:]
    after = _losses(out)
    assert sorted(after) == list(range(1, STEPS + 1))
    for step in (7, 8):  # recomputed from the step-6 checkpoint: bit for bit the killed run's
        assert after[step] == before[step], step
    for step, loss in reference.items():
        assert after[step] == pytest.approx(loss, abs=1e-4), step

    # OUT/model: the consolidated weights of the last checkpoint, adapters merged; the rest as built.
    model = load_file(out / "model" / "model.safetensors")
    final = load_file(out / "checkpoints" / f"step-{STEPS:08d}" / "weights.safetensors")
    built, _ = build_for_recipe(from_dict(recipe).model, seed=recipe["seed"])
    initial = {n: p.detach() for n, p in built.named_parameters()}
    scaling = LORA["alpha"] / LORA["r"]
    adapted = {n.replace(".lora_A.default.weight", ".weight") for n in final if ".lora_A." in n}
    assert len(adapted) == 4 and {n for n in final if "lora" not in n} == {
        "connector.linear.weight",
        "connector.linear.bias",
    }
    for n, value in model.items():
        if n in adapted:
            a = final[n.replace(".weight", ".lora_A.default.weight")]
            b = final[n.replace(".weight", ".lora_B.default.weight")]
            torch.testing.assert_close(value, initial[n] + (b @ a) * scaling, rtol=0, atol=1e-7, msg=n)
        elif n in final:
            assert torch.equal(value, final[n]), n
        else:  # outside `train:` and not adapted: bit-identical
            assert torch.equal(value, initial[n]), n
    assert (out / "model" / "model.safetensors").stat().st_size > 0
    assert (
        json.loads((out / "checkpoints" / f"step-{STEPS:08d}" / "state.json").read_text())["global_step"]
        == STEPS
    )


def _parts_recipe(parts, batch_size: int, dtype: str, **stage) -> dict:  # noqa: F811 (the fixture)
    recipe = _recipe(batch_size, save_every=0, **stage)
    recipe["stages"][0]["steps"] = BF16_STEPS
    recipe["model"] = {
        "vision_tower": str(parts / "tower"),
        "language_model": str(parts / "lm"),
        "connector": "mlp2x_gelu",
        "template": "llama2",
        "frame": "pad",
        "dtype": dtype,
    }
    return recipe


BF16_STEPS = 4
# |bf16 loss - fp32 loss| / fp32 loss at each step; measured here: at most 5e-5 (FSDP and ZeRO-2, 4 steps)
BF16_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def fp32_parts_reference(parts, tmp_path_factory) -> dict[int, float]:  # noqa: F811 (fixture)
    out = tmp_path_factory.mktemp("fp32") / "run"
    proc = _launch(_parts_recipe(parts, 4, "float32", precision="fp32"), out, processes=1)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return _losses(out)


@pytest.mark.parametrize("name", ["fsdp", "zero2"])
def test_bfloat16_parts_train_with_fp32_master_weights(name, parts, fp32_parts_reference, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    recipe = _parts_recipe(parts, 2, "bfloat16", precision="bf16", **STRATEGIES[name])
    proc = _launch(recipe, out)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    losses = _losses(out)
    assert sorted(losses) == sorted(fp32_parts_reference)
    for step, loss in fp32_parts_reference.items():
        assert losses[step] == pytest.approx(loss, rel=BF16_TOLERANCE), step
    assert any(losses[s] != fp32_parts_reference[s] for s in losses)  # bf16 numerics really ran
    # The consolidated trained weights are the strategy's fp32 master copy; the frozen parts stay bf16.
    final = load_file(out / "checkpoints" / f"step-{BF16_STEPS:08d}" / "weights.safetensors")
    assert final and {t.dtype for t in final.values()} == {torch.float32}
    model = load_file(out / "model" / "model.safetensors")
    tower = [t for n, t in model.items() if n.startswith("vision_tower.")]
    assert tower and {t.dtype for t in tower} == {torch.bfloat16}


def test_gradient_checkpointing_gives_the_same_losses_and_gradients(tmp_path):
    """Activation checkpointing recomputes the forward in backward: the same numbers, less memory."""
    from groundlm.train import TrainHooks, train
    from groundlm.train.params import named_parameters

    grads, losses = {}, {}
    for on in (False, True):

        def grab(step, model, on=on):
            if step == 2:
                grads[on] = {
                    n: p.grad.clone() for n, p in named_parameters(model).items() if p.grad is not None
                }

        recipe = tiny_recipe(2, gradient_checkpointing=on, lora=LORA, train={"connector": 1e-3})
        train(from_dict(recipe), tmp_path / str(on), hooks=TrainHooks(after_backward=grab), progress=False)
        losses[on] = _losses(tmp_path / str(on))
    assert losses[True] == pytest.approx(losses[False], rel=1e-6)
    assert grads[False].keys() == grads[True].keys() and len(grads[False]) == 10
    for name, g in grads[False].items():
        torch.testing.assert_close(grads[True][name], g, rtol=1e-5, atol=1e-7, msg=name)


def test_deepspeed_auto_fields_are_filled_from_the_stage():
    from groundlm.train.strategies import StageSetup
    from groundlm.train.strategies.deepspeed import filled_config, load_config

    setup = StageSetup("bf16", 16, 2, 8, 1.0, "zero3", "r.yaml: stages[1] (finetune)")
    c = filled_config(load_config("zero3", setup.where), setup, hidden=4096)
    assert (c["train_micro_batch_size_per_gpu"], c["gradient_accumulation_steps"]) == (16, 2)
    assert c["train_batch_size"] == 16 * 2 * 8 and c["gradient_clipping"] == 1.0
    assert c["bf16"]["enabled"] is True and c["fp16"]["enabled"] is False
    zero = c["zero_optimization"]
    assert zero["stage"] == 3 and zero["reduce_bucket_size"] == 4096 * 4096
    assert zero["stage3_param_persistence_threshold"] == 10 * 4096
    assert "auto" not in json.dumps(c)
    fp32 = filled_config(load_config("zero2", ""), StageSetup("fp32", 4, 1, 2, None, "zero2", ""), hidden=64)
    assert fp32["bf16"]["enabled"] is False and fp32["gradient_clipping"] == 0.0


def test_strategy_errors_name_the_field(tmp_path):
    from groundlm.train.recipe import RecipeError

    def error(**stage) -> str:
        with pytest.raises(RecipeError) as err:
            from_dict(tiny_recipe(1, **stage), "r.yaml")
        return str(err.value)

    assert "r.yaml" in error(strategy="zero") and ".strategy: 'zero' is not one of" in error(strategy="zero")
    assert "deepspeed_config: applies to strategy: deepspeed only" in error(deepspeed_config="zero3")
    assert "neither zero2 nor zero3 nor a file" in error(strategy="deepspeed", deepspeed_config="zero9")
    own = tmp_path / "ds.json"
    own.write_text(json.dumps({"zero_optimization": {"stage": 2}, "optimizer": {"type": "AdamW"}}))
    message = error(strategy="deepspeed", deepspeed_config=str(own))
    assert str(own) in message and "'optimizer'" in message
    own.write_text("{not json")
    assert "not valid JSON" in error(strategy="deepspeed", deepspeed_config=str(own))
    dense = {"objective": "dense_patches", "train": {"vision_tower": 1e-3}, "strategy": "fsdp"}
    assert "dense_patches stage runs with strategy: ddp" in error(**dense)


def test_zero3_accumulates_several_backwards_into_one_step(reference, tmp_path):
    """grad_accum 2: two backward calls before the engine's one step (the loop owns the boundary). 2 processes
    x batch 1 x 2 micro-steps give the reference's batch-4 losses. Four
    steps: the losses of steps 1-4 depend on the learning rates of steps 1-3 (warmup, then the cosine's start),
    the same for 4 or 10 steps."""
    recipe = _recipe(1, grad_accum=2, save_every=0, **STRATEGIES["zero3"])
    recipe["stages"][0]["steps"] = 4
    proc = _launch(recipe, tmp_path / "run")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    losses = _losses(tmp_path / "run")
    assert sorted(losses) == [1, 2, 3, 4]
    for step, loss in losses.items():
        assert loss == pytest.approx(reference[step], abs=1e-4), step

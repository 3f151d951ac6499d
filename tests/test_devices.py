"""Where a loaded model runs (devices.py): `load(device=, dtype=)` and `--device` / `--dtype` of ask, eval and
serve; a bf16 model's answers are its own greedy decoding; unusable names fail up front, naming the option."""

from __future__ import annotations

import shutil

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import groundlm
from groundlm.cli import app
from groundlm.devices import PlacementError, resolve_device, resolve_dtype

runner = CliRunner()
PROMPTS = ["[refer] the red circle", "[vqa] how many shapes are there in the picture", "[caption]"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")


@pytest.fixture(scope="module")
def bf16(tiny_dir):
    return groundlm.load(tiny_dir, device="cpu", dtype="bfloat16")


def _batch(lm):
    images = [Image.new("RGB", (80 + 10 * i, 60), c) for i, c in enumerate([(255, 0, 0), (0, 200, 0), (9, 9, 240)])]
    return [lm.processor.prompt(img, [{"role": "user", "content": p}]) for img, p in zip(images, PROMPTS, strict=True)]


def test_bfloat16_load_gives_a_bf16_model_on_the_cpu(bf16):
    assert bf16.device == torch.device("cpu")
    assert bf16.model.dtype == torch.bfloat16
    assert {p.dtype for p in bf16.model.parameters()} == {torch.bfloat16}


def test_bf16_answers_equal_transformers_greedy_generate_of_the_same_bf16_model(bf16):
    batch = _batch(bf16)
    inputs = {k: v for k, v in bf16.processor.pad(batch, side="left").items() if k != "labels"}
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    tok, stop = bf16.processor.tokenizer, bf16.processor.stop_token_id
    n = 10
    reference = bf16.model.generate(**inputs, max_new_tokens=n, do_sample=False, eos_token_id=stop,
                                    pad_token_id=tok.pad_token_id)[:, inputs["input_ids"].shape[1]:]
    texts = [bf16.processor.decode(r.tolist()) for r in reference]
    assert all(texts)  # real answers (a random model's), not empty strings compared with each other
    assert [g.answer.text for g in bf16.generate(batch, n)] == texts
    images = [Image.new("RGB", (80 + 10 * i, 60), c) for i, c in enumerate([(255, 0, 0), (0, 200, 0), (9, 9, 240)])]
    assert [a.text for a in bf16.ask_many(images, PROMPTS, max_new_tokens=n, batch_size=3)] == texts


def test_auto_dtype_is_the_checkpoints_dtype(tiny_dir, bf16, tmp_path):
    assert groundlm.load(tiny_dir, device="cpu").model.dtype == torch.float32  # written in float32
    saved = tmp_path / "bf16"
    shutil.copytree(tiny_dir, saved)
    bf16.model.save_pretrained(saved)  # the same model in bfloat16: config.json says so
    assert groundlm.load(saved, device="auto", dtype="auto").model.dtype == torch.bfloat16
    assert groundlm.load(saved, device="cpu", dtype="float32").model.dtype == torch.float32


def test_auto_device_is_the_cpu_without_cuda():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_dtype(None) == "auto" and resolve_dtype(torch.float16) is torch.float16


@pytest.mark.parametrize("name", ["tpu", "gpu", "cuda:x", ""])
def test_an_unknown_device_is_an_error_naming_the_option(tiny_dir, name):
    with pytest.raises(PlacementError, match="unknown device") as err:
        groundlm.load(tiny_dir, device=name)
    assert err.value.option == "device" and "auto, cpu, cuda, cuda:N or mps" in str(err.value)


@pytest.mark.parametrize("name", ["int8", "fp8", "half-ish", torch.int64])
def test_an_unknown_dtype_is_an_error_naming_the_option(tiny_dir, name):
    with pytest.raises(PlacementError, match="dtype") as err:
        groundlm.load(tiny_dir, device="cpu", dtype=name)
    assert err.value.option == "dtype" and "float32, bfloat16, float16" in str(err.value)


@NO_CUDA
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "CUDA:1"])
def test_cuda_without_a_gpu_is_a_clear_error_before_loading(tmp_path, name):
    # the directory does not exist: the device is refused first, not deep inside loading or generation
    with pytest.raises(PlacementError, match="no CUDA GPU") as err:
        groundlm.load(tmp_path / "absent", device=name)
    assert err.value.option == "device" and "use device 'cpu'" in str(err.value)


def test_cli_ask_takes_device_and_dtype(tiny_dir, tmp_path):
    Image.new("RGB", (64, 48), (200, 10, 10)).save(tmp_path / "a.png")
    base = ["ask", str(tiny_dir), str(tmp_path / "a.png"), "[refer] the red circle", "--max-new-tokens", "4"]
    ok = runner.invoke(app, [*base, "--device", "cpu", "--dtype", "bfloat16", "--json"])
    assert ok.exit_code == 0, ok.output
    bad_device = runner.invoke(app, [*base, "--device", "tpu"])
    assert bad_device.exit_code == 1 and "--device: unknown device 'tpu'" in bad_device.output
    bad_dtype = runner.invoke(app, [*base, "--dtype", "int8"])
    assert bad_dtype.exit_code == 1 and "--dtype: unknown dtype 'int8'" in bad_dtype.output


@NO_CUDA
def test_cli_eval_refuses_cuda_here_before_loading(tmp_path):
    result = runner.invoke(app, ["eval", str(tmp_path / "absent"), "--device", "cuda", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "--device: device 'cuda' asked for, but torch sees no CUDA GPU" in result.output
    assert not (tmp_path / "o").exists()


def test_cli_eval_runs_in_bfloat16(tiny_dir, tmp_path):
    out = tmp_path / "bf16"
    result = runner.invoke(app, ["eval", str(tiny_dir), "--scenes", "1", "--limit", "4", "--max-new-tokens", "3",
                                 "--device", "cpu", "--dtype", "bfloat16", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 4


def test_cli_serve_passes_device_and_dtype_to_the_server(monkeypatch, tiny_dir):
    import groundlm.serve

    calls = []
    monkeypatch.setattr(groundlm.serve, "run", lambda model, **kw: calls.append((model, kw)))
    result = runner.invoke(app, ["serve", str(tiny_dir), "--device", "cpu", "--dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    (model, kw), = calls
    assert model == str(tiny_dir) and (kw["device"], kw["dtype"]) == ("cpu", "bfloat16")
    defaults = runner.invoke(app, ["serve", str(tiny_dir)])
    assert defaults.exit_code == 0 and (calls[-1][1]["device"], calls[-1][1]["dtype"]) == ("auto", "auto")
    refused = runner.invoke(app, ["serve", str(tiny_dir), "--dtype", "float64"])
    assert refused.exit_code == 1 and "--dtype: unknown dtype 'float64'" in refused.output
    assert len(calls) == 2  # the refused one never reached the server

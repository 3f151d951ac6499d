"""Export to transformers' LLaVA layout: same weights, same logits, same greedy tokens."""

import pytest
import torch
from transformers import LlavaForConditionalGeneration
from typer.testing import CliRunner

from groundlm.cli import app
from groundlm.export import export_llava, to_llava
from groundlm.presets import ModelSpec, build_model
from groundlm.processor import IGNORE_INDEX

LLAVA_LIKE = ModelSpec(connector="mlp2x_gelu", template="llava_v1", frame="pad")


@pytest.fixture(scope="module")
def pair():
    torch.set_num_threads(1)
    model, processor = build_model(LLAVA_LIKE, seed=3)
    return model, processor, to_llava(model)


def _batch(processor):
    from PIL import Image

    encs = [processor.prompt(Image.new("RGB", (40, 30), c), [{"role": "user", "content": p}])
            for c, p in [((255, 0, 0), "[refer] the red circle"), ((0, 0, 255), "[caption]")]]
    batch = processor.pad(encs, side="left")
    assert (batch.pop("labels") == IGNORE_INDEX).all()
    return batch


def test_exported_llava_computes_the_same_logits(pair):
    model, processor, llava = pair
    batch = _batch(processor)
    with torch.no_grad():
        ours = model(**batch).logits
        theirs = llava(**batch).logits
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_exported_llava_generates_the_same_tokens(pair):
    model, processor, llava = pair
    batch = _batch(processor)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    assert torch.equal(model.generate(**batch, **kw), llava.generate(**batch, **kw))


def test_export_directory_loads_with_transformers(pair, tmp_path):
    model, processor, _ = pair
    export_llava(model, processor, tmp_path)
    again = LlavaForConditionalGeneration.from_pretrained(tmp_path, local_files_only=True)
    batch = _batch(processor)
    with torch.no_grad():
        assert (again(**batch).logits - model(**batch).logits).abs().max().item() <= 1e-4


def test_models_llava_cannot_express_are_refused():
    model, _ = build_model("tiny")  # concat4 connector
    with pytest.raises(ValueError, match="mlp2x_gelu"):
        to_llava(model)


def test_a_codec_with_location_heads_is_refused_and_location_tokens_export():
    import dataclasses

    located, _ = build_model(dataclasses.replace(LLAVA_LIKE, location_codec="embedding"))
    with pytest.raises(ValueError, match="location heads"):
        to_llava(located)
    # `<loc_k>` tokens are plain vocabulary to LLaVA: the same logits
    model, processor = build_model(dataclasses.replace(LLAVA_LIKE, location_codec="tokens"), seed=3)
    batch = _batch(processor)
    with torch.no_grad():
        assert (model(**batch).logits - to_llava(model)(**batch).logits).abs().max().item() <= 1e-4


def test_export_command_writes_a_llava_directory_with_the_same_logits(pair, tmp_path):
    model, processor, _ = pair
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "model"), str(tmp_path / "llava")])
    assert result.exit_code == 0, result.output
    again = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava", local_files_only=True)
    batch = _batch(processor)
    with torch.no_grad():
        assert (again(**batch).logits - model(**batch).logits).abs().max().item() <= 1e-4


def test_export_command_refuses_a_model_llava_cannot_express(tmp_path):
    model, processor = build_model("tiny")  # concat4 connector
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "model"), str(tmp_path / "llava")])
    assert result.exit_code == 1
    assert "mlp2x_gelu" in result.output
    assert not (tmp_path / "llava").exists() or not any((tmp_path / "llava").iterdir())


def test_export_command_refuses_a_file_or_a_non_empty_directory_as_out(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    for out, says in ((tmp_path / "file", "is a file; a model is a directory"), (tmp_path / "full", "not empty")):
        result = CliRunner().invoke(app, ["export", str(tmp_path / "no-model"), str(out)])
        assert result.exit_code == 1 and says in result.output, result.output
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"  # nothing lost

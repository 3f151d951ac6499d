"""Importing LLaVA checkpoints (weights/llava_hf.py, weights/llava.py) and starting a recipe from a whole model
(`init_from`, train/build.py).

The fixture writes one tiny LLaVA model (a real `LlavaForConditionalGeneration`: CLIP tower, Llama LM) in
every published layout with the layout's real key names and config files: llava-hf's hub files, transformers'
in-memory names, the original LLaVA repository's full checkpoint (with and without its tower) and its stage-1
`mm_projector.bin`. Every import must compute the logits of transformers' model on an image and a prompt.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    AutoTokenizer,
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
)
from typer.testing import CliRunner

import groundlm
from groundlm.cli import app
from groundlm.export import export_model
from groundlm.presets import InitFrom, ModelSpec
from groundlm.processor import IGNORE_INDEX
from groundlm.tokenizer import build_word_tokenizer
from groundlm.train import checkpoint, dry_run, train
from groundlm.train.build import WORD_LISTS, build_for_recipe
from groundlm.train.recipe import from_dict
from groundlm.weights import WeightsError, import_model, init_source
from groundlm.weights.keys import read_state_dict

from .train_helpers import one_thread, tiny_recipe  # noqa: F401 (fixture)

TOL = 1e-5
# LLaVA's config.json fields (haotian-liu/LLaVA, LLaVA-1.5 finetune.sh values).
LLAVA_FIELDS = {
    "architectures": ["LlavaLlamaForCausalLM"],
    "model_type": "llava_llama",
    "mm_projector_type": "mlp2x_gelu",
    "mm_vision_select_layer": -2,
    "mm_vision_select_feature": "patch",
    "mm_use_im_start_end": False,
    "mm_use_im_patch_token": False,
    "mm_patch_merge_type": "flat",
    "image_aspect_ratio": "pad",
    "tokenizer_padding_side": "right",
    "tokenizer_model_max_length": 2048,
    "use_mm_proj": True,
    "tune_mm_mlp_adapter": False,
    "freeze_mm_mlp_adapter": False,
}


def _to_llava_names(hub: dict) -> dict:
    """llava-hf hub names -> the original LLaVA repository's (the inverse of transformers' converter)."""
    out = {}
    for key, value in hub.items():
        if key.startswith("language_model.model."):
            out["model." + key.removeprefix("language_model.model.")] = value
        elif key == "language_model.lm_head.weight":
            out["lm_head.weight"] = value
        elif key.startswith("multi_modal_projector.linear_"):
            layer = {"1": "0", "2": "2"}[key[len("multi_modal_projector.linear_")]]
            out[f"model.mm_projector.{layer}." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("vision_tower.vision_model."):
            out["model.vision_tower.vision_tower." + key.removeprefix("vision_tower.")] = value
        else:
            raise AssertionError(key)
    return out


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """The tiny model in every layout; returns (root, reference LlavaForConditionalGeneration, base vocab size)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("published")
    base = build_word_tokenizer(WORD_LISTS["shapes"](), special_tokens=["<s>", "</s>"])
    base.save_pretrained(root / "base-tokenizer")
    tok = AutoTokenizer.from_pretrained(root / "base-tokenizer")
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})  # id len(base), as llava-hf's 32000
    vision = CLIPVisionConfig(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4,
    )
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(), image_token_index=tok.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-2, vision_feature_select_strategy="default", pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    llava = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():  # weights larger than the 0.02 init, so logits differ clearly when anything is off
        for p in llava.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.2)

    # llava-hf, hub layout: save_pretrained, then the tower one level down as the published files have it.
    hub_dir = root / "llava-hf"
    llava.save_pretrained(hub_dir)
    tok.save_pretrained(hub_dir)
    saved = load_file(hub_dir / "model.safetensors")
    assert "language_model.model.embed_tokens.weight" in saved and "multi_modal_projector.linear_1.weight" in saved
    hub = {
        (k.replace("vision_tower.", "vision_tower.vision_model.", 1) if k.startswith("vision_tower.") else k): v
        for k, v in saved.items()
    }
    save_file(hub, hub_dir / "model.safetensors", metadata={"format": "pt"})

    # llava-hf, in-memory names (model.language_model.*, lm_head, model.vision_tower.*).
    memory_dir = root / "llava-hf-memory"
    shutil.copytree(hub_dir, memory_dir)
    save_file({k: v.contiguous() for k, v in llava.state_dict().items()}, memory_dir / "model.safetensors",
              metadata={"format": "pt"})

    # The CLIP tower alone (what mm_vision_tower names) and the LM alone (a recipe's language_model).
    llava.model.vision_tower.save_pretrained(root / "clip")
    lm = LlamaForCausalLM(config.text_config)
    lm.model.load_state_dict(llava.model.language_model.state_dict())
    lm.lm_head.load_state_dict(llava.lm_head.state_dict())
    lm.save_pretrained(root / "vicuna")
    tok.save_pretrained(root / "vicuna")

    # Original LLaVA: a LLaMA config with mm_* fields, the base tokenizer (no <image>), LLaVA's key names.
    n = len(base)
    llava_state = _to_llava_names(hub)
    llava_state["model.embed_tokens.weight"] = llava_state["model.embed_tokens.weight"][:n].clone()
    llava_state["lm_head.weight"] = llava_state["lm_head.weight"][:n].clone()
    for i in range(text.num_hidden_layers):  # a buffer old transformers saved; not a weight
        llava_state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    llava_config = {
        **LlamaConfig(**{**text.to_dict(), "vocab_size": n}).to_dict(), **LLAVA_FIELDS,
        "mm_vision_tower": str(root / "clip"), "mm_hidden_size": vision.hidden_size,
    }
    full = root / "llava-full"
    full.mkdir()
    (full / "config.json").write_text(json.dumps(llava_config))
    base.save_pretrained(full)
    torch.save(llava_state, full / "pytorch_model.bin")
    # ... saved without its tower (LLaVA loads mm_vision_tower at run time).
    no_tower = root / "llava-no-tower"
    shutil.copytree(full, no_tower)
    (no_tower / "pytorch_model.bin").unlink()
    save_file({k: v.contiguous() for k, v in llava_state.items() if ".vision_tower." not in k},
              no_tower / "model.safetensors", metadata={"format": "pt"})
    # ... and stage 1's projector.
    torch.save({k: v for k, v in llava_state.items() if "mm_projector" in k}, root / "mm_projector.bin")
    return root, llava, n


def _batch(processor):
    images = [Image.new("RGB", (40, 30), (200, 30, 30)), Image.new("RGB", (20, 50), (20, 40, 220))]
    prompts = ["what is the red circle", "describe the image"]
    encs = [processor.prompt(i, [{"role": "user", "content": p}]) for i, p in zip(images, prompts, strict=True)]
    batch = processor.pad(encs, side="left")
    assert (batch.pop("labels") == IGNORE_INDEX).all()
    return batch


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _imported(published, kind, src_name, tmp_path, **options):
    root, _, _ = published
    out = import_model(kind, root / src_name, tmp_path / f"{kind}-{src_name}", **options)
    return groundlm.load(out)


@pytest.mark.parametrize("layout", ["llava-hf", "llava-hf-memory"])
def test_llava_hf_import_gives_transformers_logits(published, layout, tmp_path):
    _, llava, _ = published
    lm = _imported(published, "llava-hf", layout, tmp_path)
    assert lm.processor.config.template == "llava_v1" and lm.processor.config.frame == "pad"
    assert lm.model.config.num_image_tokens == 16  # (32 / 8)^2 patches, CLS dropped
    batch = _batch(lm.processor)
    assert (_logits(lm.model, batch) - _logits(llava, batch)).abs().max().item() <= TOL


def test_imported_feature_path_drops_cls_like_transformers(published, tmp_path):
    _, llava, _ = published
    lm = _imported(published, "llava-hf", "llava-hf", tmp_path)
    pixels = _batch(lm.processor)["pixel_values"]
    with torch.no_grad():
        ours = lm.model.get_image_features(pixels)  # [B, 16, D]
        theirs = llava.get_image_features(
            pixel_values=pixels, vision_feature_layer=-2, vision_feature_select_strategy="default"
        ).pooler_output  # B x [16, D]
    assert ours.shape == (2, 16, 64)
    assert (ours - torch.stack(theirs)).abs().max().item() <= TOL


@pytest.mark.parametrize("layout", ["llava-full", "llava-no-tower"])
def test_original_llava_import_gives_transformers_logits(published, layout, tmp_path):
    _, llava, n = published
    lm = _imported(published, "llava", layout, tmp_path)
    tok = lm.processor.tokenizer
    assert tok.convert_tokens_to_ids("<image>") == n == lm.model.config.image_token_id
    batch = _batch(lm.processor)
    # The checkpoint's vocabulary gives the same logits; <image> is new (its row at the mean of the others).
    ours, theirs = _logits(lm.model, batch), _logits(llava, batch)
    assert (ours[..., :n] - theirs[..., :n]).abs().max().item() <= TOL
    head = lm.model.get_output_embeddings().weight
    assert torch.allclose(head[n], head[:n].mean(0))


def test_stage1_projector_joins_the_named_tower_and_language_model(published, tmp_path):
    root, llava, _ = published
    lm = _imported(
        published, "llava", "mm_projector.bin", tmp_path, vision_tower=str(root / "clip"),
        language_model=str(root / "vicuna"),
    )
    projector = torch.load(root / "mm_projector.bin", weights_only=True)
    assert torch.equal(lm.model.connector.linear_1.weight, projector["model.mm_projector.0.weight"])
    assert torch.equal(lm.model.connector.linear_2.bias, projector["model.mm_projector.2.bias"])
    # Tower + LM + projector are the whole LLaVA model here, so the logits are transformers' too.
    batch = _batch(lm.processor)
    assert (_logits(lm.model, batch) - _logits(llava, batch)).abs().max().item() <= TOL


def test_stage1_projector_without_its_parts_is_refused(published, tmp_path):
    root, _, _ = published
    with pytest.raises(WeightsError, match="vision_tower and language_model options"):
        import_model("llava", root / "mm_projector.bin", tmp_path / "out")


def test_import_export_import_gives_identical_weights(published, tmp_path):
    root, _, _ = published
    first = import_model("llava-hf", root / "llava-hf", tmp_path / "first")
    export_model(first, tmp_path / "exported")
    second = import_model("llava-hf", tmp_path / "exported", tmp_path / "second")
    a, b = read_state_dict(first), read_state_dict(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((first / "groundlm_processor.json").read_text()) == json.loads(
        (second / "groundlm_processor.json").read_text()
    )


def _copy_with(published, tmp_path, change):
    root, _, _ = published
    bad = tmp_path / "bad"
    shutil.copytree(root / "llava-hf", bad)
    state = load_file(bad / "model.safetensors")
    change(state)
    save_file(state, bad / "model.safetensors", metadata={"format": "pt"})
    return bad


def test_a_missing_key_is_named(published, tmp_path):
    bad = _copy_with(published, tmp_path, lambda s: s.pop("multi_modal_projector.linear_2.bias"))
    with pytest.raises(WeightsError, match=r"1 missing key\(s\).*connector\.linear_2\.bias"):
        import_model("llava-hf", bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_unknown_key_is_named(published, tmp_path):
    bad = _copy_with(published, tmp_path, lambda s: s.update({"multi_modal_projector.linear_3.weight": torch.ones(2)}))
    with pytest.raises(WeightsError, match=r"1 unknown key\(s\).*multi_modal_projector\.linear_3\.weight"):
        import_model("llava-hf", bad, tmp_path / "out")


def test_a_mis_shaped_key_is_named(published, tmp_path):
    bad = _copy_with(
        published, tmp_path, lambda s: s.update({"multi_modal_projector.linear_1.bias": torch.ones(3)})
    )
    with pytest.raises(WeightsError, match=r"connector\.linear_1\.bias: checkpoint \(3,\), model \(64,\)"):
        import_model("llava-hf", bad, tmp_path / "out")


def test_a_wrong_kind_says_what_the_directory_looks_like(published, tmp_path):
    root, _, _ = published
    with pytest.raises(WeightsError, match="looks like a llava checkpoint, use KIND llava$"):
        import_model("llava-hf", root / "llava-full", tmp_path / "a")
    with pytest.raises(WeightsError, match="looks like a llava-hf checkpoint, use KIND llava-hf$"):
        import_model("llava", root / "llava-hf", tmp_path / "b")
    groundlm_dir = import_model("llava-hf", root / "llava-hf", tmp_path / "c")
    with pytest.raises(WeightsError, match="already a groundlm model directory"):
        import_model("llava", groundlm_dir, tmp_path / "d")
    with pytest.raises(WeightsError, match="none of the known layouts"):
        import_model("llava-hf", root / "clip", tmp_path / "e")
    with pytest.raises(WeightsError, match="unknown KIND 'llava-1.6'"):
        import_model("llava-1.6", root / "llava-hf", tmp_path / "f")
    with pytest.raises(WeightsError, match=r"unknown option\(s\) \['frmae'\]; valid: \['template', 'frame'"):
        import_model("llava-hf", root / "llava-hf", tmp_path / "g", frmae="pad")


def test_a_pickle_with_more_than_tensors_is_refused(published, tmp_path):
    from pathlib import PurePosixPath

    torch.save({"model.mm_projector.0.weight": PurePosixPath("/etc/passwd")}, tmp_path / "mm_projector.bin")
    with pytest.raises(WeightsError, match="weights_only=True"):
        import_model("llava", tmp_path / "mm_projector.bin", tmp_path / "out", vision_tower="x", language_model="y")


def test_unsupported_llava_configs_are_refused_with_the_reason(published, tmp_path):
    root, _, _ = published
    for field, value, says in (
        ("mm_patch_merge_type", "spatial_unpad", "LLaVA-1.6 tiles"),
        ("image_aspect_ratio", "square", "pass the frame option"),
        ("mm_projector_type", "mlp3x_gelu", "mm_projector_type 'mlp3x_gelu'"),
    ):
        bad = tmp_path / field
        shutil.copytree(root / "llava-full", bad)
        config = json.loads((bad / "config.json").read_text())
        (bad / "config.json").write_text(json.dumps({**config, field: value}))
        with pytest.raises(WeightsError, match=says):
            import_model("llava", bad, tmp_path / f"{field}-out")


def test_import_command_writes_a_model_and_names_a_wrong_kind(published, tmp_path):
    root, llava, _ = published
    ok = CliRunner().invoke(app, ["import", "llava-hf", str(root / "llava-hf"), "--out", str(tmp_path / "m"),
                                  "-o", "frame=resize"])
    assert ok.exit_code == 0, ok.output
    lm = groundlm.load(tmp_path / "m")
    assert lm.processor.config.frame == "resize"
    bad = CliRunner().invoke(app, ["import", "llava", str(root / "llava-hf"), "--out", str(tmp_path / "n")])
    assert bad.exit_code == 1 and "use KIND llava-hf" in bad.output


# ---- init_from -------------------------------------------------------------------------------------------


def test_init_from_string_forms():
    assert init_source("runs/x/model") == InitFrom(path="runs/x/model")
    assert init_source("llava-hf:/m/llava") == InitFrom(path="/m/llava", kind="llava-hf")
    assert init_source("C:/models/x") == InitFrom(path="C:/models/x")  # not a kind: a path
    with pytest.raises(ValueError, match="init_from.kind: 'minigpt9'"):
        init_source(InitFrom(path="x", kind="minigpt9"))


def test_recipe_dry_run_starts_from_a_groundlm_directory(tiny_dir, tmp_path):
    recipe = tiny_recipe(train={"connector": 1e-3})
    recipe["model"] = {"init_from": str(tiny_dir), "connector": "concat4"}
    run = dry_run(from_dict(recipe))
    train(run, tmp_path, progress=False)
    start, end = read_state_dict(tiny_dir), read_state_dict(tmp_path / "model")
    frozen = [k for k in start if not k.startswith("connector.")]
    assert frozen and all(torch.equal(start[k], end[k]) for k in frozen)  # the run began from tiny_dir
    assert any(not torch.equal(start[k], end[k]) for k in start if k.startswith("connector."))
    saved = yaml.safe_load((checkpoint.latest(tmp_path) / "recipe.yaml").read_text())
    assert saved["model"]["init_from"] == {"path": str(tiny_dir), "kind": "groundlm", "options": {}}


def test_init_from_refuses_the_knobs_the_weights_fix_naming_every_one(tiny_dir, tmp_path):
    recipe = tiny_recipe()
    # connector left at mlp2x_gelu (the model has concat4), frame set to pad (the model has resize)
    recipe["model"] = {"init_from": str(tiny_dir), "frame": "pad"}
    with pytest.raises(ValueError) as err:
        train(dry_run(from_dict(recipe)), tmp_path, progress=False)
    message = str(err.value)
    assert "model.connector: the recipe says 'mlp2x_gelu', the model has 'concat4'" in message
    assert "model.frame: the recipe says 'pad', the model has 'resize'" in message
    assert message.endswith("write connector: concat4, frame: resize")


def test_recipe_dry_run_starts_from_llava_hf_with_location_tokens_on_top(published, tmp_path):
    root, llava, n = published
    recipe = tiny_recipe(train={"connector": 1e-3})
    recipe["model"] = {
        "init_from": {"kind": "llava-hf", "path": str(root / "llava-hf")},
        "template": "llava_v1", "frame": "pad", "location_codec": "tokens", "location_bins": 16,
    }
    train(dry_run(from_dict(recipe)), tmp_path, progress=False)
    lm = groundlm.load(tmp_path / "model")
    tok = lm.processor.tokenizer
    assert tok.convert_tokens_to_ids("<loc_15>") >= n + 1 and lm.processor.config.location_codec == "tokens"
    assert lm.model.get_input_embeddings().weight.shape[0] == len(tok)
    tower = {k: v for k, v in llava.state_dict().items() if k.startswith("model.vision_tower.")}
    ours = lm.model.state_dict()
    assert all(torch.equal(ours[k.removeprefix("model.")], v) for k, v in tower.items())  # frozen, as loaded


def test_init_from_adds_location_heads_on_top(published):
    root, _, _ = published
    spec = ModelSpec(
        init_from=f"llava-hf:{root / 'llava-hf'}", template="llava_v1", frame="pad", location_codec="embedding"
    )
    model, processor = build_for_recipe(spec, seed=0)
    again, _ = build_for_recipe(spec, seed=0)
    assert model.location_heads is not None and processor.codec.has_heads
    assert all(torch.equal(a, b) for a, b in zip(model.location_heads.state_dict().values(),
                                                 again.location_heads.state_dict().values(), strict=True))


def test_init_from_the_stage1_projector_uses_the_recipes_parts(published):
    root, llava, _ = published
    spec = ModelSpec(
        vision_tower=str(root / "clip"), language_model=str(root / "vicuna"), template="llava_v1", frame="pad",
        init_from=InitFrom(path=str(root / "mm_projector.bin"), kind="llava"),
    )
    model, processor = build_for_recipe(spec, seed=0)
    batch = _batch(processor)
    assert (_logits(model, batch) - _logits(llava, batch)).abs().max().item() <= TOL



def test_the_fine_tuning_recipes_of_the_docs_dry_run(tmp_path):
    from .train_helpers import ROOT

    text = (ROOT / "docs" / "published-models.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    recipes = [yaml.safe_load(b) for b in blocks if b.startswith("name: ")]
    assert [r["name"] for r in recipes] == [
        "llava-1.5-7b-full", "llava-1.5-7b-lora", "minigptv2-lora", "minigptv2-full", "minigpt4-projection",
        "nextchat-full", "nextchat-lora",
    ]
    for recipe in recipes:
        resolved = from_dict(recipe)  # the full recipe as written: init_from, dtype, LoRA
        assert resolved.model.init_from == InitFrom(path=recipe["model"]["init_from"])
        train(dry_run(resolved), tmp_path / recipe["name"], progress=False)

"""MiniGPT-v2 / MiniGPT-4 importers (weights/minigpt.py, eva.py, qformer.py) on tiny checkpoints in the published
layouts (real key names, tiny sizes, random weights, written with torch.save), checked against transformers'
`Blip2VisionModel` (tower + ln_vision, 448-style position interpolation), `Blip2QFormerModel` (Q-Former), the
published concat4 formula and peft (LoRA), and run end to end with `groundlm.load(...).ask`.

The reference renames below are written from published_models.md §1e (the LAVIS -> transformers table), apart
from the importer's own mapping code.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from PIL import Image
from transformers import (
    Blip2QFormerConfig,
    Blip2QFormerModel,
    Blip2VisionConfig,
    Blip2VisionModel,
    LlamaConfig,
    LlamaForCausalLM,
)

import groundlm
from groundlm.location import TextLocationCodec
from groundlm.modeling.vision import select_image_features
from groundlm.tasks import TAGGED
from groundlm.tokenizer import build_word_tokenizer
from groundlm.train.build import WORD_LISTS
from groundlm.weights.eva import interpolate_pos_embed
from groundlm.weights.keys import WeightsError
from groundlm.weights.minigpt import (
    LORA_DIR,
    REPORT_FILE,
    import_minigpt4,
    import_minigptv2,
)

WIDTH, PATCH, GRID, MLP, HEADS = 32, 4, 4, 48, 4  # the EVA file: 16 px, a 4x4 grid (MiniGPT's 224 px, 16x16)
FILE_BLOCKS, KEPT_BLOCKS = 3, 2  # MiniGPT builds one block fewer than the file holds (39 of 40)
TEXT = 64
Q_HIDDEN, Q_LAYERS, Q_HEADS, Q_MLP, QUERIES = 16, 4, 2, 32, 4
LORA_R, LORA_ALPHA = 64, 16


def _rand(*shape, scale=0.2):
    return torch.randn(*shape) * scale


def _norm(name):
    return {f"{name}.weight": 1 + _rand(WIDTH, scale=0.1), f"{name}.bias": _rand(WIDTH, scale=0.1)}


def eva_state() -> dict:
    """`eva_vit_g.pth` names (no prefix), tiny sizes."""
    state = {
        "cls_token": _rand(1, 1, WIDTH),
        "pos_embed": _rand(1, 1 + GRID * GRID, WIDTH),
        "patch_embed.proj.weight": _rand(WIDTH, 3, PATCH, PATCH),
        "patch_embed.proj.bias": _rand(WIDTH),
    }
    for i in range(FILE_BLOCKS):
        b = f"blocks.{i}."
        state |= {b + k: v for k, v in {**_norm("norm1"), **_norm("norm2")}.items()}
        state |= {
            b + "attn.qkv.weight": _rand(3 * WIDTH, WIDTH),
            b + "attn.q_bias": _rand(WIDTH),
            b + "attn.v_bias": _rand(WIDTH),
            b + "attn.proj.weight": _rand(WIDTH, WIDTH),
            b + "attn.proj.bias": _rand(WIDTH),
            b + "mlp.fc1.weight": _rand(MLP, WIDTH),
            b + "mlp.fc1.bias": _rand(MLP),
            b + "mlp.fc2.weight": _rand(WIDTH, MLP),
            b + "mlp.fc2.bias": _rand(WIDTH),
        }
    return state


def reference_tower(eva: dict, ln_vision: dict, image_size: int) -> Blip2VisionModel:
    """transformers' Blip2VisionModel with the EVA weights (§1e rename table) and ln_vision as post_layernorm."""
    config = Blip2VisionConfig(
        hidden_size=WIDTH, intermediate_size=MLP, num_hidden_layers=KEPT_BLOCKS, num_attention_heads=HEADS,
        image_size=image_size, patch_size=PATCH, layer_norm_eps=1e-6,
    )  # fmt: skip
    state = {
        "embeddings.class_embedding": eva["cls_token"],
        "embeddings.position_embedding": eva["pos_embed"],
        "embeddings.patch_embedding.weight": eva["patch_embed.proj.weight"],
        "embeddings.patch_embedding.bias": eva["patch_embed.proj.bias"],
        "post_layernorm.weight": ln_vision["ln_vision.weight"],
        "post_layernorm.bias": ln_vision["ln_vision.bias"],
    }
    for i in range(KEPT_BLOCKS):
        b, t = f"blocks.{i}.", f"encoder.layers.{i}."
        for ours, theirs in [("norm1", "layer_norm1"), ("norm2", "layer_norm2"), ("attn.proj", "self_attn.projection"),
                             ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")]:  # fmt: skip
            state[f"{t}{theirs}.weight"] = eva[f"{b}{ours}.weight"]
            state[f"{t}{theirs}.bias"] = eva[f"{b}{ours}.bias"]
        state[t + "self_attn.qkv.weight"] = eva[b + "attn.qkv.weight"]
        q, v = eva[b + "attn.q_bias"], eva[b + "attn.v_bias"]
        state[t + "self_attn.qkv.bias"] = torch.cat([q, torch.zeros_like(q), v])  # EVA has no k bias
    model = Blip2VisionModel(config).eval()
    model.load_state_dict(state, strict=True)
    model.post_layernorm.eps = 1e-5  # LAVIS's ln_vision is a default nn.LayerNorm (eps 1e-5)
    return model


def qformer_state() -> dict:
    """BLIP-2 checkpoint names (`blip2_pretrained_flant5xxl.pth` `model`): ln_vision, query_tokens, Qformer,
    plus names MiniGPT-4 does not run (text path, position ids, t5_proj)."""
    state = {"query_tokens": _rand(1, QUERIES, Q_HIDDEN), **_norm("ln_vision")}
    state["Qformer.bert.embeddings.LayerNorm.weight"] = 1 + _rand(Q_HIDDEN, scale=0.1)
    state["Qformer.bert.embeddings.LayerNorm.bias"] = _rand(Q_HIDDEN, scale=0.1)
    state["Qformer.bert.embeddings.position_ids"] = torch.arange(512).unsqueeze(0).float()
    for i in range(Q_LAYERS):
        layer = f"Qformer.bert.encoder.layer.{i}."
        parts = {"attention": Q_HIDDEN} | ({"crossattention": WIDTH} if i % 2 == 0 else {})
        for part, kv_in in parts.items():
            for name, fan_in in [("query", Q_HIDDEN), ("key", kv_in), ("value", kv_in)]:
                state[f"{layer}{part}.self.{name}.weight"] = _rand(Q_HIDDEN, fan_in)
                state[f"{layer}{part}.self.{name}.bias"] = _rand(Q_HIDDEN)
            state[f"{layer}{part}.output.dense.weight"] = _rand(Q_HIDDEN, Q_HIDDEN)
            state[f"{layer}{part}.output.dense.bias"] = _rand(Q_HIDDEN)
            state[f"{layer}{part}.output.LayerNorm.weight"] = 1 + _rand(Q_HIDDEN, scale=0.1)
            state[f"{layer}{part}.output.LayerNorm.bias"] = _rand(Q_HIDDEN, scale=0.1)
        for path in ("intermediate_query", "intermediate"):
            state[f"{layer}{path}.dense.weight"] = _rand(Q_MLP, Q_HIDDEN)
            state[f"{layer}{path}.dense.bias"] = _rand(Q_MLP)
        for path in ("output_query", "output"):
            state[f"{layer}{path}.dense.weight"] = _rand(Q_HIDDEN, Q_MLP)
            state[f"{layer}{path}.dense.bias"] = _rand(Q_HIDDEN)
            state[f"{layer}{path}.LayerNorm.weight"] = 1 + _rand(Q_HIDDEN, scale=0.1)
            state[f"{layer}{path}.LayerNorm.bias"] = _rand(Q_HIDDEN, scale=0.1)
    state["t5_proj.weight"], state["t5_proj.bias"] = _rand(8, Q_HIDDEN), _rand(8)
    return state


def reference_qformer(state: dict) -> Blip2QFormerModel:
    """transformers' Blip2QFormerModel with the LAVIS weights, renamed by the §1e rules (`Qformer.bert.` dropped,
    `attention.self` / `crossattention.self` -> `.attention`, embeddings' LayerNorm -> `layernorm`)."""
    config = Blip2QFormerConfig(
        hidden_size=Q_HIDDEN, num_hidden_layers=Q_LAYERS, num_attention_heads=Q_HEADS, intermediate_size=Q_MLP,
        cross_attention_frequency=2, encoder_hidden_size=WIDTH,
    )  # fmt: skip
    renamed = {}
    for name, tensor in state.items():
        if name.startswith("Qformer.bert.embeddings.LayerNorm."):
            renamed["layernorm." + name.split(".")[-1]] = tensor
        elif name.startswith("Qformer.bert.encoder.") and not re.search(
            r"layer\.\d+\.(intermediate|output)\.", name
        ):
            renamed[name.removeprefix("Qformer.bert.").replace("attention.self.", "attention.attention.")] = (
                tensor
            )
    model = Blip2QFormerModel(config).eval()
    model.load_state_dict(renamed, strict=True)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The published files, tiny: EVA, the BLIP-2 Q-Former checkpoint, a base LLM dir (its tokenizer without
    `<image>`), a MiniGPT-v2 checkpoint (LoRA with peft >= 0.3's `.default` infix and with peft 0.2.0's
    none), a MiniGPT-4 checkpoint, and the peft model the v2 LoRA weights come from."""
    root = tmp_path_factory.mktemp("minigpt")
    torch.manual_seed(0)
    eva = eva_state()
    torch.save(eva, root / "eva_vit_g.pth")
    blip2 = qformer_state()
    torch.save({"model": blip2}, root / "blip2_pretrained_flant5xxl.pth")

    tok = build_word_tokenizer(
        [*WORD_LISTS["shapes"](), "where", "cup"],
        tokens=TextLocationCodec().special_tokens() + [f"[{t}]" for t in TAGGED],
        special_tokens=["[INST]", "[/INST]", "<Img>", "</Img>", "###"],
    )
    tok.save_pretrained(root / "llm")
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=TEXT, intermediate_size=2 * TEXT, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    LlamaForCausalLM(text).save_pretrained(root / "llm")

    peft_lm = LlamaForCausalLM.from_pretrained(root / "llm")
    config = LoraConfig(
        r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.05, target_modules=["q_proj", "v_proj"]
    )
    peft_lm = get_peft_model(peft_lm, config).eval()
    lora = {}
    for name, param in peft_lm.named_parameters():
        if ".lora_" in name:
            with torch.no_grad():
                param.copy_(_rand(*param.shape, scale=0.05))  # lora_B starts at zero: give it values
            lora[f"llama_model.{name}"] = param.detach().clone()
    assert len(lora) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    proj_v2 = {"llama_proj.weight": _rand(TEXT, 4 * WIDTH), "llama_proj.bias": _rand(TEXT)}
    torch.save({"model": {**proj_v2, **lora}, "epoch": 49}, root / "minigptv2_default.pth")
    legacy = {n.replace(".default.", "."): t for n, t in lora.items()}  # peft 0.2.0: no adapter name
    torch.save({"model": {**proj_v2, **legacy}}, root / "minigptv2_peft020.pth")
    proj_v4 = {"llama_proj.weight": _rand(TEXT, Q_HIDDEN), "llama_proj.bias": _rand(TEXT)}
    torch.save({"model": proj_v4}, root / "minigpt4.pth")
    return {
        "root": root, "eva": eva, "blip2": blip2, "peft_lm": peft_lm, "proj_v2": proj_v2, "proj_v4": proj_v4,
        "vocab": len(tok),
    }  # fmt: skip


def _v2_options(files):
    return {"eva": files["root"] / "eva_vit_g.pth", "llm": files["root"] / "llm", "vision_layers": KEPT_BLOCKS,
            "vision_heads": HEADS}  # fmt: skip


@pytest.fixture(scope="module")
def v2_dir(files):
    """MiniGPT-v2 imported at twice the file's resolution (MiniGPT-v2's 224 -> 448), LoRA merged."""
    out = files["root"] / "out_v2"
    import_minigptv2(
        files["root"] / "minigptv2_default.pth", out, image_size=2 * GRID * PATCH, **_v2_options(files)
    )
    return out


@pytest.fixture(scope="module")
def v4_dir(files):
    out = files["root"] / "out_v4"
    import_minigpt4(
        files["root"] / "minigpt4.pth", out, qformer=files["root"] / "blip2_pretrained_flant5xxl.pth",
        image_size=GRID * PATCH, qformer_heads=Q_HEADS, **_v2_options(files),
    )  # fmt: skip
    return out


def _pixels(size, seed=1):
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_position_interpolation_resizes_the_patch_grid_bicubically_and_keeps_cls():
    torch.manual_seed(3)
    pos = _rand(1, 1 + 16 * 16, 24)
    resized = interpolate_pos_embed(pos, 32)
    assert resized.shape == (1, 1 + 32 * 32, 24)
    assert torch.equal(resized[:, :1], pos[:, :1])
    # transformers' own on-the-fly interpolation (Blip2VisionEmbeddings) computes the same resize
    config = Blip2VisionConfig(hidden_size=24, image_size=16 * 14, patch_size=14, num_attention_heads=2)
    embeddings = Blip2VisionModel(config).embeddings
    with torch.no_grad():
        embeddings.position_embedding.copy_(pos)
        theirs = embeddings.interpolate_pos_encoding(torch.zeros(1, 1 + 32 * 32, 24), 32 * 14, 32 * 14)
    torch.testing.assert_close(resized, theirs, atol=1e-6, rtol=0)
    assert interpolate_pos_embed(pos, 16) is pos


def test_eva_tower_with_ln_vision_equals_blip2_vision_model_at_the_file_resolution(files, v4_dir):
    model = groundlm.load(v4_dir).model
    reference = reference_tower(files["eva"], files["blip2"], GRID * PATCH)
    px = _pixels(GRID * PATCH)
    with torch.no_grad():
        ours = model.connector.vision_norm(select_image_features(model.vision_tower, px, -1, "full"))
        theirs = reference(pixel_values=px).last_hidden_state  # [B, 1 + 16, C], ln_vision applied
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert model.vision_tower.config.num_hidden_layers == KEPT_BLOCKS
    report = json.loads((v4_dir / REPORT_FILE).read_text())
    dropped = [n for n in report["dropped"] if n.startswith(f"visual_encoder.blocks.{KEPT_BLOCKS}.")]
    assert len(dropped) == 13  # every name of the file's last block is reported as dropped


def test_eva_tower_at_twice_the_resolution_equals_blip2_with_interpolated_positions(files, v2_dir):
    model = groundlm.load(v2_dir).model
    assert model.vision_tower.embeddings.position_embedding.shape == (1, 1 + (2 * GRID) ** 2, WIDTH)
    ln_identity = {"ln_vision.weight": torch.ones(WIDTH), "ln_vision.bias": torch.zeros(WIDTH)}
    reference = reference_tower(files["eva"], ln_identity, GRID * PATCH)
    px = _pixels(2 * GRID * PATCH)
    with torch.no_grad():
        ours = model.vision_norm(select_image_features(model.vision_tower, px, -1, "default"))
        theirs = reference(pixel_values=px, interpolate_pos_encoding=True).last_hidden_state[:, 1:]
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    report = json.loads((v2_dir / REPORT_FILE).read_text())
    assert any(a.startswith("ln_vision: weight 1, bias 0") for a in report["assumed"])


def test_concat4_features_follow_minigptv2_view_of_four_sequence_adjacent_tokens(files, v2_dir):
    model = groundlm.load(v2_dir).model
    px = _pixels(2 * GRID * PATCH, seed=2)
    ln_identity = {"ln_vision.weight": torch.ones(WIDTH), "ln_vision.bias": torch.zeros(WIDTH)}
    with torch.no_grad():
        embeds = reference_tower(files["eva"], ln_identity, GRID * PATCH)(
            pixel_values=px, interpolate_pos_encoding=True
        ).last_hidden_state[:, 1:, :]  # minigpt_v2.py encode_img: ln_vision(ViT(image))[:, 1:, :]
        bs, pn, hs = embeds.shape
        grouped = embeds.view(bs, pn // 4, hs * 4)  # ... .view(bs, int(pn / 4), int(hs * 4))
        theirs = grouped @ files["proj_v2"]["llama_proj.weight"].T + files["proj_v2"]["llama_proj.bias"]
        ours = model.get_image_features(px)
    assert ours.shape == (2, (2 * GRID) ** 2 // 4, TEXT)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_qformer_equals_blip2_qformer_model_and_connector_follows_minigpt4(files, v4_dir):
    model = groundlm.load(v4_dir).model
    reference = reference_qformer(files["blip2"])
    queries = files["blip2"]["query_tokens"].expand(2, -1, -1)
    states = torch.randn(2, 1 + GRID * GRID, WIDTH)
    with torch.no_grad():
        ours = model.connector.qformer(query_embeds=queries, encoder_hidden_states=states).last_hidden_state
        theirs = reference(query_embeds=queries, encoder_hidden_states=states).last_hidden_state
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
        # the whole path: ln_vision(ViT(image)) (every token) -> Q-Former(query_tokens) -> llama_proj
        px = _pixels(GRID * PATCH, seed=4)
        image = reference_tower(files["eva"], files["blip2"], GRID * PATCH)(pixel_values=px).last_hidden_state
        query_out = reference(query_embeds=queries, encoder_hidden_states=image).last_hidden_state
        expected = query_out @ files["proj_v4"]["llama_proj.weight"].T + files["proj_v4"]["llama_proj.bias"]
        torch.testing.assert_close(model.get_image_features(px), expected, atol=1e-5, rtol=0)
    assert model.config.num_image_tokens == QUERIES
    report = json.loads((v4_dir / REPORT_FILE).read_text())
    assert (
        "t5_proj.weight" in report["dropped"] and "Qformer.bert.embeddings.position_ids" in report["dropped"]
    )
    assert "Qformer.bert.encoder.layer.0.intermediate.dense.weight" in report["dropped"]


def _logits(lm, ids):
    with torch.no_grad():
        return lm(input_ids=ids).logits


def test_merged_lora_gives_the_peft_models_logits(files, v2_dir):
    ids = torch.tensor([[1, 5, 9, 14, 30, 7, 2]])
    ours = _logits(groundlm.load(v2_dir).model.language_model, ids)[..., : files["vocab"]]
    theirs = _logits(files["peft_lm"], ids)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    with files["peft_lm"].disable_adapter():
        base = _logits(files["peft_lm"], ids)
    assert (ours - base).abs().max() > 1e-3  # the adapters change the logits: the comparison is not vacuous


def test_unmerged_lora_is_saved_as_a_peft_adapter_with_peft_020_key_names(files, tmp_path):
    out = tmp_path / "v2_adapter"
    import_minigptv2(
        files["root"] / "minigptv2_peft020.pth", out, merge_lora=False, image_size=2 * GRID * PATCH,
        **_v2_options(files),
    )  # fmt: skip
    lm = groundlm.load(out).model.language_model
    ids = torch.tensor([[1, 6, 11, 3, 2]])
    with files["peft_lm"].disable_adapter():
        torch.testing.assert_close(_logits(lm, ids)[..., : files["vocab"]], _logits(files["peft_lm"], ids))
    adapted = PeftModel.from_pretrained(lm, out / LORA_DIR).eval()
    torch.testing.assert_close(_logits(adapted, ids)[..., : files["vocab"]], _logits(files["peft_lm"], ids),
                               atol=1e-5, rtol=0)  # fmt: skip


def _ask_matches_transformers_generate(directory, prompt):
    lm = groundlm.load(directory)
    image = Image.new("RGB", (50, 30), (200, 30, 30))
    encoded = lm.processor.prompt(image, [{"role": "user", "content": prompt}])
    assert encoded.input_ids.count(lm.processor.image_token_id) == lm.model.config.num_image_tokens
    inputs = {k: v for k, v in lm.processor.pad([encoded], side="left").items() if k != "labels"}
    stop, tok = lm.processor.stop_token_id, lm.processor.tokenizer
    generated = lm.model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=stop,
                                  pad_token_id=tok.pad_token_id)[0, inputs["input_ids"].shape[1]:]  # fmt: skip
    assert len(generated) > 0
    assert lm.ask(image, prompt, max_new_tokens=6).text == lm.processor.decode(generated.tolist())
    return lm


def test_imported_minigptv2_answers_with_the_llama2_template(v2_dir):
    lm = _ask_matches_transformers_generate(v2_dir, "[refer] where is the cup")
    rendered = lm.processor.template.render(
        [{"role": "user", "content": "[refer] x"}], add_generation_prompt=True
    )
    assert "".join(s.text for s in rendered) == "<s>[INST] <Img><image></Img> [refer] x [/INST]"


def test_imported_minigpt4_answers_with_the_vicuna_template(v4_dir):
    lm = _ask_matches_transformers_generate(v4_dir, "describe this image")
    assert lm.processor.config.template == "vicuna"


def test_unknown_and_missing_keys_are_named(files, tmp_path):
    eva = dict(files["eva"])
    eva["blocks.0.gamma_1"] = torch.ones(WIDTH)  # layer scale: not in MiniGPT's EVA
    torch.save(eva, tmp_path / "eva_extra.pth")
    options = {**_v2_options(files), "eva": tmp_path / "eva_extra.pth"}
    with pytest.raises(WeightsError, match=r"blocks\.0\.gamma_1"):
        import_minigptv2(files["root"] / "minigptv2_default.pth", tmp_path / "a", **options)
    del eva["blocks.0.gamma_1"], eva["blocks.1.attn.v_bias"]
    torch.save(eva, tmp_path / "eva_missing.pth")
    with pytest.raises(WeightsError, match=r"encoder\.layers\.1\.self_attn\.qkv\.bias"):
        import_minigptv2(files["root"] / "minigptv2_default.pth", tmp_path / "b",
                         **{**options, "eva": tmp_path / "eva_missing.pth"})  # fmt: skip
    state = torch.load(files["root"] / "minigptv2_default.pth", weights_only=True)["model"]
    dropped = [n for n in state if "layers.1.self_attn.v_proj.lora_B" in n]
    torch.save(
        {"model": {n: t for n, t in state.items() if n not in dropped}}, tmp_path / "v2_missing_lora.pth"
    )
    with pytest.raises(WeightsError, match=r"layers\.1\.self_attn\.v_proj\.lora_B"):
        import_minigptv2(tmp_path / "v2_missing_lora.pth", tmp_path / "c", **_v2_options(files))
    with pytest.raises(WeightsError, match="Q-Former weights|holds LoRA"):
        import_minigpt4(files["root"] / "minigptv2_default.pth", tmp_path / "d", **_v2_options(files))


class Payload:
    """Any class: a weights-only load must refuse to rebuild it."""


def test_a_pickled_object_is_refused_not_unpickled(files, tmp_path):
    torch.save({"model": {"llama_proj.weight": Payload()}}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="evil.pth"):
        import_minigptv2(tmp_path / "evil.pth", tmp_path / "out", **_v2_options(files))

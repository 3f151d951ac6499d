"""Tests for groundlm.modeling: config, towers, connectors, the model, saving/loading and generation.

Every model here is tiny (width 32, 2 layers, 28 px images with 7 px patches = 16 patches) and random.
"""

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    CLIPConfig,
    CLIPModel,
    CLIPVisionModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    ViTConfig,
    ViTModel,
)

from groundlm.modeling import (
    GroundLMConfig,
    GroundLMForConditionalGeneration,
    load_vision_tower,
)
from groundlm.modeling.connector import Concat4Connector, MLPConnector

IMAGE_TOKEN_ID = 5
PAD_ID = 0
VOCAB = 64
TOWER = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    image_size=28,
    patch_size=7,
)
TOWERS = {
    "clip": {"model_type": "clip_vision_model", **TOWER},
    "siglip": {"model_type": "siglip_vision_model", **TOWER},
    "vit": {"model_type": "vit", **TOWER},
}
TEXT = {
    "model_type": "llama",
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "bos_token_id": 1,
    "eos_token_id": None,  # no early stop: every generation runs its full max_new_tokens
    "pad_token_id": PAD_ID,
}
# A causal LM with learned absolute positions (unlike RoPE, a shifted position changes its output).
GPT2_TEXT = {
    "model_type": "gpt2",
    "vocab_size": VOCAB,
    "n_embd": 32,
    "n_layer": 2,
    "n_head": 4,
    "n_positions": 256,
    "bos_token_id": 1,
    "eos_token_id": None,
    "pad_token_id": PAD_ID,
}
QFORMER = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}


def make_config(connector: str = "mlp2x_gelu", tower: str = "clip", **overrides) -> GroundLMConfig:
    """A tiny config; `overrides` go to GroundLMConfig (text overrides via text_config=...)."""
    kwargs = dict(
        vision_config=dict(TOWERS[tower]),
        text_config=dict(TEXT),
        connector=connector,
        image_token_id=IMAGE_TOKEN_ID,
        pad_token_id=PAD_ID,
        qformer_config=dict(QFORMER),
        num_query_tokens=8,
    )
    kwargs.update(overrides)
    return GroundLMConfig(**kwargs)


def make_model(connector: str = "mlp2x_gelu", tower: str = "clip", seed: int = 0, **overrides):
    """A tiny random model in eval mode (no dropout), deterministic for `seed`."""
    torch.manual_seed(seed)
    return GroundLMForConditionalGeneration(make_config(connector, tower, **overrides)).eval()


def prompt_ids(num_image_tokens: int, text_before: list[int], text_after: list[int]) -> list[int]:
    """BOS, some text, the expanded image placeholder, more text (ids 10.. are ordinary words)."""
    return [1, *text_before, *([IMAGE_TOKEN_ID] * num_image_tokens), *text_after]


def left_pad(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded input_ids [B, T] and attention_mask [B, T]."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask


def images(n: int, seed: int = 1) -> torch.Tensor:
    """n random normalised images [n, 3, 28, 28]."""
    return torch.randn(n, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------------------
# Config


def test_config_counts_image_tokens():
    # 28 px / 7 px patches = 4 x 4 = 16 patches; CLIP and ViT add a CLS token, SigLIP has none.
    assert make_config("linear", "clip").num_image_tokens == 16
    assert make_config("linear", "clip", vision_feature_select_strategy="full").num_image_tokens == 17
    assert make_config("linear", "vit", vision_feature_select_strategy="full").num_image_tokens == 17
    assert make_config("linear", "siglip", vision_feature_select_strategy="full").num_image_tokens == 16
    assert make_config("linear", "siglip").num_image_tokens == 16
    assert make_config("concat4", "clip").num_image_tokens == 4
    assert make_config("qformer", "clip").num_image_tokens == 8
    assert make_config().image_size == 28


def test_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="linear, mlp2x_gelu, concat4, merge2x2, qformer"):
        make_config("mlp3x")
    with pytest.raises(ValueError, match="divisible by 4"):
        make_config("concat4", "clip", vision_feature_select_strategy="full")  # 17 tokens
    with pytest.raises(ValueError, match="default, full"):
        make_config(vision_feature_select_strategy="cls_patch")
    with pytest.raises(ValueError, match="out of range"):
        make_config(vision_feature_layer=-4)  # 2 layers: hidden states -3 .. 2
    with pytest.raises(ValueError, match="resize, pad"):
        make_config(frame="crop")


def test_config_accepts_config_objects_and_round_trips(tmp_path):
    from transformers import Blip2QFormerConfig, LlamaConfig, SiglipVisionConfig

    config = GroundLMConfig(
        vision_config=SiglipVisionConfig(**TOWER),
        text_config=LlamaConfig(**{k: v for k, v in TEXT.items() if k != "model_type"}),
        qformer_config=Blip2QFormerConfig(**QFORMER),
        connector="qformer",
        image_token_id=IMAGE_TOKEN_ID,
        frame="pad",
    )
    assert config.qformer_config.encoder_hidden_size == 32  # follows the tower's width
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, GroundLMConfig)
    assert loaded.to_json_string() == config.to_json_string()
    assert loaded.vision_config.model_type == "siglip_vision_model"
    assert loaded.frame == "pad" and loaded.num_image_tokens == config.num_image_tokens


# ------------------------------------------------------------------------------------------------------------
# Towers and connectors


@pytest.mark.parametrize("tower", ["clip", "siglip", "vit"])
@pytest.mark.parametrize("strategy", ["default", "full"])
def test_towers_give_num_image_tokens(tower, strategy):
    model = make_model("linear", tower, vision_feature_select_strategy=strategy)
    features = model.get_image_features(images(2))
    assert features.shape == (2, model.config.num_image_tokens, 32)


def test_vit_tower_has_no_pooler():
    model = make_model("linear", "vit")
    assert isinstance(model.vision_tower, ViTModel) and model.vision_tower.pooler is None


@pytest.mark.parametrize("connector", ["linear", "mlp2x_gelu", "concat4", "qformer"])
def test_connectors_give_num_image_tokens(connector):
    model = make_model(connector)
    features = model.get_image_features(images(3))
    assert features.shape == (3, model.config.num_image_tokens, 32)


def test_concat4_groups_four_sequence_adjacent_tokens():
    torch.manual_seed(0)
    connector = Concat4Connector(vision_hidden=8, text_hidden=16)
    x = torch.randn(2, 16, 8)  # [B, N, C]
    out = connector(x)  # [B, N/4, D]
    assert out.shape == (2, 4, 16)
    for j in range(4):
        group = torch.cat([x[:, 4 * j], x[:, 4 * j + 1], x[:, 4 * j + 2], x[:, 4 * j + 3]], dim=-1)  # [B, 4C]
        torch.testing.assert_close(out[:, j], connector.linear(group))


def test_mlp_connector_uses_llava_layer_names():
    assert {name for name, _ in MLPConnector(8, 16).named_parameters()} == {
        "linear_1.weight",
        "linear_1.bias",
        "linear_2.weight",
        "linear_2.bias",
    }


# ------------------------------------------------------------------------------------------------------------
# Parity with transformers' LLaVA


def llava_key_to_groundlm(key: str) -> str:
    """Where a LlavaForConditionalGeneration weight lives in GroundLMForConditionalGeneration."""
    if key.startswith("model.vision_tower."):
        return "vision_tower." + key.removeprefix("model.vision_tower.")
    if key.startswith("model.multi_modal_projector."):
        return "connector." + key.removeprefix("model.multi_modal_projector.")
    if key.startswith("model.language_model."):
        return "language_model.model." + key.removeprefix("model.language_model.")
    if key == "lm_head.weight":
        return "language_model.lm_head.weight"
    raise KeyError(key)


def test_logits_match_transformers_llava():
    text = {k: v for k, v in TEXT.items() if k != "model_type"}
    llava_config = LlavaConfig(
        vision_config=dict(TOWERS["clip"]),
        text_config={"model_type": "llama", **text},
        image_token_index=IMAGE_TOKEN_ID,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    torch.manual_seed(0)
    llava = LlavaForConditionalGeneration(llava_config).eval()
    ours = make_model("mlp2x_gelu", "clip", seed=1)

    state = {llava_key_to_groundlm(k): v for k, v in llava.state_dict().items()}
    assert set(state) == set(ours.state_dict())
    ours.load_state_dict(state, strict=True)

    n = ours.config.num_image_tokens
    ids = torch.tensor([prompt_ids(n, [10, 11], [12, 13, 14]), prompt_ids(n, [15, 16], [17, 18, 19])])
    pixel_values = images(2)
    with torch.no_grad():
        expected = llava(input_ids=ids, pixel_values=pixel_values).logits
        got = ours(input_ids=ids, pixel_values=pixel_values).logits
    assert got.shape == expected.shape == (2, ids.shape[1], VOCAB)
    assert (got - expected).abs().max().item() <= 1e-4


# ------------------------------------------------------------------------------------------------------------
# The model


def test_mismatched_image_token_count_raises():
    model = make_model()
    ids = torch.tensor([prompt_ids(40, [10], [11])])  # 40 image tokens for 2 images x 16 features
    with pytest.raises(ValueError, match=r"prompt holds 40 image tokens but the images give 2 x 16 = 32"):
        model(input_ids=ids, pixel_values=images(2))


def test_loss_is_finite_and_trains_the_connector():
    model = make_model("concat4").train()
    n = model.config.num_image_tokens
    ids = torch.tensor([prompt_ids(n, [10, 11], [12, 13, 14, 15])] * 2)
    labels = ids.clone()
    labels[:, : 3 + n] = -100  # no loss on BOS, instruction and image tokens
    out = model(input_ids=ids, pixel_values=images(2), labels=labels)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    grad = model.connector.linear.weight.grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize("tie", [False, True])
def test_save_and_load_give_identical_logits(tmp_path, tie):
    model = make_model("qformer", text_config={**TEXT, "tie_word_embeddings": tie})
    lm = model.language_model
    assert (lm.lm_head.weight is lm.model.embed_tokens.weight) == tie
    n = model.config.num_image_tokens
    ids = torch.tensor([prompt_ids(n, [10], [11, 12])])
    pixel_values = images(1)
    with torch.no_grad():
        expected = model(input_ids=ids, pixel_values=pixel_values).logits

    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    for loader in (GroundLMForConditionalGeneration, AutoModelForImageTextToText, AutoModelForCausalLM):
        loaded = loader.from_pretrained(tmp_path, local_files_only=True).eval()
        assert isinstance(loaded, GroundLMForConditionalGeneration)
        lm = loaded.language_model
        assert (lm.lm_head.weight is lm.model.embed_tokens.weight) == tie
        with torch.no_grad():
            got = loaded(input_ids=ids, pixel_values=pixel_values).logits
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_resize_token_embeddings():
    model = make_model()
    model.resize_token_embeddings(VOCAB + 3)
    assert model.config.text_config.vocab_size == VOCAB + 3
    assert model.get_output_embeddings().weight.shape[0] == VOCAB + 3
    n = model.config.num_image_tokens
    ids = torch.tensor([prompt_ids(n, [VOCAB + 2], [VOCAB + 1])])
    labels = ids.masked_fill(ids == IMAGE_TOKEN_ID, -100)
    out = model(input_ids=ids, pixel_values=images(1), labels=labels)
    assert out.logits.shape[-1] == VOCAB + 3 and torch.isfinite(out.loss)


@pytest.mark.parametrize(
    ("connector", "text"), [("mlp2x_gelu", TEXT), ("qformer", TEXT), ("concat4", GPT2_TEXT)]
)
def test_batched_left_padded_generation_matches_one_at_a_time(connector, text):
    model = make_model(connector, text_config=dict(text))
    n = model.config.num_image_tokens
    rows = [
        prompt_ids(n, [10], [11]),
        prompt_ids(n, [12, 13, 14, 15], [16, 17, 18, 19, 20]),
        prompt_ids(n, [21, 22], [23]),
    ]
    pixel_values = images(3)
    generate = dict(max_new_tokens=8, do_sample=False, pad_token_id=PAD_ID)

    with torch.no_grad():
        ids, mask = left_pad(rows)
        batched = model.generate(input_ids=ids, attention_mask=mask, pixel_values=pixel_values, **generate)
        batched_new = batched[:, ids.shape[1] :]
        for i, row in enumerate(rows):
            single_ids = torch.tensor([row])
            single = model.generate(
                input_ids=single_ids,
                attention_mask=torch.ones_like(single_ids),
                pixel_values=pixel_values[i : i + 1],
                **generate,
            )
            single_new = single[0, single_ids.shape[1] :]
            assert single_new.shape == (8,)
            assert batched_new[i].tolist() == single_new.tolist(), f"prompt {i}"


def test_forward_positions_follow_the_attention_mask():
    # Without position_ids, a left-padded row must give the same last-token logits as the unpadded row. RoPE
    # only sees relative positions, so this needs a model with absolute ones (GPT-2) to mean anything.
    model = make_model(text_config=dict(GPT2_TEXT))
    n = model.config.num_image_tokens
    short, long = prompt_ids(n, [10], [11]), prompt_ids(n, [12, 13, 14], [15, 16])
    ids, mask = left_pad([short, long])
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask, pixel_values=images(2)).logits[0, -1]
        alone = model(input_ids=torch.tensor([short]), pixel_values=images(2)[:1]).logits[0, -1]
    torch.testing.assert_close(padded, alone, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------------------
# Loading pretrained towers (offline only)


def test_load_vision_tower_needs_local_files(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="needs its files locally"):
        load_vision_tower("some-org/not-here")


def test_load_vision_tower_from_a_full_clip_checkpoint(tmp_path):
    text = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=VOCAB
    )
    torch.manual_seed(0)
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=TOWER, projection_dim=16))
    clip.save_pretrained(tmp_path)
    tower = load_vision_tower(tmp_path)
    assert isinstance(tower, CLIPVisionModel) and tower.config.hidden_size == 32
    torch.testing.assert_close(
        tower.embeddings.patch_embedding.weight, clip.vision_model.embeddings.patch_embedding.weight
    )


def test_load_vision_tower_vit_without_pooler(tmp_path):
    torch.manual_seed(0)
    vit = ViTModel(ViTConfig(**TOWER))
    vit.save_pretrained(tmp_path)
    tower = load_vision_tower(tmp_path)
    assert isinstance(tower, ViTModel) and tower.pooler is None
    torch.testing.assert_close(tower.embeddings.cls_token, vit.embeddings.cls_token)

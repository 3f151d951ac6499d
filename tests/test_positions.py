"""Model options for training from scratch: 2-D sinusoidal codes on the visual tokens, coordinate-token init,
a LayerNorm on the tower's features."""

from __future__ import annotations

import pytest
import torch

from groundlm.modeling.positions import (
    coordinate_code,
    image_position_codes,
    image_token_centres,
    sincos_1d,
    sincos_2d,
)
from groundlm.presets import build_model

from .test_modeling import make_config, make_model


def test_sincos_codes_are_smooth_and_distinct():
    values = torch.linspace(0, 1, 101)
    code = sincos_1d(values, 32, bins=100)  # [101, 32]
    assert code.shape == (101, 32) and code.abs().max() <= 1.0
    sims = code @ code.T  # nearby values are more alike than far ones, and no two values share a code
    assert sims[30, 31] > sims[30, 60]
    assert (torch.cdist(code, code) + torch.eye(101) * 10).min() > 0.05
    xy = sincos_2d(torch.tensor([[0.2, 0.7]]), 64, bins=100)
    assert torch.allclose(xy[0, :32], sincos_1d(torch.tensor(0.2), 32, 100))
    assert torch.allclose(xy[0, 32:], sincos_1d(torch.tensor(0.7), 32, 100))
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(xy, 30, 100)


def test_token_centres_follow_the_connector():
    # 28 px / 7 px patches: a 4 x 4 grid, row-major; concat4 merges each row of 4 into one token.
    linear = image_token_centres(make_config("linear"))
    assert linear.shape == (16, 2)
    assert torch.allclose(linear[1], torch.tensor([0.375, 0.125]))  # second patch of the first row
    concat = image_token_centres(make_config("concat4"))
    assert torch.allclose(concat, torch.tensor([[0.5, y] for y in (0.125, 0.375, 0.625, 0.875)]))


def test_config_checks_the_option():
    assert make_config().image_position_embedding == "none"  # the default keeps existing models as they were
    with pytest.raises(ValueError, match="none, sincos2d"):
        make_config(image_position_embedding="learned")
    with pytest.raises(ValueError, match="qformer"):
        make_config("qformer", image_position_embedding="sincos2d")


def test_codes_are_added_after_the_connector(tmp_path):
    plain = make_model("mlp2x_gelu", seed=0)
    coded = make_model("mlp2x_gelu", seed=0, image_position_embedding="sincos2d")
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        difference = coded.get_image_features(pixels) - plain.get_image_features(pixels)
    assert torch.allclose(difference, image_position_codes(coded.config).expand(2, -1, -1), atol=1e-6)
    # A saved model keeps the option (in its config) and holds no extra tensors.
    coded.save_pretrained(tmp_path)
    again = type(coded).from_pretrained(tmp_path).eval()
    assert again.config.image_position_embedding == "sincos2d"
    with torch.no_grad():
        assert torch.allclose(again.get_image_features(pixels), coded.get_image_features(pixels))


def test_coordinate_tokens_start_from_the_code_of_their_value():
    model, processor = build_model("demo", seed=0)
    ids = processor.tokenizer.convert_tokens_to_ids([f"<{k}>" for k in range(101)])
    for table in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        table = table.detach()
        rows = table[ids]
        code = coordinate_code(100, table.shape[1])
        # The rows are the code, scaled to the random rows' spread.
        assert torch.allclose(rows / rows.norm(dim=1, keepdim=True), code / code.norm(dim=1, keepdim=True), atol=1e-5)
        assert 0.3 < float(rows.std() / table.std()) < 3
    plain, _ = build_model("tiny", seed=0)
    assert plain.config.image_position_embedding == "none"


def test_vision_feature_norm_normalises_the_towers_features():
    assert make_config().vision_feature_norm is False and make_model().vision_norm is None
    model = make_model("linear", seed=0, vision_feature_norm=True)
    pixels = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        model.vision_tower.embeddings.patch_embedding.weight.mul_(100.0)  # a tower with huge features
        features = model.get_image_features(pixels)
        normed = model.vision_norm(
            model.vision_tower(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        )
    assert torch.allclose(features, model.connector(normed), atol=1e-5)
    assert "vision_norm.weight" in model.state_dict()
    demo, _ = build_model("demo", seed=0)
    assert demo.vision_norm is not None and demo.config.vision_feature_layer == -1

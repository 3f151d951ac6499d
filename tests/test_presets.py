"""The model spec: presets are overrides of the one ModelSpec, a recipe's model fields go over its preset, the
resolved spec is what a recipe saves, and knob choices come from where each knob's variants live."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
import yaml

from groundlm.modeling import GroundLMConfig
from groundlm.modeling.connector import CONNECTORS
from groundlm.presets import PRESETS, ModelSpec, build_model, get_preset
from groundlm.train import RecipeError, dry_run, load_recipe
from groundlm.train.recipe import from_dict, to_yaml

from .train_helpers import tiny_recipe


def test_every_preset_names_only_model_spec_fields():
    known = {f.name for f in dataclasses.fields(ModelSpec)}
    for name, overrides in PRESETS.items():
        assert set(overrides) <= known, name
        spec = get_preset(name)
        assert spec.preset == name and all(getattr(spec, k) == v for k, v in overrides.items())
    with pytest.raises(ValueError, match="choose one of"):
        get_preset("huge")


def test_the_word_level_vocabulary_keeps_its_token_ids():
    # Same-seed training numerics (the demo's scores) depend on these ids; the word list comes from
    # train/build.py WORD_LISTS now, and must give the tokenizer it gave when presets.py built it.
    _, processor = build_model("tiny")
    vocab = sorted(processor.tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    assert len(vocab) == 255
    assert processor.tokenizer.convert_tokens_to_ids(["<0>", "red", "cup", "[refer]", "<image>"]) == [16, 204, 254, 120, 10]
    assert hashlib.sha256(json.dumps(vocab).encode()).hexdigest().startswith("507c39f15d6fc122")


def test_recipe_model_fields_go_over_the_preset_and_the_resolved_spec_is_saved():
    recipe = from_dict({**tiny_recipe(), "model": {"preset": "demo", "vision_feature_layer": -2}})
    model = recipe.model
    assert model.vision_hidden == 192 and model.image_position_embedding == "sincos2d"  # from the preset
    assert model.vision_feature_layer == -2  # the recipe's own field wins
    saved = yaml.safe_load(to_yaml(recipe))["model"]
    # every field, but a field added after runs were saved is left out at its default (resume compares the YAML)
    assert set(saved) == {f.name for f in dataclasses.fields(ModelSpec)} - {"region_marks"} and saved["text_hidden"] == 256
    assert from_dict(yaml.safe_load(to_yaml(recipe))).model == model


def _model_error(model: dict) -> str:
    with pytest.raises(RecipeError) as err:
        from_dict({**tiny_recipe(), "model": model}, "r.yaml")
    return str(err.value)


def test_knobs_a_model_kind_does_not_use_are_refused_by_name():
    parts = {"vision_tower": "t", "language_model": "l"}
    assert "r.yaml: model.image_size: applies to models built from scratch only" in _model_error(
        {**parts, "image_size": 96}
    )
    assert "model.coordinate_init: applies to models built from scratch only" in _model_error(
        {**parts, "coordinate_init": "sincos"}
    )
    assert "model.dtype: applies to pretrained parts only" in _model_error({"preset": "tiny", "dtype": "bfloat16"})
    assert "model: pretrained parts need both" in _model_error({"vision_tower": "t"})
    assert "model.preset: unknown preset 'huge'" in _model_error({"preset": "huge"})


def test_knob_choices_come_from_where_the_variants_live():
    message = _model_error({"preset": "tiny", "connector": "mlp3x"})
    assert "model.connector: 'mlp3x' is not one of" in message and all(c in message for c in CONNECTORS)
    assert "model.location_codec: 'pixels' is not one of" in _model_error({"preset": "tiny", "location_codec": "pixels"})
    assert "model.words: 'coco' is not one of ['shapes']" in _model_error({"preset": "tiny", "words": "coco"})
    with pytest.raises(ValueError, match="unknown location_codec 'pixels'; choose one of text, tokens, embedding"):
        GroundLMConfig(location_codec="pixels")


def test_a_dry_run_keeps_the_recipes_knobs_on_a_tiny_model_from_scratch():
    real = load_recipe("minigptv2").model
    stand_in = dry_run(load_recipe("minigptv2")).model
    assert stand_in.vision_tower is None and stand_in.language_model is None and stand_in.preset == "tiny"
    assert (stand_in.image_size, stand_in.vision_hidden, stand_in.text_layers) == (64, 64, 2)
    for knob in ("connector", "template", "frame", "vision_feature_layer", "location_codec", "location_bins"):
        assert getattr(stand_in, knob) == getattr(real, knob), knob

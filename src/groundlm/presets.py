"""The model spec: every knob of a model a recipe builds, declared once, and named presets that override it.

A model is built from scratch (random weights, a word-level tokenizer: what tests, the demo and the benchmarks
train on a CPU), from pretrained parts (a vision tower and a causal language model with its tokenizer, each a
local path or a hub id already in the cache), or from a whole model (`init_from`: a groundlm model directory,
or a published checkpoint read by an importer of `weights/`). `ModelSpec` holds both kinds of knob; a preset is a dict of
overrides, applied under a recipe's own `model:` fields, and the resolved spec (every field) is what the saved
recipe holds. `train/build.py` turns a spec into the model and its processor; the valid choices of each knob
are declared where its variants live (listed in `train/recipe.py`'s `_check_model`).

    model, processor = build_model("tiny", seed=0)
    model, processor = build_model(get_preset("tiny", location_codec="embedding"))
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class InitFrom:
    """A whole model to start from: a groundlm model directory (`kind: groundlm`), or a published checkpoint
    that the importer `kind` (a name in `weights.IMPORTERS`: `llava-hf`, `llava`, ...) reads, with its
    `options`. In YAML also a string: `PATH` (a groundlm model directory) or `KIND:PATH`."""

    path: str
    kind: str = "groundlm"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelSpec:
    """The model to build: from scratch (the sizes below), from pretrained parts (`vision_tower` + LM) or from
    a whole model (`init_from`)."""

    preset: str | None = None  # the PRESETS entry this spec was resolved from (a label; get_preset applies it)
    vision_tower: str | None = None  # pretrained: a CLIP / SigLIP / ViT checkpoint
    language_model: str | None = None  # pretrained: a causal LM checkpoint with its tokenizer
    # A whole model to start from (its weights, tokenizer and processor); the codec's new parts go on top.
    init_from: InitFrom | str | None = None
    dtype: str = "float32"  # pretrained: the dtype the parts are loaded in (from scratch: always float32)
    # From scratch only (pretrained parts bring their own configs and tokenizer):
    image_size: int = 64  # square input, pixels
    patch_size: int = 8
    vision_hidden: int = 64  # the tower's width (its MLP is twice as wide)
    vision_layers: int = 2
    text_hidden: int = 128  # the language model's width (its MLP is twice as wide)
    text_layers: int = 2
    heads: int = 4  # attention heads of the tower and of the language model
    words: str = "shapes"  # the word list of the word-level tokenizer (train/build.py WORD_LISTS)
    coordinate_init: str = "random"  # how `<0>`..`<bins>` start (modeling/positions.py COORDINATE_INITS)
    # Both kinds:
    vision_feature_norm: bool = False  # a LayerNorm (module `vision_norm`) on the tower's features
    connector: str = "mlp2x_gelu"  # vision features -> LM embeddings (modeling/connector.py CONNECTORS)
    template: str = "llama2"  # the chat template the finished model is used with (templates.py TEMPLATES)
    frame: str = "resize"  # how an image fits the square input (geometry.py FRAMES)
    vision_feature_layer: int = -2  # which tower layer the connector reads (-1: the last)
    image_position_embedding: str = "none"  # a fixed code on the visual tokens (modeling/positions.py)
    region_marks: bool = False  # the user's boxes marked on the patch features (modeling/marks.py)
    location_codec: str = "text"  # how locations are written (location/__init__.py CODEC_NAMES)
    location_bins: int = 100  # coordinate bins of the text and tokens codecs
    # embedding codec: LocationHeadConfig overrides (l1_weight, giou_weight, cycle_weight, mask_decoder, ...)
    location_head: dict[str, Any] | None = None


SIZES = ("image_size", "patch_size", "vision_hidden", "vision_layers", "text_hidden", "text_layers", "heads")
# The fields a model built from pretrained parts does not use, and the one a model from scratch does not.
SCRATCH_ONLY = (*SIZES, "words", "coordinate_init")
PRETRAINED_ONLY = ("dtype",)

# Named overrides of ModelSpec. All three are MiniGPT-v2's architecture in miniature (plain resize, concat4
# connector, llama2 template, text locations), sized so a forward pass on a CPU takes milliseconds.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"connector": "concat4"},
    "small": {
        "connector": "concat4", "image_size": 96, "vision_hidden": 128, "vision_layers": 4, "text_hidden": 256,
        "text_layers": 4,
    },
    # The demo's model (`groundlm demo`, recipe `shapes`): ~5M parameters, sized so a 2-core CPU trains it to
    # ground in 15 minutes. Its tower is pretrained by the recipe's dense_patches stage, so the connector
    # reads the last layer; positions are added to the visual tokens and coordinate tokens start from the
    # same code (docs/recipes.md gives the reasons for each choice).
    "demo": {
        "connector": "concat4", "vision_hidden": 192, "vision_layers": 4, "text_hidden": 256, "text_layers": 4,
        "vision_feature_layer": -1, "vision_feature_norm": True, "image_position_embedding": "sincos2d",
        "coordinate_init": "sincos",
    },
}  # fmt: skip


def preset_overrides(name: str) -> dict[str, Any]:
    """The overrides of preset `name`, with an error listing the valid names."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def get_preset(name: str, **overrides: Any) -> ModelSpec:
    """The spec of preset `name`, with `overrides` (ModelSpec fields) over it."""
    return ModelSpec(**{**preset_overrides(name), **overrides, "preset": name})


def field_default(name: str) -> Any:
    """The default of ModelSpec field `name` (what a spec leaves a knob at when nothing sets it)."""
    return next(f.default for f in fields(ModelSpec) if f.name == name)


def build_model(preset: str | ModelSpec = "tiny", *, seed: int = 0):
    """A randomly initialised model and its processor for a preset name or a spec (deterministic for a seed).

    Returns `(GroundLMForConditionalGeneration, GroundLMProcessor)`.
    """
    # train/build.py imports this module for ModelSpec, so the builder is imported when first used.
    from .train.build import build_for_recipe

    return build_for_recipe(get_preset(preset) if isinstance(preset, str) else preset, seed=seed)


def new_model(out: str | Path, preset: str = "tiny", *, seed: int = 0) -> Path:
    """Write a randomly initialised model directory (weights, config, tokenizer, processor) to `out`."""
    model, processor = build_model(preset, seed=seed)
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out

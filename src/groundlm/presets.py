"""Model presets: small models built from configs with random weights, with their tokenizer and processor.

Real recipes start from pretrained towers and language models (a local path, or a hub id for users with
network). Presets are what tests, the demo and the benchmarks train from scratch on a CPU: every size below is
chosen so a forward pass takes milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .data.shapes import vocabulary
from .location import location_head_settings, make_codec
from .modeling import GroundLMConfig, GroundLMForConditionalGeneration
from .modeling.positions import coordinate_code
from .processor import GroundLMProcessor, ProcessorConfig
from .templates import TASKS, get_template
from .tokenizer import build_word_tokenizer

# Words beyond ShapesWorld's vocabulary that small models should know: the template role words and a few
# everyday words users type. Anything else maps to <unk>; a real recipe uses the language model's own tokenizer.
EXTRA_WORDS = """
human assistant user system the a an is are what where which how many there this that it of in on at to and
or not no yes image picture photo please describe tell me show find give location object cup
""".split()


def default_words() -> list[str]:
    """The word list of small models: everything ShapesWorld and the task builders emit, plus a few extras."""
    return [*vocabulary(), *EXTRA_WORDS]


@dataclass(frozen=True)
class Preset:
    """The sizes of a model built from scratch."""

    image_size: int = 64
    patch_size: int = 8
    vision_hidden: int = 64
    vision_layers: int = 2
    text_hidden: int = 128
    text_layers: int = 2
    heads: int = 4
    connector: str = "concat4"
    template: str = "llama2"
    frame: str = "resize"
    location_bins: int = 100
    location_codec: str = "text"  # text | tokens (<loc_k>, location_bins of them) | embedding (NExT-Chat)
    location_head: dict | None = None  # embedding: LocationHeadConfig overrides (loss weights, mask_decoder)
    vision_feature_layer: int = -2  # which tower layer the connector reads (-1: the last)
    vision_feature_norm: bool = False  # a LayerNorm on the tower's features before the connector
    image_position_embedding: str = "none"  # none | sincos2d (GroundLMConfig)
    coordinate_init: str = "random"  # random | sincos: `<0>`..`<bins>` start from a code of their value


# MiniGPT-v2's architecture in miniature: plain resize, concat4 connector, llama2 template, text locations.
PRESETS: dict[str, Preset] = {
    "tiny": Preset(),
    "small": Preset(image_size=96, vision_hidden=128, vision_layers=4, text_hidden=256, text_layers=4),
    # The demo's model (`groundlm demo`, recipe `shapes`): ~5M parameters, sized so a 2-core CPU trains it to
    # ground in 15 minutes. Its tower is pretrained by the recipe's dense_patches stage, so the connector
    # reads the last layer; positions are added to the visual tokens and coordinate tokens start from the
    # same code (docs/recipes.md has the measurements behind each choice).
    "demo": Preset(
        vision_hidden=192,
        vision_layers=4,
        text_hidden=256,
        text_layers=4,
        vision_feature_layer=-1,
        vision_feature_norm=True,
        image_position_embedding="sincos2d",
        coordinate_init="sincos",
    ),
}
COORDINATE_INITS = ("random", "sincos")


def get_preset(name: str) -> Preset:
    """The preset called `name`, with an error listing the valid names."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]


def build_processor(preset: Preset, num_image_tokens: int, words: list[str] | None = None) -> GroundLMProcessor:
    """A word-level tokenizer and processor for `preset`."""
    template = get_template(preset.template)
    codec = make_codec(preset)
    tokenizer = build_word_tokenizer(
        words if words is not None else default_words(),
        tokens=codec.special_tokens() + [f"[{t}]" for t in TASKS],
        # the stop string too: plain's "\n" would otherwise vanish in whitespace splitting
        special_tokens=[*template.special_tokens, template.stop],
    )
    config = ProcessorConfig(
        template=preset.template,
        image_size=preset.image_size,
        frame=preset.frame,
        num_image_tokens=num_image_tokens,
        location_bins=preset.location_bins,
        location_codec=preset.location_codec,
    )
    return GroundLMProcessor(tokenizer, config)


def build_model(
    preset: str | Preset = "tiny", *, seed: int = 0, words: list[str] | None = None
) -> tuple[GroundLMForConditionalGeneration, GroundLMProcessor]:
    """A randomly initialised model and its processor for a preset (deterministic for a given seed)."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    vision = {
        "model_type": "clip_vision_model",
        "image_size": p.image_size,
        "patch_size": p.patch_size,
        "hidden_size": p.vision_hidden,
        "intermediate_size": 2 * p.vision_hidden,
        "num_hidden_layers": p.vision_layers,
        "num_attention_heads": p.heads,
    }
    # The token count depends only on the vision config and connector; build the config once to learn it.
    probe = GroundLMConfig(vision_config=vision, text_config={"model_type": "llama"}, connector=p.connector)
    processor = build_processor(p, probe.num_image_tokens, words)
    tok = processor.tokenizer
    text = {
        "model_type": "llama",
        "vocab_size": len(tok),
        "hidden_size": p.text_hidden,
        "intermediate_size": 2 * p.text_hidden,
        "num_hidden_layers": p.text_layers,
        "num_attention_heads": p.heads,
        "num_key_value_heads": p.heads,
        "max_position_embeddings": 1024,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "tie_word_embeddings": False,
    }
    config = GroundLMConfig(
        vision_config=vision,
        text_config=text,
        connector=p.connector,
        vision_feature_layer=p.vision_feature_layer,
        vision_feature_norm=p.vision_feature_norm,
        image_token_id=processor.image_token_id,
        frame=p.frame,
        location_bins=p.location_bins,
        location_codec=p.location_codec,
        location_head=(
            location_head_settings(tok, processor.codec, p.location_head) if p.location_codec == "embedding" else None
        ),
        image_position_embedding=p.image_position_embedding,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = GroundLMForConditionalGeneration(config).eval()
    if p.coordinate_init == "sincos" and p.location_codec != "text":
        # The code is laid out for the text codec's `<0>`..`<bins>`; other codecs have no such rows.
        raise ValueError(f"coordinate_init 'sincos' is for the text codec, not {p.location_codec!r}")
    if p.coordinate_init == "sincos":
        init_coordinate_embeddings(model, processor)
    elif p.coordinate_init != "random":
        raise ValueError(f"unknown coordinate_init {p.coordinate_init!r}; choose one of {COORDINATE_INITS}")
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = processor.stop_token_id or tok.eos_token_id
    return model, processor


def init_coordinate_embeddings(model: GroundLMForConditionalGeneration, processor: GroundLMProcessor) -> None:
    """Start the rows of `<0>`..`<bins>` (input embeddings and lm_head) from the sinusoidal code of their value.

    Neighbouring bins then begin with similar embeddings and similar output rows, so learning that the answer is
    "about 30" helps `<29>` and `<31>` too, and the input rows share the layout of the visual position code
    (`modeling/positions.py`). The code is scaled to the table's own init spread, so nothing else changes.
    """
    bins = model.config.location_bins
    ids = processor.tokenizer.convert_tokens_to_ids([f"<{k}>" for k in range(bins + 1)])
    ids = torch.tensor(ids)  # [bins + 1]
    with torch.no_grad():
        for table in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            code = coordinate_code(bins, table.shape[1])  # [bins + 1, D], per-channel variance 1/2
            scale = float(table.std()) * 2**0.5  # match the random rows' spread
            table[ids] = (code * scale).to(table.dtype)


def new_model(out: str | Path, preset: str = "tiny", *, seed: int = 0) -> Path:
    """Write a randomly initialised model directory (weights, config, tokenizer, processor) to `out`."""
    model, processor = build_model(preset, seed=seed)
    out = Path(out)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out

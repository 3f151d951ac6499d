"""The one builder of a model spec (`presets.ModelSpec`): from scratch, pretrained parts joined by a connector, or
a whole model (`init_from`).

From scratch: the spec's sizes give the tower and language model configs, the weights are random (seeded) and
the tokenizer is a word-level one over a word list (`WORD_LISTS`), the codec's tokens, the task tags and the
templates' markers. From pretrained parts: a vision tower (CLIP, SigLIP or ViT) and a causal language model
with its tokenizer, each a local directory or a hub id already in the local cache; nothing is ever downloaded,
and a missing part fails with an error that says what to fetch. The connector is new (random, seeded). The
tokenizer gains only what the processor needs (the `<image>` placeholder, a pad token, the codec's tokens): a
pretrained tokenizer must keep tokenising text exactly as the language model learned it, so template markers
stay plain text. From a whole model: a groundlm model directory, or a published checkpoint through an importer
of `weights/` (`weights.IMPORTERS`), read strictly; what its weights fix (connector, feature layer, template,
frame) must match the spec, and the spec's location codec is added on top (its tokens and heads). A checkpoint
of another family (`backends.TRAINABLE`: Qwen2.5-VL, PaliGemma) is the exception: it is loaded as it is with
its family's processor (`backends.load_for_training`) and trains in its own layout. The others end in
the same place: one `GroundLMConfig` (config.json) and one `ProcessorConfig`
(groundlm_processor.json) derived from the spec, location-head settings and generation config set once.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from tokenizers import AddedToken
from transformers import AutoModelForCausalLM, AutoTokenizer

from ..data.shapes import vocabulary
from ..images import CLIP_MEAN, CLIP_STD
from ..location import add_location_tokens, location_head_settings, make_codec
from ..modeling import GroundLMConfig, GroundLMForConditionalGeneration, build_connector, load_vision_tower
from ..modeling.location_heads import build_location_heads
from ..modeling.marks import RegionMark
from ..modeling.positions import init_coordinate_embeddings
from ..presets import ModelSpec
from ..processor import GroundLMProcessor, ProcessorConfig
from ..tasks import TAGGED
from ..templates import get_template
from ..tokenizer import build_word_tokenizer
from .schema import expand

# Words beyond ShapesWorld's vocabulary that small models should know: the template role words and a few
# everyday words users type. Anything else maps to <unk>; a real recipe uses the language model's own tokenizer.
EXTRA_WORDS = """
human assistant user system the a an is are what where which how many there this that it of in on at to and
or not no yes image picture photo please describe tell me show find give location object cup
""".split()

# The dtypes pretrained parts can be loaded in (`ModelSpec.dtype`; a model built from scratch is float32).
DTYPES = ("float32", "bfloat16", "float16")
# The word lists a model built from scratch can take (`ModelSpec.words`).
WORD_LISTS: dict[str, Callable[[], list[str]]] = {
    "shapes": lambda: [*vocabulary(), *EXTRA_WORDS],  # everything ShapesWorld and its task builders emit
}


def build_for_recipe(
    spec: ModelSpec, *, seed: int, templates: Sequence[str] = ()
) -> tuple[GroundLMForConditionalGeneration, GroundLMProcessor]:
    """The model and processor of a model spec (deterministic for a seed).

    `templates` are the other chat templates the recipe's stages use; a word-level tokenizer gets their
    markers as whole tokens too (a pretrained tokenizer is left as it is).
    """
    if spec.init_from is not None:
        model, processor = _from_init(spec, seed)
    elif spec.vision_tower is None:
        model, processor = _from_scratch(spec, seed)
        _add_template_markers(model, processor.tokenizer, templates, seed)
    else:
        model, processor = _from_parts(spec, seed)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.stop_token_id or processor.tokenizer.eos_token_id
    return model, processor


def scratch_processor(spec: ModelSpec) -> GroundLMProcessor:
    """The processor of a model built from scratch: a word-level tokenizer over the spec's word list, the
    codec's tokens, the task tags and the template's markers."""
    template = get_template(spec.template)
    tokenizer = build_word_tokenizer(
        WORD_LISTS[spec.words](),
        tokens=make_codec(spec).special_tokens() + [f"[{t}]" for t in TAGGED],
        # the stop string too: plain's "\n" would otherwise vanish in whitespace splitting
        special_tokens=[*template.special_tokens, template.stop],
    )
    return _processor(spec, tokenizer, _vision_config(spec), CLIP_MEAN, CLIP_STD)


def _vision_config(spec: ModelSpec) -> dict:
    return {
        "model_type": "clip_vision_model",
        "image_size": spec.image_size,
        "patch_size": spec.patch_size,
        "hidden_size": spec.vision_hidden,
        "intermediate_size": 2 * spec.vision_hidden,
        "num_hidden_layers": spec.vision_layers,
        "num_attention_heads": spec.heads,
    }


def _from_scratch(spec: ModelSpec, seed: int):
    processor = scratch_processor(spec)
    tokenizer = processor.tokenizer
    coordinates = processor.codec.coordinate_tokens()  # value order: the rows `sincos` lays its code on
    if spec.coordinate_init == "sincos" and coordinates is None:
        raise ValueError(f"coordinate_init 'sincos' needs coordinate tokens; the {spec.location_codec!r} codec has none")
    text = {
        "model_type": "llama",
        "vocab_size": len(tokenizer),
        "hidden_size": spec.text_hidden,
        "intermediate_size": 2 * spec.text_hidden,
        "num_hidden_layers": spec.text_layers,
        "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.heads,
        "max_position_embeddings": 1024,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "tie_word_embeddings": False,
    }
    torch.manual_seed(seed)
    model = GroundLMForConditionalGeneration(_config(spec, _vision_config(spec), text, processor)).eval()
    if spec.coordinate_init == "sincos":
        init_coordinate_embeddings(model, tokenizer.convert_tokens_to_ids(coordinates))
    return model, processor


def _add_template_markers(model, tokenizer, templates: Sequence[str], seed: int) -> None:
    """Give the stages' other templates' markers (e.g. plain's "\n" end token) whole tokens as well, or a
    word-level tokenizer drops them and the model never learns where an answer ends."""
    extra = []
    for name in templates:
        t = get_template(name)
        extra += [s for s in (*t.special_tokens, t.stop) if s and s not in tokenizer.get_vocab()]
    if extra:
        tokenizer.add_special_tokens(
            {
                "additional_special_tokens": [
                    AddedToken(s, special=True, normalized=False) for s in dict.fromkeys(extra)
                ]
            }
        )
        torch.manual_seed(seed)
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # random model: plain init


def _processor(spec: ModelSpec, tokenizer, vision_config, mean, std) -> GroundLMProcessor:
    """The processor of `spec` (its `ProcessorConfig` is saved as groundlm_processor.json)."""
    # The image token count depends only on the tower's config and the connector; a config built from
    # those alone tells it before the real one (which needs the processor's token ids) exists.
    probe = GroundLMConfig(vision_config=vision_config, connector=spec.connector)
    config = ProcessorConfig(
        template=spec.template,
        image_size=probe.image_size,
        frame=spec.frame,
        num_image_tokens=probe.num_image_tokens,
        mean=mean,
        std=std,
        location_bins=spec.location_bins,
        location_codec=spec.location_codec,
        mark_grid=probe.image_size // probe.vision_config.patch_size if spec.region_marks else 0,
    )
    return GroundLMProcessor(tokenizer, config)


def _config(spec: ModelSpec, vision_config, text_config, processor: GroundLMProcessor) -> GroundLMConfig:
    """The model's config (saved as config.json): the spec's knobs and the processor's token ids."""
    tokenizer = processor.tokenizer
    return GroundLMConfig(
        vision_config=vision_config,
        text_config=text_config,
        connector=spec.connector,
        vision_feature_layer=spec.vision_feature_layer,
        vision_feature_norm=spec.vision_feature_norm,
        image_token_id=processor.image_token_id,
        frame=spec.frame,
        location_bins=spec.location_bins,
        location_codec=spec.location_codec,
        location_head=location_head_settings(tokenizer, processor.codec, spec.location_head),
        image_position_embedding=spec.image_position_embedding,
        region_marks=spec.region_marks,
        pad_token_id=tokenizer.pad_token_id,
    )


def image_stats(path: str) -> tuple[tuple, tuple]:
    """The tower's normalisation (mean, std) of [0, 1] pixels from its preprocessor_config.json, else CLIP's.

    transformers computes `(x * rescale_factor - mean) / std` on 0-255 pixels; groundlm `(x / 255 - mean) / std`,
    so a rescale factor other than 1/255 (groundlm's own export uses one, export/image_processor.py) scales both.
    """
    config = Path(path) / "preprocessor_config.json"
    if config.is_file():
        values = json.loads(config.read_text())
        if "image_mean" in values and "image_std" in values:
            unit = float(values.get("rescale_factor", 1 / 255)) * 255  # 1.0 for the usual 1/255
            return tuple(m / unit for m in values["image_mean"]), tuple(s / unit for s in values["image_std"])
    return CLIP_MEAN, CLIP_STD


def _load_language_model(path: str, dtype: torch.dtype):
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    except OSError as err:
        raise FileNotFoundError(
            f"cannot load the language model {path!r}: groundlm needs its files (weights and tokenizer) "
            "locally and never downloads. Pass a local checkpoint directory, or fetch it first on a machine "
            f"with network (e.g. `hf download {path} --local-dir <dir>`). ({err})"
        ) from err
    return model, tokenizer


def _from_parts(spec: ModelSpec, seed: int):
    dtype = getattr(torch, spec.dtype)
    tower_path, lm_path = expand(spec.vision_tower), expand(spec.language_model)
    tower = load_vision_tower(tower_path, dtype=dtype)
    lm, tokenizer = _load_language_model(lm_path, dtype)

    # The processor needs one whole token for the image placeholder and a pad token for batching.
    added = {}
    if "<image>" not in tokenizer.get_vocab():
        added["additional_special_tokens"] = [AddedToken("<image>", special=True, normalized=False)]
    if tokenizer.pad_token is None:
        if tokenizer.unk_token is not None:
            tokenizer.pad_token = tokenizer.unk_token  # LLaVA's choice for LLaMA tokenizers
        else:
            added["pad_token"] = "<pad>"
    if added:
        tokenizer.add_special_tokens(added)
    if len(tokenizer) > lm.get_input_embeddings().weight.shape[0]:
        torch.manual_seed(seed)
        lm.resize_token_embeddings(len(tokenizer))
    # The codec's own tokens (none for plain-text boxes) join the vocabulary, new rows at the mean
    # (location/setup.py).
    add_location_tokens(lm, tokenizer, make_codec(spec))

    processor = _processor(spec, tokenizer, tower.config, *image_stats(tower_path))
    config = _config(spec, tower.config, lm.config, processor)
    # Build the skeleton on the meta device (no memory, no random init of billions of weights), then put the
    # loaded parts and a freshly initialised connector in place.
    with torch.device("meta"):
        model = GroundLMForConditionalGeneration(config)
    model.vision_tower = tower
    model.language_model = lm
    torch.manual_seed(seed)
    model.connector = build_connector(config).to(dtype)
    if config.vision_feature_norm:
        model.vision_norm = torch.nn.LayerNorm(config.vision_config.hidden_size).to(dtype)
    if config.region_marks:
        model.region_mark = RegionMark(config.vision_config.hidden_size).to(dtype)
    if model.location_heads is not None:
        model.location_heads = build_location_heads(config).to(dtype)
    left = [n for n, p in [*model.named_parameters(), *model.named_buffers()] if p.is_meta]
    if left:
        raise RuntimeError(f"parameters left uninitialised after assembling the model: {left[:5]}")
    return model, processor


# What a loaded model's weights (or its processor's training) fix: a recipe that starts from it states the same.
FIXED_BY_INIT = ("connector", "vision_feature_layer", "image_position_embedding", "template", "frame")


def _from_init(spec: ModelSpec, seed: int):
    """A whole model (`init_from`: a groundlm model directory, or a checkpoint an importer reads), with the
    spec's location codec on top: its missing tokens (rows at the mean) and, if it has them, new heads."""
    from ..backends import TRAINABLE, load_for_training
    from ..weights import GROUNDLM, import_model, init_source
    from ..weights.directory import load_model

    source = init_source(spec.init_from)
    dtype = getattr(torch, spec.dtype)
    path = expand(source.path)
    if source.kind in TRAINABLE:  # another family's checkpoint, trained as it is in its own layout (backends/)
        return load_for_training(source.kind, Path(path), dtype, tiny=source.options.get("tiny", False))
    # A recipe's tower and language model are the parts an importer joins (LLaVA's stage-1 projector).
    parts = {n: expand(getattr(spec, n)) for n in ("vision_tower", "language_model") if getattr(spec, n)}
    if source.kind == GROUNDLM:
        if parts:
            raise ValueError(
                f"model.init_from: the model directory {path} brings its own tower and language model; "
                f"drop {' and '.join(parts)}"
            )
        model, processor = load_model(Path(path), dtype=dtype)
    else:
        # The import goes to a temporary directory, read back strictly; `groundlm import` once and an
        # init_from of its directory saves redoing it on every run and resume.
        with tempfile.TemporaryDirectory(prefix="groundlm-import-") as tmp:
            import_model(source.kind, path, tmp, **{**source.options, **parts})
            model, processor = load_model(Path(tmp), dtype=dtype)
    loaded = {
        "connector": model.config.connector,
        "vision_feature_layer": model.config.vision_feature_layer,
        "image_position_embedding": model.config.image_position_embedding,
        "template": processor.config.template,
        "frame": processor.config.frame,
    }
    # every mismatch at once, so one edit of the recipe fixes them all
    wrong = [n for n in FIXED_BY_INIT if getattr(spec, n) != loaded[n]]
    if wrong:
        said = "; ".join(
            f"model.{n}: the recipe says {getattr(spec, n)!r}, the model has {loaded[n]!r}" for n in wrong
        )
        write = ", ".join(f"{n}: {loaded[n]}" for n in wrong)
        raise ValueError(f"{said} (init_from: {path}); write {write}")
    return _with_codec(spec, model, processor, seed)


def _with_codec(spec: ModelSpec, model, processor: GroundLMProcessor, seed: int):
    """`model` and `processor` with the spec's location codec: its tokens the tokenizer lacks (new rows at the
    mean), its head settings, and new heads (seeded) when the codec has them and the model had none."""
    codec = make_codec(spec)
    config = model.config
    if config.location_head is not None and not codec.has_heads:
        raise ValueError(
            f"model.location_codec: {spec.location_codec!r} has no location heads, but the model in init_from "
            f"has them ({config.location_codec!r}); keep location_codec: {config.location_codec}"
        )
    tokenizer = processor.tokenizer
    torch.manual_seed(seed)
    add_location_tokens(model, tokenizer, codec)
    config.location_codec, config.location_bins = spec.location_codec, spec.location_bins
    config.location_head = location_head_settings(tokenizer, codec, spec.location_head)
    config._check()
    if codec.has_heads:
        heads = build_location_heads(config).to(model.dtype)  # seeded above: same heads for a seed
        if model.location_heads is not None:
            heads.load_state_dict(model.location_heads.state_dict(), strict=True)
        model.location_heads = heads
    settings = replace(processor.config, location_codec=spec.location_codec, location_bins=spec.location_bins)
    return model, GroundLMProcessor(tokenizer, settings)


def stage_processor(processor: GroundLMProcessor, template: str | None) -> GroundLMProcessor:
    """The processor a stage encodes with: the same tokenizer, with the stage's template if it has one."""
    if template is None or template == processor.config.template:
        return processor
    return GroundLMProcessor(processor.tokenizer, replace(processor.config, template=template))

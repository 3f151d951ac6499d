"""`llava`: the original LLaVA repository's checkpoints (haotian-liu/LLaVA, `LlavaLlamaForCausalLM`).

Two things are read:
- a full checkpoint directory: a LLaMA (or Mistral) config.json with LLaVA's `mm_*` fields, the tokenizer,
  and the weights `model.*` (the LM), `lm_head`, `model.mm_projector.0/2` (`mlp2x_gelu`: Linear, GELU,
  Linear) or `model.mm_projector` (`linear`), and, when the tower was loaded at save time,
  `model.vision_tower.vision_tower.vision_model.*`. The tower's config (and its weights, when the checkpoint
  lacks them) come from `mm_vision_tower` (LLaVA loads it at run time too): a local directory, a hub id
  already in the local cache, or the `vision_tower` option.
- a stage-1 projector (`mm_projector.bin`, or a directory holding one and LLaVA's config.json): the
  connector of a model whose tower and language model are named by the `vision_tower` and `language_model`
  options (what `train/build.py` joins, with this projector instead of a random connector).

LLaVA's tokenizer has no `<image>` token (it splices the image at a sentinel id -200); the import adds it,
with embedding and lm_head rows at the mean of the existing rows (transformers' `mean_resizing` without its
noise), so existing ids and their logits stay as they were. `image_aspect_ratio: pad` becomes the `pad`
frame; LLaVA's other choice, CLIP's centre crop, has no groundlm frame, so the `frame` option must say which
to use. Options as in `llava_hf.py`: template (`llava_v1`), location_codec (`llava`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import AddedToken
from transformers import AutoConfig, AutoTokenizer

from ..modeling import GroundLMConfig, load_vision_tower
from .directory import make_processor, write_model
from .keys import (
    WeightsError,
    WrongKind,
    expected_weights,
    match_weights,
    names,
    read_file,
    read_json,
    read_state_dict,
)
from .llava_hf import check_plain_codec, image_stats, tower_key

# LLaVA's model classes -> the transformers model type of their language model.
ARCHITECTURES = {"LlavaLlamaForCausalLM": "llama", "LlavaMistralForCausalLM": "mistral"}
# config.json fields LLaVA adds to the LM's config (none of them is the LM's).
LLAVA_FIELDS = (
    "architectures", "model_type", "_name_or_path", "transformers_version", "image_aspect_ratio",
    "image_grid_pinpoints", "tokenizer_padding_side", "tokenizer_model_max_length", "tune_mm_mlp_adapter",
    "freeze_mm_mlp_adapter", "use_mm_proj", "unfreeze_mm_vision_tower",
)  # fmt: skip
PROJECTORS = {"mlp2x_gelu": ("0.weight", "0.bias", "2.weight", "2.bias"), "linear": ("weight", "bias")}
CONNECTOR_NAMES = {"mlp2x_gelu": {"0": "linear_1", "2": "linear_2"}, "linear": {}}
PROJECTOR_FILES = ("mm_projector.bin", "mm_projector.safetensors")
TOWER_PREFIX = "model.vision_tower.vision_tower."
SELECT_FEATURES = {"patch": "default", "cls_patch": "full"}


def projector_file(src: Path) -> Path | None:
    """The stage-1 projector file `src` is, or holds without a full checkpoint beside it; else None."""
    if src.is_file():
        return src if "mm_projector" in src.name else None
    if not (src / "config.json").is_file() or not _llava_config(read_json(src / "config.json")):
        return None
    found = [src / n for n in PROJECTOR_FILES if (src / n).is_file()]
    full = any((src / n).is_file() for n in ("model.safetensors", "pytorch_model.bin")) or any(
        src.glob("*.index.json")
    )
    return found[0] if found and not full else None


def _llava_config(config: dict) -> bool:
    return "mm_vision_tower" in config or "mm_projector_type" in config


def looks_like(src: Path) -> bool:
    """A LLaVA config.json (`mm_vision_tower` / `mm_projector_type`), or a stage-1 `mm_projector` file."""
    if projector_file(src) is not None:
        return True
    config = src / "config.json"
    if not config.is_file():
        return False
    try:
        return _llava_config(read_json(config))
    except WeightsError:
        return False


def _frame(config: dict, frame: str | None, where: Path) -> str:
    if frame is not None:
        return frame
    ratio = config.get("image_aspect_ratio")
    if ratio == "pad":
        return "pad"
    raise WeightsError(
        f"{where}: image_aspect_ratio {ratio!r}: LLaVA then centre-crops (or tiles, for anyres), which no groundlm "
        "frame reproduces; pass the frame option (pad or resize) to choose"
    )


def _vision_settings(config: dict, where: Path) -> tuple[int, str]:
    """(vision_feature_layer, select strategy) from LLaVA's fields, refusing what groundlm cannot compute."""
    if config.get("mm_use_im_start_end"):
        raise WeightsError(f"{where}: mm_use_im_start_end wraps images in <im_start>/<im_end>; groundlm has no such template")
    if config.get("mm_patch_merge_type", "flat") != "flat":
        raise WeightsError(f"{where}: mm_patch_merge_type {config['mm_patch_merge_type']!r} (LLaVA-1.6 tiles) is not supported")
    feature = config.get("mm_vision_select_feature", "patch")
    if feature not in SELECT_FEATURES:
        raise WeightsError(f"{where}: mm_vision_select_feature {feature!r}; choose one of {list(SELECT_FEATURES)}")
    if "mm_vision_select_layer" not in config:
        raise WeightsError(f"{where}: mm_vision_select_layer is missing (which tower layer the projector reads)")
    return config["mm_vision_select_layer"], SELECT_FEATURES[feature]


def _connector(config: dict, where: Path) -> str:
    kind = config.get("mm_projector_type", "linear")  # LLaVA's default
    if kind not in PROJECTORS:
        raise WeightsError(f"{where}: mm_projector_type {kind!r}; groundlm has {list(PROJECTORS)}")
    return kind


def _tower_config(config: dict, vision_tower: str | None, where: Path):
    path = vision_tower or config.get("mm_vision_tower")
    if not path:
        raise WeightsError(f"{where}: no mm_vision_tower; pass the vision_tower option (a local CLIP directory)")
    try:
        tower = AutoConfig.from_pretrained(path, local_files_only=True)
    except OSError as err:
        raise WeightsError(
            f"{where}: the tower {path!r} (mm_vision_tower) is not available locally and groundlm never "
            "downloads; pass the vision_tower option with a local copy of it"
        ) from err
    return path, getattr(tower, "vision_config", None) or tower


def _add_image_token(tokenizer, state: dict, where: Path) -> None:
    """Give the tokenizer `<image>` (and a pad token) and the weights rows for it at the mean row."""
    if "<image>" not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [AddedToken("<image>", special=True, normalized=False)]})
    if tokenizer.pad_token is None:
        if tokenizer.unk_token is None:
            raise WeightsError(f"{where}: the tokenizer has neither a pad nor an unk token to pad batches with")
        tokenizer.pad_token = tokenizer.unk_token  # LLaVA's choice for LLaMA tokenizers
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        rows = state.get(key)
        if rows is not None and rows.shape[0] < len(tokenizer):
            extra = rows.float().mean(0, keepdim=True).to(rows.dtype).expand(len(tokenizer) - rows.shape[0], -1)
            state[key] = torch.cat([rows, extra])


def _rename(kind: str, expected):
    """LLaVA key -> groundlm key (None: no place) for a model whose connector is `kind`."""
    layers = CONNECTOR_NAMES[kind]

    def rename(key: str) -> str | None:
        if key.startswith(TOWER_PREFIX):
            return tower_key("vision_tower." + key.removeprefix(TOWER_PREFIX), expected)
        if key.startswith("model.mm_projector."):
            rest = key.removeprefix("model.mm_projector.")  # mlp2x_gelu: "0.weight"; linear: "weight"
            if kind == "linear":
                return f"connector.linear.{rest}"
            index, _, leaf = rest.partition(".")
            return f"connector.{layers[index]}.{leaf}" if index in layers else None
        if key.startswith(("model.", "lm_head.")):
            return "language_model." + key
        return None

    return rename


def import_llava(
    src: Path, out: Path, *, vision_tower: str | None = None, language_model: str | None = None,
    template: str = "llava_v1", frame: str | None = None, location_codec: str = "llava", location_bins: int = 100,
) -> None:
    """Write the groundlm model of LLaVA's checkpoint `src` (full, or a stage-1 projector) to `out`."""
    src, out = Path(src), Path(out)
    projector = projector_file(src)
    if projector is not None:
        return _import_projector(
            projector, out, vision_tower=vision_tower, language_model=language_model, template=template,
            frame=frame, location_codec=location_codec, location_bins=location_bins,
        )
    if not looks_like(src):
        raise WrongKind(f"{src}: not an original LLaVA checkpoint (config.json with mm_vision_tower / mm_projector_type)")
    if language_model is not None:
        raise WeightsError(f"{src}: a full LLaVA checkpoint holds its language model; drop the language_model option")
    where = src / "config.json"
    config = read_json(where)
    architecture = next(iter(config.get("architectures") or []), None)
    if architecture not in ARCHITECTURES:
        raise WeightsError(f"{where}: architectures {config.get('architectures')!r}; groundlm reads {list(ARCHITECTURES)}")
    layer, strategy = _vision_settings(config, where)
    kind = _connector(config, where)
    tower_path, tower_config = _tower_config(config, vision_tower, where)
    text = {k: v for k, v in config.items() if k not in LLAVA_FIELDS and not k.startswith("mm_")}
    text_config = AutoConfig.for_model(ARCHITECTURES[architecture], **text)

    tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
    state = {k: v for k, v in read_state_dict(src).items() if not k.endswith(".rotary_emb.inv_freq")}  # buffers
    _add_image_token(tokenizer, state, src)
    text_config.vocab_size = state["model.embed_tokens.weight"].shape[0] if "model.embed_tokens.weight" in state else len(tokenizer)
    if not any(k.startswith(TOWER_PREFIX) for k in state):
        # Saved without the tower (LLaVA loads it from mm_vision_tower at run time): take it from there.
        tower = load_vision_tower(tower_path)
        state.update({TOWER_PREFIX + k: v for k, v in tower.state_dict().items()})
    ours = GroundLMConfig(
        vision_config=tower_config.to_dict(),
        text_config=text_config.to_dict(),
        connector=kind,
        vision_feature_layer=layer,
        vision_feature_select_strategy=strategy,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        frame=_frame(config, frame, where),
        location_codec=location_codec,
        location_bins=location_bins,
        pad_token_id=tokenizer.pad_token_id,
    )
    check_plain_codec(ours, src)
    shapes, tied = expected_weights(ours)
    weights = match_weights(state, _rename(kind, shapes), shapes, where=str(src), optional=tied)
    mean, std = image_stats(Path(tower_path))
    processor = make_processor(
        tokenizer, ours, template=template, mean=mean, std=std, location_codec=location_codec,
        location_bins=location_bins,
    )
    write_model(out, ours, weights, processor)


def read_projector(path: Path) -> tuple[str, dict[str, torch.Tensor]]:
    """(connector kind, its weights under groundlm's `connector.*` names) of a stage-1 projector file.

    Keys are cut after `mm_projector.` as LLaVA's loader does (`model.mm_projector.0.weight` -> `0.weight`).
    """
    state = read_file(path)
    foreign = [k for k in state if "mm_projector." not in k]
    if foreign:
        raise WeightsError(f"{path}: keys that are not the projector's: {names(foreign)}")
    cut = {k.split("mm_projector.", 1)[1]: v for k, v in state.items()}
    kind = next((k for k, keys in PROJECTORS.items() if set(cut) == set(keys)), None)
    if kind is None:
        raise WeightsError(
            f"{path}: projector keys {names(cut)} are neither mlp2x_gelu's {list(PROJECTORS['mlp2x_gelu'])} "
            f"nor linear's {list(PROJECTORS['linear'])}"
        )
    rename = _rename(kind, ())
    return kind, {rename("model.mm_projector." + k): v for k, v in cut.items()}


def _import_projector(
    path: Path, out: Path, *, vision_tower, language_model, template, frame, location_codec, location_bins
) -> None:
    from ..presets import ModelSpec
    from ..train.build import build_for_recipe

    if not (vision_tower and language_model):
        raise WeightsError(
            f"{path}: a stage-1 projector is only the connector; name the tower and the language model it joins "
            "with the vision_tower and language_model options"
        )
    kind, weights = read_projector(path)
    config = path.parent / "config.json"
    settings = read_json(config) if config.is_file() and path.parent.is_dir() else {}
    # Without LLaVA's config beside the file: LLaVA-1.5's settings (penultimate layer, CLS dropped).
    layer, strategy = (-2, "default") if not settings else _vision_settings(settings, config)
    if strategy != "default":
        raise WeightsError(f"{config}: mm_vision_select_feature cls_patch; a recipe's tower drops CLS (patch)")
    spec = ModelSpec(
        # The frame is the next stage's choice (LLaVA-1.5 pads from its instruction tuning on).
        vision_tower=vision_tower, language_model=language_model, connector=kind, template=template,
        frame=frame or "pad", vision_feature_layer=layer,
        location_codec=location_codec, location_bins=location_bins,
    )
    model, processor = build_for_recipe(spec, seed=0)
    expected = {k: v.shape for k, v in model.connector.state_dict().items()}
    weights = match_weights(
        weights, lambda k: k.removeprefix("connector."), expected, where=str(path)
    )
    model.connector.load_state_dict(weights, strict=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)


__all__ = ["import_llava", "looks_like", "projector_file", "read_projector"]

"""Import a NExT-Chat checkpoint (NExT-ChatV/NExT-Chat) as a groundlm model with the `embedding` codec.

What the checkpoint directory holds (docs/published-systems.md, NExT-Chat): a `config.json` with
`model_type: nextchat` (a LlamaConfig plus `mm_hidden_size`, `mm_depth`, `mm_vision_select_layer`,
`mm_vision_tower`, ...), the weights (`*.safetensors` or `pytorch_model*.bin`, sharded or not) and a LLaMA
tokenizer that gained `<im_patch>`, then `<im_start> <im_end> <at> <boxes>`.

| NExT-Chat key | groundlm key |
|---|---|
| `model.embed_tokens`, `model.layers.N.*`, `model.norm`, `lm_head` | `language_model.model.*`, `language_model.lm_head` |
| `model.mm_projector.{weight,bias}` (depth 1) | `connector.linear.*` (`linear` connector) |
| `model.mm_projector.{0,2}.*` (depth 2, Linear-GELU-Linear) | `connector.linear_{1,2}.*` (`mlp2x_gelu`) |
| `model.vision_tower.vision_model.*` | `vision_tower.*` (CLIP; transformers 5 has no `vision_model.` level) |
| `loc_encoder.{0,2}.*`, `loc_decoder.{0,2}.*` | `location_heads.box_encoder/box_decoder.{0,2}.*` (same Linear-ReLU-Linear) |
| `seg_prompt_mlp.{0,2}.*` | `location_heads.mask_decoder.prompt.{0,2}.*` |
| `sam.model.{image_encoder,prompt_encoder,mask_decoder}.*` | `location_heads.mask_decoder.sam.*` (modeling/sam_decoder.py) |

Token ids stay NExT-Chat's: the embedding codec's trigger and slot strings are NExT-Chat's own (`<at>`,
`<boxes>`), its image token is `<im_patch>` (the features go where NExT-Chat puts them, between `<im_start>` and
`<im_end>`: the `nextchat` template), so no embedding row moves. The frame is the white-padded square
(NExT-Chat's `Expand2square`), the images CLIP-normalised at the tower's size.

Every key is accounted for: a tensor with no place in groundlm, or a groundlm weight the checkpoint does not
give, stops the import with their names (`rotary_emb.inv_freq`, a buffer old transformers saved, is dropped and
listed in the report). The report is also written to `import_report.json` in the output directory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from tokenizers import AddedToken
from transformers import AutoTokenizer, CLIPVisionConfig, LlamaConfig

from ..images import CLIP_MEAN, CLIP_STD
from ..location import EmbeddingLocationCodec
from ..modeling import GroundLMConfig, GroundLMForConditionalGeneration
from ..processor import GroundLMProcessor, ProcessorConfig
from .keys import WeightsError, WrongKind, expected_weights, match_weights, read_json, read_state_dict

KIND = "nextchat"
# NExT-Chat's added tokens, in the order it adds them.
IMAGE_PATCH, IM_START, IM_END = "<im_patch>", "<im_start>", "<im_end>"
ADDED_TOKENS = (IMAGE_PATCH, IM_START, IM_END, EmbeddingLocationCodec.trigger, EmbeddingLocationCodec.slot)
WHITE = (255, 255, 255)  # NExT-Chat's Expand2square background
# OpenAI CLIP's attention heads are 64 wide (ViT-B/16, ViT-L/14, ViT-L/14-336).
CLIP_HEAD_DIM = 64
# NExT-Chat config fields that are not the language model's.
_NEXTCHAT_FIELDS = {
    "mm_vision_tower", "mm_hidden_size", "mm_vision_select_layer", "mm_depth", "use_mm_proj",
    "mm_use_im_start_end", "sam_path", "architectures", "model_type", "auto_map", "_name_or_path",
}
_DROPPED = re.compile(r"\.rotary_emb\.inv_freq$")
_SAM_PREFIX = "location_heads.mask_decoder.sam."


def looks_like(src: Path) -> bool:
    """A directory whose config.json says `model_type: nextchat`."""
    try:
        return (src / "config.json").is_file() and read_json(src / "config.json").get("model_type") == KIND
    except WeightsError:
        return False


def groundlm_key(key: str, projector_depth: int) -> str | None:
    """Where a NExT-Chat weight goes in groundlm (SAM keys excepted: `modeling/sam_decoder.sam_key`), or None."""
    if key == "lm_head.weight":
        return "language_model.lm_head.weight"
    if key.startswith("model.vision_tower.vision_model."):
        # transformers 5 holds CLIPVisionModel's weights without the `vision_model.` level
        return "vision_tower." + key.removeprefix("model.vision_tower.vision_model.")
    if key.startswith("model.mm_projector."):
        rest = key.removeprefix("model.mm_projector.")
        if projector_depth == 1:
            return f"connector.linear.{rest}" if rest in ("weight", "bias") else None
        m = re.fullmatch(r"(0|2)\.(weight|bias)", rest)
        return f"connector.linear_{1 if m.group(1) == '0' else 2}.{m.group(2)}" if m else None
    if re.match(r"model\.(embed_tokens|layers\.\d+|norm)\.", key):
        return "language_model." + key
    m = re.fullmatch(r"(loc_encoder|loc_decoder|seg_prompt_mlp)\.(0|2)\.(weight|bias)", key)
    if m:
        module = {"loc_encoder": "box_encoder", "loc_decoder": "box_decoder", "seg_prompt_mlp": "mask_decoder.prompt"}
        return f"location_heads.{module[m.group(1)]}.{m.group(2)}.{m.group(3)}"
    return None


def _projector_depth(tensors: dict, config_path: Path) -> int:
    keys = [k.removeprefix("model.mm_projector.") for k in tensors if k.startswith("model.mm_projector.")]
    if not keys:
        raise WeightsError(f"{config_path.parent}: no model.mm_projector.* weights (the connector)")
    if set(keys) <= {"weight", "bias"}:
        return 1
    layers = {k.split(".")[0] for k in keys}
    if layers == {"0", "2"}:
        return 2
    raise WeightsError(
        f"{config_path.parent}: model.mm_projector layers {sorted(layers)}: only depth 1 (Linear) or 2 "
        "(Linear-GELU-Linear, layers 0 and 2) have a groundlm connector"
    )


def _vision_config(tensors: dict, fields: dict, vision_config, config_path: Path) -> tuple[CLIPVisionConfig, str]:
    """The CLIP tower's config: given, from a local `mm_vision_tower` directory, or read off the tensors."""
    if isinstance(vision_config, dict):
        return CLIPVisionConfig(**vision_config), "the vision_config option"
    local = vision_config or fields.get("mm_vision_tower")
    if local and (Path(local) / "config.json").is_file():
        cfg = CLIPVisionConfig.from_pretrained(local, local_files_only=True)
        return cfg, f"{local}/config.json"
    if vision_config:
        raise WeightsError(f"vision_config {vision_config!r}: no config.json there")
    prefix = "model.vision_tower.vision_model."
    try:
        patch = tensors[prefix + "embeddings.patch_embedding.weight"]  # [C, 3, p, p]
        positions = tensors[prefix + "embeddings.position_embedding.weight"].shape[0]  # 1 + (S/p)^2
        fc1 = tensors[prefix + "encoder.layers.0.mlp.fc1.weight"]  # [I, C]
    except KeyError as err:
        raise WeightsError(f"{config_path.parent}: no CLIP weight {err.args[0]!r} to read the tower's shape") from None
    layers = {int(k.split(".")[5]) for k in tensors if k.startswith(prefix + "encoder.layers.")}
    hidden, p = patch.shape[0], patch.shape[-1]
    grid = round((positions - 1) ** 0.5)
    cfg = CLIPVisionConfig(
        hidden_size=hidden, intermediate_size=fc1.shape[0], num_hidden_layers=len(layers),
        num_attention_heads=max(1, hidden // CLIP_HEAD_DIM), image_size=grid * p, patch_size=p,
    )
    return cfg, f"the CLIP tensors' shapes (heads of width {CLIP_HEAD_DIM}, as OpenAI CLIP)"


def _tokenizer(src: Path):
    tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=True)
    vocab = tokenizer.get_vocab()
    missing = [t for t in ADDED_TOKENS if t not in vocab]
    if missing:
        raise WeightsError(f"{src}: the tokenizer lacks NExT-Chat's tokens {missing}")
    if tokenizer.pad_token is None:  # NExT-Chat pads with unk
        tokenizer.pad_token = tokenizer.unk_token
    # NExT-Chat added `<at>`/`<boxes>` as special tokens, which `decode(skip_special_tokens=True)` would drop; the
    # codec reads them in the decoded text, so they become ordinary added tokens (location/setup.py), same ids.
    codec = EmbeddingLocationCodec()
    ids = [vocab[codec.trigger], vocab[codec.slot]]
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in (codec.trigger, codec.slot)])
    if tokenizer.convert_tokens_to_ids([codec.trigger, codec.slot]) != ids:
        raise WeightsError(f"{src}: re-adding <at>/<boxes> as ordinary tokens changed their ids")
    return tokenizer


def import_nextchat(src, out, *, vision_config=None, sam_decoder_heads: int = 8, dtype: torch.dtype | None = None):
    """Write the groundlm model directory `out` for the NExT-Chat checkpoint directory `src`; returns the report.

    `vision_config`: the CLIP tower's config (a dict, or a local directory with config.json) when the
    checkpoint's `mm_vision_tower` is a hub id; otherwise read off the CLIP tensors. `sam_decoder_heads`: SAM's
    mask-decoder head count (8 in every released SAM; not recoverable from the shapes).
    """
    from ..modeling.sam_decoder import infer_sam_config, sam_state_dict

    src, out = Path(src), Path(out)
    config_path = src / "config.json"
    try:
        fields = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise WeightsError(f"{config_path}: cannot read the checkpoint config: {err}") from err
    if fields.get("model_type") != KIND:
        raise WrongKind(f"{config_path}: model_type is {fields.get('model_type')!r}, not {KIND!r}")
    tensors = read_state_dict(src)
    tokenizer = _tokenizer(src)
    depth = _projector_depth(tensors, config_path)
    vision, vision_source = _vision_config(tensors, fields, vision_config, config_path)

    text = LlamaConfig(**{k: v for k, v in fields.items() if k not in _NEXTCHAT_FIELDS})
    embed_rows = tensors.get("model.embed_tokens.weight")
    if embed_rows is not None and embed_rows.shape[0] != text.vocab_size:
        raise WeightsError(
            f"{config_path}: vocab_size {text.vocab_size} but model.embed_tokens.weight has {embed_rows.shape[0]} rows"
        )
    if len(tokenizer) > text.vocab_size:
        raise WeightsError(f"{src}: the tokenizer has {len(tokenizer)} tokens, the model {text.vocab_size} rows")

    sam_tensors = {k.removeprefix("sam.model."): v for k, v in tensors.items() if k.startswith("sam.model.")}
    has_seg = bool(sam_tensors) or any(k.startswith("seg_prompt_mlp.") for k in tensors)
    codec = EmbeddingLocationCodec()
    head = {**codec.head_settings(tokenizer), "mask_decoder": "sam" if has_seg else False}
    if has_seg:
        if not sam_tensors:
            raise WeightsError(f"{src}: seg_prompt_mlp.* without the sam.model.* weights it prompts")
        sam_config = infer_sam_config(sam_tensors, decoder_heads=sam_decoder_heads)
        head.update(sam_config=sam_config.to_dict(), sam_pixel_mean=CLIP_MEAN, sam_pixel_std=CLIP_STD)
    patch_id = tokenizer.convert_tokens_to_ids(IMAGE_PATCH)
    config = GroundLMConfig(
        vision_config=vision.to_dict(), text_config=text.to_dict(),
        connector="linear" if depth == 1 else "mlp2x_gelu",
        vision_feature_layer=int(fields.get("mm_vision_select_layer", -2)),
        vision_feature_select_strategy="default",  # NExT-Chat drops CLS
        image_token_id=patch_id, image_token=IMAGE_PATCH, frame="pad", location_codec="embedding",
        location_head=head, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )

    # SAM's keys are renamed by its own table first; every other key by `groundlm_key`
    dropped = sorted(k for k in tensors if _DROPPED.search(k))
    source = {k: v for k, v in tensors.items() if not k.startswith("sam.model.") and k not in dropped}
    if sam_tensors:
        sam_state, sam_unknown = sam_state_dict(sam_tensors)
        if sam_unknown:
            raise WeightsError(f"{src}: SAM weights with no place in SamModel: {sorted(sam_unknown)}")
        source.update({f"{_SAM_PREFIX}{k}": v for k, v in sam_state.items()})

    def rename(key: str) -> str | None:
        return key if key.startswith(_SAM_PREFIX) else groundlm_key(key, depth)

    state = match_weights(source, rename, expected_weights(config)[0], where=str(src))
    model = GroundLMForConditionalGeneration(config)
    model.load_state_dict(state, strict=True)
    if dtype is not None:
        model = model.to(dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id

    processor = GroundLMProcessor(tokenizer, ProcessorConfig(
        template="nextchat", image_size=config.image_size, frame="pad", num_image_tokens=config.num_image_tokens,
        image_token=IMAGE_PATCH, location_codec="embedding", mean=CLIP_MEAN, std=CLIP_STD, pad_color=WHITE,
    ))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    report = {
        "kind": KIND, "source": str(src), "weights": len(tensors), "imported": len(state),
        "dropped": sorted(dropped), "projector_depth": depth, "vision_config_from": vision_source,
        "mask_decoder": "sam" if has_seg else None,
        "token_ids": {t: tokenizer.convert_tokens_to_ids(t) for t in ADDED_TOKENS},
    }
    (out / "import_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


__all__ = ["ADDED_TOKENS", "KIND", "groundlm_key", "import_nextchat", "looks_like"]

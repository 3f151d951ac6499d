"""The `llava-hf` export: a directory transformers, vLLM and SGLang serve as `LlavaForConditionalGeneration`.

Only the LLaVA-1.5 configuration maps one to one: a CLIP or SigLIP tower, the `mlp2x_gelu` connector (whose
`linear_1`/`linear_2` are LLaVA's projector layers) and a causal LM, with nothing added between them. The
weights are the same tensors under other names. Everything else is refused with the reason (`refusals`):
LLaVA would compute other logits.

What is written, and why each piece is needed to serve the model without groundlm:
- `config.json`: `LlavaConfig` (architectures `LlavaForConditionalGeneration`). A tower without a CLS token
  (SigLIP) is exported with strategy `full`: LLaVA's `default` drops the first token whether or not it is a
  CLS token, while groundlm keeps every SigLIP patch.
- `model.safetensors` in the hub key layout (`vision_tower.vision_model.*`, `multi_modal_projector.*`,
  `language_model.model.*`, `language_model.lm_head.*`): the layout llava-hf checkpoints have, which every
  transformers version and vLLM read (vLLM refuses the flat `vision_tower.embeddings.*` some transformers 5
  releases save), written here rather than by `save_pretrained`, whose layout has changed between releases.
- `generation_config.json`: the template's stop token as `eos_token_id`, so a server stops where groundlm does.
- the tokenizer files (`<image>` must be the one token `image_token_index`), `preprocessor_config.json`
  (`image_processor.py`: the same pixels as groundlm's frame), `processor_config.json` (image-token count) and
  `chat_template.jinja` (`chat_template.py`: the same prompt string as groundlm's template).

`to_llava` builds the transformers model in memory (the benchmarks use it for a baseline with identical weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlavaConfig, LlavaForConditionalGeneration

from ..modeling import GroundLMForConditionalGeneration
from ..modeling.vision import tower_has_cls_token
from .chat_template import jinja_chat_template
from .image_processor import llava_image_processor, pad_scale

FORMAT = "llava-hf"
TOWERS = ("clip_vision_model", "siglip_vision_model")
WEIGHTS_FILE = "model.safetensors"


class ExportRefused(ValueError):
    """A model the export format cannot express with the same logits; the message lists every reason."""


def refusals(model: GroundLMForConditionalGeneration, processor=None) -> list[str]:
    """Why `model` (and its processor, when given) cannot be exported to LLaVA; empty when it can."""
    c = model.config
    reasons = []
    if c.connector != "mlp2x_gelu":
        reasons.append(
            f"connector {c.connector!r}: LLaVA's projector is the mlp2x_gelu connector (Linear, GELU, Linear) only"
        )
    if c.vision_config.model_type not in TOWERS:
        reasons.append(f"vision tower {c.vision_config.model_type!r}: LLaVA reads a CLIP or SigLIP tower")
    if c.vision_feature_norm:
        reasons.append("vision_feature_norm: LLaVA has no LayerNorm between the tower and the projector")
    if c.image_position_embedding != "none":
        reasons.append(
            f"image_position_embedding {c.image_position_embedding!r}: LLaVA adds no code to the image tokens"
        )
    if c.region_marks:
        reasons.append("region_marks: LLaVA has no input for the boxes a user points at beside the image")
    if c.location_head is not None:
        reasons.append(
            f"location codec {c.location_codec!r} has location heads (box encoder/decoder) LLaVA does not have"
        )
    unplaced = [k for k in model.state_dict() if _hub_key(k) is None]
    if unplaced and not reasons:
        reasons.append(f"weights with no place in LLaVA's layout: {', '.join(unplaced[:5])}")
    if processor is not None:
        if processor.transform.frame == "pad":
            try:
                pad_scale(processor.transform.mean)
            except ValueError as err:
                reasons.append(str(err))
        ids = processor.tokenizer(c.image_token, add_special_tokens=False)["input_ids"]
        if ids != [c.image_token_id]:
            reasons.append(
                f"the tokenizer writes {c.image_token!r} as {ids}, not as the one token {c.image_token_id} "
                "(image_token_index), so a LLaVA server could not find the image's place"
            )
    return reasons


def _check(model: GroundLMForConditionalGeneration, processor=None) -> None:
    reasons = refusals(model, processor)
    if reasons:
        raise ExportRefused(f"cannot export to {FORMAT}: " + "; ".join(reasons))


def _hub_key(key: str) -> str | None:
    """Where a groundlm weight lives in a llava-hf checkpoint (the hub layout), or None."""
    if key.startswith("vision_tower."):
        # transformers 5 towers hold their modules directly; the hub layout nests them in `vision_model`
        return "vision_tower.vision_model." + key.removeprefix("vision_tower.")
    if key.startswith("connector."):
        return "multi_modal_projector." + key.removeprefix("connector.")
    if key.startswith("language_model.model.") or key == "language_model.lm_head.weight":
        return key
    return None


def llava_key(key: str) -> str:
    """Where a groundlm weight lives in transformers' in-memory `LlavaForConditionalGeneration`."""
    if key.startswith("vision_tower."):
        return "model." + key
    if key.startswith("connector."):
        return "model.multi_modal_projector." + key.removeprefix("connector.")
    if key.startswith("language_model.model."):
        return "model.language_model." + key.removeprefix("language_model.model.")
    if key == "language_model.lm_head.weight":
        return "lm_head.weight"
    raise KeyError(f"{key!r} has no place in the LLaVA layout")


def feature_strategy(model: GroundLMForConditionalGeneration) -> str:
    """LLaVA's `vision_feature_select_strategy` that keeps the tokens groundlm keeps."""
    c = model.config
    # LLaVA's "default" drops the first token unconditionally; groundlm only drops a CLS token.
    return c.vision_feature_select_strategy if tower_has_cls_token(c.vision_config) else "full"


def llava_config(model: GroundLMForConditionalGeneration) -> LlavaConfig:
    """The `LlavaConfig` of a groundlm model, or `ExportRefused` naming what LLaVA cannot express."""
    _check(model)
    c = model.config
    config = LlavaConfig(
        vision_config=c.vision_config.to_dict(),
        text_config=c.text_config.to_dict(),
        image_token_index=c.image_token_id,
        vision_feature_layer=c.vision_feature_layer,
        vision_feature_select_strategy=feature_strategy(model),
        projector_hidden_act="gelu",
        multimodal_projector_bias=c.projector_bias,
        image_seq_length=c.num_image_tokens,
        tie_word_embeddings=c.text_config.tie_word_embeddings,
        pad_token_id=c.pad_token_id,
    )
    config.architectures = ["LlavaForConditionalGeneration"]
    return config


def to_llava(model: GroundLMForConditionalGeneration) -> LlavaForConditionalGeneration:
    """A `LlavaForConditionalGeneration` holding the same weights (computes the same logits)."""
    llava = LlavaForConditionalGeneration(llava_config(model)).to(model.dtype).eval()
    state = {llava_key(k): v for k, v in model.state_dict().items()}
    missing, unexpected = llava.load_state_dict(state, strict=False)
    tied = set(getattr(llava, "_tied_weights_keys", None) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(f"LLaVA export mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    llava.generation_config = model.generation_config
    return llava


def hub_state_dict(model: GroundLMForConditionalGeneration) -> dict[str, torch.Tensor]:
    """The model's weights under their llava-hf names (a tied lm_head is left to the config's tying)."""
    tied = model.config.text_config.tie_word_embeddings
    state = {}
    for key, tensor in model.state_dict().items():
        if tied and key == "language_model.lm_head.weight":
            continue  # the same storage as embed_tokens; safetensors keeps one copy, the config re-ties it
        state[_hub_key(key)] = tensor.detach().contiguous().cpu()
    return state


def processor_config(model: GroundLMForConditionalGeneration) -> dict:
    """`processor_config.json`: what `LlavaProcessor` needs to expand `<image>` to the model's token count."""
    c = model.config
    return {
        "processor_class": "LlavaProcessor",
        "image_token": c.image_token,
        "patch_size": c.vision_config.patch_size,
        "vision_feature_select_strategy": feature_strategy(model),
        # LlavaProcessor counts (image_size / patch)^2 + this, minus 1 for "default": the CLS token
        "num_additional_image_tokens": int(tower_has_cls_token(c.vision_config)),
    }


def export_llava_hf(model: GroundLMForConditionalGeneration, processor, out: str | Path) -> Path:
    """Write the llava-hf directory of `model` to `out` (see the module docstring for what and why).

    Each processor file is written on its own, in the flat layout llava-hf checkpoints have (transformers 5
    `save_pretrained` nests the image processor inside processor_config.json, which older readers miss).
    """
    _check(model, processor)
    config = llava_config(model)
    image_processor = llava_image_processor(processor.transform)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    save_file(hub_state_dict(model), str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    processor.tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)
    (out / "processor_config.json").write_text(json.dumps(processor_config(model), indent=2) + "\n")
    (out / "chat_template.jinja").write_text(
        jinja_chat_template(processor.template, processor.config.image_token)
    )
    return out

"""Export to transformers' LLaVA layout, so transformers, vLLM and SGLang run a groundlm model unchanged.

Only the LLaVA-1.5 configuration maps one to one: a CLIP or SigLIP tower, the `mlp2x_gelu` connector
(whose `linear_1`/`linear_2` are LLaVA's projector layers) and a causal LM. The weights are the same tensors
under other names; `to_llava` checks every key on both sides, so a renamed layer fails loudly instead of
leaving random weights behind. The benchmarks use it to build their baseline with identical weights.
`groundlm export MODEL OUT` runs `export_model`.
"""

from __future__ import annotations

from pathlib import Path

from transformers import LlavaConfig, LlavaForConditionalGeneration

from .modeling import GroundLMForConditionalGeneration


def llava_key(key: str) -> str:
    """Where a groundlm weight lives in `LlavaForConditionalGeneration`."""
    if key.startswith("vision_tower."):
        return "model." + key
    if key.startswith("connector."):
        return "model.multi_modal_projector." + key.removeprefix("connector.")
    if key.startswith("language_model.model."):
        return "model.language_model." + key.removeprefix("language_model.model.")
    if key == "language_model.lm_head.weight":
        return "lm_head.weight"
    raise KeyError(f"{key!r} has no place in the LLaVA layout")


def llava_config(model: GroundLMForConditionalGeneration) -> LlavaConfig:
    """The `LlavaConfig` of a groundlm model, or a ValueError naming what LLaVA cannot express."""
    c = model.config
    if c.connector != "mlp2x_gelu":
        raise ValueError(f"only the mlp2x_gelu connector exports to LLaVA, this model uses {c.connector!r}")
    if c.vision_config.model_type not in ("clip_vision_model", "siglip_vision_model"):
        raise ValueError(f"LLaVA needs a CLIP or SigLIP tower, this model has {c.vision_config.model_type!r}")
    if c.location_head is not None:
        raise ValueError(f"LLaVA has no location heads; this model's codec ({c.location_codec!r}) needs them")
    return LlavaConfig(
        vision_config=c.vision_config.to_dict(),
        text_config=c.text_config.to_dict(),
        image_token_index=c.image_token_id,
        vision_feature_layer=c.vision_feature_layer,
        vision_feature_select_strategy=c.vision_feature_select_strategy,
        projector_hidden_act="gelu",
        multimodal_projector_bias=c.projector_bias,
        image_seq_length=c.num_image_tokens,
        tie_word_embeddings=c.text_config.tie_word_embeddings,
        pad_token_id=c.pad_token_id,
    )


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


def export_llava(model: GroundLMForConditionalGeneration, processor, out: str | Path) -> Path:
    """Write a LLaVA-HF directory (weights, config, tokenizer) that `LlavaForConditionalGeneration` loads.

    The image side of the processor is groundlm's own (see `images.ImageTransform`): a LLaVA user needs
    the same resize/pad and normalisation, recorded in `groundlm_processor.json` beside the weights.
    """
    out = Path(out)
    to_llava(model).save_pretrained(out)
    processor.save_pretrained(out)
    return out


def export_model(model_dir: str | Path, out: str | Path) -> Path:
    """Load the groundlm model directory `model_dir` and write it to `out` in the LLaVA-HF layout."""
    from .inference import load

    lm = load(model_dir)
    return export_llava(lm.model, lm.processor, out)

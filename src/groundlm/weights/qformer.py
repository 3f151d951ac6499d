"""BLIP-2's Q-Former as LAVIS (and MiniGPT-4) names it -> transformers' `Blip2QFormerModel` weights.

LAVIS's `Qformer.bert` is a BERT whose layers have a self-attention, a cross-attention every
`cross_attention_freq` layers starting at layer 0, and a query feed-forward path (`intermediate_query`,
`output_query`); the queries' LayerNorm is the embeddings' (published_models.md §1e). The text path (word and
position embeddings, each layer's `intermediate`/`output`, the `cls` head) is set to None by MiniGPT-4 and never
runs on queries, so those names are known and dropped, like the BLIP-2 heads a checkpoint may carry
(`t5_proj`, `opt_proj`, `vision_proj`, `text_proj`, `itm_head`, `temp`).

The head count is not in the weights: MiniGPT-4's Q-Former is `bert-base-uncased` (12 heads, LayerNorm eps
1e-12, GELU).
"""

from __future__ import annotations

import re

import torch
from transformers import Blip2QFormerConfig

BERT_BASE_HEADS = 12
BERT_LAYER_NORM_EPS = 1e-12

_LAYER = re.compile(r"Qformer\.bert\.encoder\.layer\.(\d+)\.(.+)")
# In-layer LAVIS name -> transformers name: `X.self.` becomes `X.attention.` for both attentions.
_IN_LAYER = re.compile(
    r"(attention|crossattention)\.self\.(query|key|value)\.(weight|bias)"
    r"|(attention|crossattention)\.output\.(dense|LayerNorm)\.(weight|bias)"
    r"|(intermediate_query|output_query)\.(dense|LayerNorm)\.(weight|bias)"
)
# Known LAVIS / BLIP-2 names outside the Q-Former MiniGPT-4 runs.
UNUSED = re.compile(
    r"Qformer\.bert\.embeddings\.(word_embeddings|position_embeddings)\..+"
    r"|Qformer\.bert\.embeddings\.position_ids"
    r"|Qformer\.bert\.encoder\.layer\.\d+\.(intermediate|output)\.(dense|LayerNorm)\.(weight|bias)"
    r"|Qformer\.cls\..+"
    r"|(t5_proj|opt_proj|vision_proj|text_proj|itm_head)\.(weight|bias)|temp"
)


def is_qformer_name(name: str) -> bool:
    """Whether `name` belongs to LAVIS's Q-Former (used or known-unused)."""
    return name.startswith("Qformer.")


def lavis_qformer_config(
    weights: dict[str, torch.Tensor], *, encoder_hidden_size: int, heads: int = BERT_BASE_HEADS
) -> Blip2QFormerConfig:
    """The `Blip2QFormerConfig` of LAVIS Q-Former weights, sizes read from the tensors."""
    layers = sorted({int(m[1]) for n in weights if (m := _LAYER.fullmatch(n))})
    if not layers or "Qformer.bert.embeddings.LayerNorm.weight" not in weights:
        raise ValueError("no Q-Former weights (Qformer.bert.*) were found")
    if layers != list(range(len(layers))):
        raise ValueError(f"the Q-Former layers are not numbered 0..N-1: {layers}")
    cross = [i for i in layers if f"Qformer.bert.encoder.layer.{i}.crossattention.self.key.weight" in weights]
    frequency = cross[1] - cross[0] if len(cross) > 1 else len(layers)
    if not cross or cross != list(range(0, len(layers), frequency)):
        raise ValueError(
            f"the Q-Former cross-attends in layers {cross}; transformers' Blip2QFormerModel needs every "
            "k-th layer from layer 0"
        )
    return Blip2QFormerConfig(
        hidden_size=weights["Qformer.bert.embeddings.LayerNorm.weight"].shape[0],
        num_hidden_layers=len(layers),
        num_attention_heads=heads,
        intermediate_size=weights["Qformer.bert.encoder.layer.0.intermediate_query.dense.weight"].shape[0],
        cross_attention_frequency=frequency,
        encoder_hidden_size=encoder_hidden_size,
        layer_norm_eps=BERT_LAYER_NORM_EPS,
        hidden_act="gelu",
    )


def lavis_to_blip2_qformer(
    weights: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Map the `Qformer.*` names of `weights` onto `Blip2QFormerModel`'s state dict.

    Returns (state dict, known names dropped (the text path, BLIP-2's heads), `Qformer.*` names not understood).
    """
    state: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    for name, tensor in weights.items():
        layer = _LAYER.fullmatch(name)
        if UNUSED.fullmatch(name):
            dropped.append(name)
        elif not is_qformer_name(name):
            continue
        elif name.startswith("Qformer.bert.embeddings.LayerNorm."):
            state["layernorm." + name.rsplit(".", 1)[1]] = tensor
        elif layer and _IN_LAYER.fullmatch(layer[2]):
            state[f"encoder.layer.{layer[1]}.{layer[2].replace('.self.', '.attention.')}"] = tensor
        else:
            unknown.append(name)
    return state, dropped, unknown


__all__ = ["BERT_BASE_HEADS", "UNUSED", "is_qformer_name", "lavis_qformer_config", "lavis_to_blip2_qformer"]

"""`GroundLMConfig`: a vision tower, a connector and a causal language model, described by one config.

The config follows transformers' composite-config conventions (as `LlavaConfig` does): the vision and text
configs are nested sub-configs, given as config objects or as dicts with a `model_type`, and saved inside
`config.json`. It also owns the one number the processor and the model must agree on, `num_image_tokens`:
how many `<image>` tokens a single image becomes.
"""

from __future__ import annotations

from typing import ClassVar

from transformers import AutoConfig, Blip2QFormerConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ..geometry import FRAMES
from .connector import CONNECTORS, MERGING
from .positions import IMAGE_POSITION_EMBEDDINGS
from .vision import SELECT_STRATEGIES, tower_has_cls_token


class GroundLMConfig(PreTrainedConfig):
    """Configuration of a `GroundLMForConditionalGeneration`.

    Args:
        vision_config: the vision tower's config (CLIP `clip_vision_model`, SigLIP `siglip_vision_model`, ViT
            `vit` or BLIP-2's EVA ViT-g `blip_2_vision_model`), as a config object or a dict with a `model_type`.
            Defaults to a CLIP vision config.
        text_config: the causal language model's config (Llama first), as a config object or a dict with a
            `model_type`. Defaults to a Llama config.
        qformer_config: the Q-Former's `Blip2QFormerConfig` (or a dict), used only by the `qformer` connector.
            Defaults to BLIP-2's (BERT-base sized); its `encoder_hidden_size` is set to the vision width.
        connector: how vision features become language-model embeddings: `linear` (LLaVA-1), `mlp2x_gelu`
            (LLaVA-1.5), `concat4` (MiniGPT-v2), `merge2x2` (2x2 blocks) or `qformer` (MiniGPT-4).
        num_query_tokens: the number of learned Q-Former queries, i.e. image tokens, for `qformer`.
        vision_feature_layer: which hidden state of the tower to use (-2 is the penultimate layer).
        vision_feature_select_strategy: `default` drops the CLS token when the tower has one; `full` keeps it.
        image_token_id: the token id whose positions receive the image features.
        image_token: the placeholder string the processor expands to `num_image_tokens` copies.
        frame: how the processor fits an image into the square input: `resize` (stretch) or `pad` (letterbox).
        location_codec: how boxes are written in text (`text`: `{<x1><y1><x2><y2>}` bins).
        location_bins: the number of coordinate bins of the location codec.
        location_head: the `embedding` codec's box encoder/decoder (and mask decoder) settings, a dict of
            `modeling/location_heads.LocationHeadConfig` fields (token ids, loss weights); None otherwise.
        projector_bias: whether the connector's linear layers have a bias.
        vision_feature_norm: a LayerNorm on the tower's features before the connector (as MiniGPT-4's
            `ln_vision`). A tower trained from scratch has residual features of norm ~200, which swamp the
            position code and make the connector's updates huge; pretrained CLIP/EVA features do not need it.
        region_marks: mark the boxes of the user's turns on the patch features with a learned vector
            (modeling/marks.py; the processor's `mark_grid` lays them on the grid).
        image_position_embedding: `none`, or `sincos2d`: a fixed 2-D sinusoidal code of each image token's
            centre added to the connector's output (models trained from scratch learn to ground much faster
            with it; see modeling/positions.py). Not for `qformer` or a kept CLS token.
        tie_word_embeddings: mirrors the text config's flag when that is true (the LM does the tying).
    """

    model_type: ClassVar[str] = "groundlm"
    # `sub_configs` (the older spelling) is derived from this: {"vision_config": AutoConfig, ...}.
    sub_configs_defaults: ClassVar[dict[str, SubConfigSpec]] = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="clip_vision_model"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
        "qformer_config": SubConfigSpec(config_class=Blip2QFormerConfig, optional=True),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    qformer_config: dict | PreTrainedConfig | None = None
    connector: str = "mlp2x_gelu"
    num_query_tokens: int = 32
    vision_feature_layer: int = -2
    vision_feature_select_strategy: str = "default"
    image_token_id: int | None = None
    image_token: str = "<image>"
    frame: str = "resize"
    location_codec: str = "text"
    location_bins: int = 100
    location_head: dict | None = None
    projector_bias: bool = True
    vision_feature_norm: bool = False
    image_position_embedding: str = "none"
    region_marks: bool = False
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs) -> None:
        """Resolve the sub-configs (dicts become config objects), then check every field."""
        super().__post_init__(**kwargs)
        if self.connector == "qformer" and self.qformer_config is None:
            self.qformer_config = Blip2QFormerConfig()
        if self.qformer_config is not None:
            # The Q-Former cross-attends the vision features, so its key/value width is the tower's.
            self.qformer_config.encoder_hidden_size = self.vision_config.hidden_size
        # Tying happens inside the language model (its own config); mirror the flag so callers reading the
        # top-level config (peft, export code) see the truth.
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        self._check()

    def _check(self) -> None:
        """Raise a ValueError naming the field and the valid choices for any inconsistent setting."""
        if self.connector not in CONNECTORS:
            raise ValueError(f"unknown connector {self.connector!r}; choose one of {', '.join(CONNECTORS)}")
        if self.vision_feature_select_strategy not in SELECT_STRATEGIES:
            raise ValueError(
                f"unknown vision_feature_select_strategy {self.vision_feature_select_strategy!r}; "
                f"choose one of {', '.join(SELECT_STRATEGIES)}"
            )
        if self.frame not in FRAMES:
            raise ValueError(f"unknown frame {self.frame!r}; choose one of {', '.join(FRAMES)}")
        # Imported here, not at the top: the location package may import modeling for its hooks.
        from ..location import make_codec

        codec = make_codec(self)  # a ValueError naming the choices for an unknown location_codec
        if codec.has_heads != (self.location_head is not None):
            raise ValueError(
                f"location_head (the box encoder/decoder settings) goes with a codec that has location heads; "
                f"location_codec {self.location_codec!r} {'needs' if codec.has_heads else 'has none'}"
            )
        if self.image_position_embedding not in IMAGE_POSITION_EMBEDDINGS:
            raise ValueError(
                f"unknown image_position_embedding {self.image_position_embedding!r}; "
                f"choose one of {', '.join(IMAGE_POSITION_EMBEDDINGS)}"
            )
        if self.image_position_embedding != "none" and self.connector == "qformer":
            raise ValueError("image_position_embedding needs image tokens tied to positions; qformer has none")
        if self.image_position_embedding != "none" and self.text_config.hidden_size % 4:
            raise ValueError("image_position_embedding 'sincos2d' needs a text width divisible by 4")
        if not isinstance(self.location_bins, int) or self.location_bins < 2:
            raise ValueError(f"location_bins must be an int >= 2, got {self.location_bins!r}")
        if not isinstance(self.vision_feature_layer, int) or isinstance(self.vision_feature_layer, bool):
            raise ValueError(f"vision_feature_layer must be an int, got {self.vision_feature_layer!r}")
        # hidden_states holds the embeddings plus one entry per layer.
        num_states = self.vision_config.num_hidden_layers + 1
        if not -num_states <= self.vision_feature_layer < num_states:
            raise ValueError(
                f"vision_feature_layer {self.vision_feature_layer} is out of range for a tower with "
                f"{num_states - 1} layers (valid: {-num_states} .. {num_states - 1})"
            )
        if self.connector == "qformer" and self.num_query_tokens < 1:
            raise ValueError(f"num_query_tokens must be positive, got {self.num_query_tokens}")
        if self.connector in MERGING and self.num_vision_features % MERGING[self.connector] != 0:
            raise ValueError(
                f"the {self.connector} connector groups {MERGING[self.connector]} vision tokens into one, but the tower gives "
                f"{self.num_vision_features} tokens per image (image_size {self.image_size}, patch_size "
                f"{self.vision_config.patch_size}, strategy {self.vision_feature_select_strategy!r}); "
                "use a token count divisible by 4 (e.g. strategy 'default' to drop the CLS token)"
            )

    @property
    def image_size(self) -> int:
        """The square input size of the vision tower, in pixels."""
        size = self.vision_config.image_size
        return size if isinstance(size, int) else int(size[0])

    @property
    def num_vision_features(self) -> int:
        """Vision tokens per image entering the connector: the patches, plus CLS if kept (`full`)."""
        patches = (self.image_size // self.vision_config.patch_size) ** 2
        keeps_cls = tower_has_cls_token(self.vision_config) and self.vision_feature_select_strategy == "full"
        return patches + int(keeps_cls)

    @property
    def num_image_tokens(self) -> int:
        """How many image tokens (and image features) one image becomes in the language model's sequence."""
        if self.connector == "qformer":
            return self.num_query_tokens
        return self.num_vision_features // MERGING.get(self.connector, 1)


__all__ = ["GroundLMConfig"]

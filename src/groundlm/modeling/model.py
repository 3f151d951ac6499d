"""`GroundLMForConditionalGeneration`: vision tower -> connector -> causal language model.

The processor has already expanded every image placeholder to exactly `config.num_image_tokens` copies of
`config.image_token_id` (the transformers convention). The model embeds the tokens, computes the image
features, and scatters them into those positions (checking the counts match), then runs the language model on
the embeddings. It is a transformers `PreTrainedModel` + `GenerationMixin`: `save_pretrained`,
`from_pretrained`, `generate` (KV cache, batched with left padding) and `resize_token_embeddings` all work;
groundlm's own decoding loop is `decoding.py`.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import can_return_tuple

from .config import GroundLMConfig
from .connector import QFormerConnector, build_connector
from .location_heads import build_location_heads
from .marks import RegionMark
from .positions import image_position_codes
from .vision import build_vision_tower, select_image_features


@dataclass
class GroundLMCausalLMOutputWithPast(CausalLMOutputWithPast):
    """The language model's output plus the image features that were scattered into the sequence.

    image_hidden_states: [B_img, N_img, D] connector outputs, or None when no images were given.
    """

    image_hidden_states: torch.FloatTensor | None = None
    # Location heads (modeling/location_heads.py), when location_inputs hold trigger_boxes: the decoded boxes
    # [N_trigger, 4], each loss term's mean, the weighted total (in `loss` too) and its split per sample [B].
    location_boxes: torch.FloatTensor | None = None
    location_losses: dict | None = None
    location_loss: torch.FloatTensor | None = None
    location_sample_losses: torch.FloatTensor | None = None


def positions_from_attention_mask(attention_mask: torch.Tensor) -> torch.LongTensor:
    """Position ids [B, T] that count only attended tokens, so left padding does not shift positions.

    Same rule as `generate` (`cumsum - 1`, padding set to 0): with right padding or no padding it equals
    `arange(T)` on the real tokens.
    """
    positions = attention_mask.long().cumsum(-1) - 1
    return positions.masked_fill(attention_mask == 0, 0)


class GroundLMPreTrainedModel(PreTrainedModel):
    """Base class: config class, weight init and the capability flags transformers reads."""

    # A real annotation (no `from __future__ import annotations` here): transformers reads it as config_class.
    config: GroundLMConfig
    base_model_prefix = ""
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    # post_init() adds the tower's and the language model's own blocks (e.g. CLIPEncoderLayer,
    # LlamaDecoderLayer); the connector is small and must stay on one device with its query tokens.
    _no_split_modules = ["QFormerConnector"]
    _skip_keys_device_placement = ["cache"]
    # As in BLIP-2: loading with dtype=float16 keeps the Q-Former and its queries in fp32 (bf16 loads as is).
    _keep_in_fp32_modules = ["qformer", "query_tokens"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def _init_weights(self, module: nn.Module) -> None:
        """The library's default init (normal Linear/Embedding, unit norms) plus the Q-Former's queries and the region mark."""
        super()._init_weights(module)
        if isinstance(module, QFormerConnector):
            # Distinct random queries, as BLIP-2 (LAVIS) does; zeros would keep every query identical.
            init.normal_(module.query_tokens, mean=0.0, std=module.qformer.config.initializer_range)
        if isinstance(module, RegionMark):
            init.normal_(module.vector, mean=0.0, std=1.0)  # unit scale, as RegionMark.reset_parameters says


class GroundLMForConditionalGeneration(GroundLMPreTrainedModel, GenerationMixin):
    """A grounded vision-language model: `vision_tower`, `connector` and `language_model` (with its lm_head).

    Weight tying (lm_head <-> embed_tokens) is the language model's own business: it follows
    `text_config.tie_word_embeddings`, and post_init() records the tied keys under `language_model.`.
    """

    def __init__(self, config: GroundLMConfig):
        super().__init__(config)
        self.vision_tower = build_vision_tower(config.vision_config)
        # [B, N, C] features -> LayerNorm -> connector; None keeps the features as the tower gives them.
        self.vision_norm = nn.LayerNorm(config.vision_config.hidden_size) if config.vision_feature_norm else None
        self.connector = build_connector(config)
        # The user's boxes marked on the patch features (marks.py); None unless config.region_marks.
        self.region_mark = RegionMark(config.vision_config.hidden_size) if config.region_marks else None
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        self.location_heads = build_location_heads(config)  # None unless the codec has heads (location_head)
        self.post_init()

    # Embedding accessors: `resize_token_embeddings` (new special tokens) goes through these.
    def get_input_embeddings(self) -> nn.Module:
        """The language model's token embedding table."""
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        """Replace the language model's token embedding table."""
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        """The language model's lm_head."""
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings: nn.Module) -> None:
        """Replace the language model's lm_head."""
        self.language_model.set_output_embeddings(new_embeddings)

    def get_image_features(
        self, pixel_values: torch.Tensor, image_marks: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Image features in the language model's width: [B, 3, H, W] -> [B, config.num_image_tokens, D].

        `image_marks` [B, G*G]: the share of each patch the user's boxes cover (region_marks models only)."""
        features = select_image_features(
            self.vision_tower,
            pixel_values.to(self.vision_tower.dtype),
            self.config.vision_feature_layer,
            self.config.vision_feature_select_strategy,
        )  # [B, N, C]
        if self.vision_norm is not None:
            features = self.vision_norm(features)
        if self.region_mark is not None and image_marks is not None:
            cls = features.shape[1] - image_marks.shape[1]  # 1 when the CLS token is kept: never marked
            features = self.region_mark(features, F.pad(image_marks, (cls, 0)))  # [B, N, C]
        tokens = self.connector(features)  # [B, N_img, D]
        if self.config.image_position_embedding == "sincos2d":
            tokens = tokens + self._image_codes(tokens)  # [N_img, D] broadcast over the batch
        return tokens

    def _image_codes(self, like: torch.Tensor) -> torch.Tensor:
        """The fixed image-position codes [N_img, D] in `like`'s device and dtype (computed once, cached).

        Not a buffer: it is a pure function of the config, so checkpoints stay free of it and a model built on
        the meta device needs no special handling.
        """
        codes = getattr(self, "_image_codes_cache", None)
        if codes is None or codes.device != like.device or codes.dtype != like.dtype:
            codes = image_position_codes(self.config).to(like.device, like.dtype)
            self._image_codes_cache = codes
        return codes

    def merge_image_features(
        self, input_ids: torch.LongTensor, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """Write `image_features` [B_img, N_img, D] into the image-token rows of `inputs_embeds` [B, T, D].

        Images fill the image tokens in reading order (row by row through the batch), so the i-th image's
        features land in the i-th run of N_img image tokens.
        """
        mask = input_ids == self.config.image_token_id  # [B, T]
        num_tokens = int(mask.sum())
        num_images, per_image = image_features.shape[:2]
        if num_tokens != num_images * per_image:
            raise ValueError(
                f"the prompt holds {num_tokens} image tokens but the images give "
                f"{num_images} x {per_image} = {num_images * per_image} features; the processor must expand "
                f"each image placeholder to exactly config.num_image_tokens ({self.config.num_image_tokens}) "
                f"copies of token id {self.config.image_token_id}"
            )
        mask = mask.unsqueeze(-1).to(inputs_embeds.device)  # [B, T, 1], broadcast over D
        return inputs_embeds.masked_scatter(
            mask, image_features.to(inputs_embeds.device, inputs_embeds.dtype)
        )

    @can_return_tuple  # handles `return_dict=False` (generate always asks for a dict)
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")  # transformers 5.24 renamed it
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        cache_position: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        location_inputs: dict | None = None,
        image_marks: torch.Tensor | None = None,
        **kwargs,
    ) -> GroundLMCausalLMOutputWithPast:
        """Embed the tokens, scatter in the image features, run the language model.

        Args:
            input_ids: [B, T] token ids, with `num_image_tokens` image tokens per image.
            pixel_values: [B_img, 3, H, W] images, in the order their image tokens appear. Only on the
                prefill step of generation; later steps read the images from the KV cache.
            attention_mask: [B, T_past + T], 1 for real tokens, 0 for padding.
            position_ids: [B, T]; when None they follow `attention_mask` (left padding keeps positions).
            cache: the KV cache of the tokens before these (`past_key_values` before transformers 5.24).
            labels: [B, T] targets, -100 where no loss is taken; shifted inside the language model's loss.
            cache_position: accepted for callers written for older transformers; transformers 5 derives the
                cache slot from the cache itself, so it is not used.
            logits_to_keep: compute logits for only the last this-many positions (0 = all).
            location_inputs: what the location codec puts beside the ids (`location/codec.py`, `collate`); read
                by the location heads (embedding codec): `slot_boxes` [N_slot, 4], the boxes whose encoding
                replaces the slot tokens' embeddings; `trigger_boxes` [N_trigger, 4], the box decoder's targets
                at the trigger tokens (given, the location losses are computed and added to `loss` when `labels`
                are given too); `trigger_masks` [N_trigger, S, S], the mask targets (frame). One dict rather
                than a keyword per tensor, so a codec with other inputs needs no new argument here.
            image_marks: [B_img, G*G] the user's boxes on the patch grid (region_marks models; marks.py),
                with `pixel_values`.
            kwargs: passed to the language model (e.g. `num_items_in_batch` for the loss).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)  # [B, T, D]

        image_features = None
        if pixel_values is not None:
            if input_ids is None:
                raise ValueError(
                    "pixel_values need input_ids: image features go where input_ids == image_token_id"
                )
            if self.config.image_token_id is None:
                raise ValueError("config.image_token_id is not set, so the model cannot place image features")
            image_features = self.get_image_features(pixel_values, image_marks)  # [B_img, N_img, D]
            inputs_embeds = self.merge_image_features(input_ids, inputs_embeds, image_features)
        heads = self.location_heads
        located = location_inputs or {}
        slot_boxes, trigger_boxes = located.get("slot_boxes"), located.get("trigger_boxes")
        if heads is not None and slot_boxes is not None and input_ids is not None:
            inputs_embeds = heads.embed_slots(input_ids, inputs_embeds, slot_boxes)  # [B, T, D]
        locate = heads is not None and trigger_boxes is not None and input_ids is not None
        if locate:
            kwargs["output_hidden_states"] = True  # the box decoder reads the last layer at the triggers

        if position_ids is None and attention_mask is not None and attention_mask.dim() == 2:
            # The mask spans past + current tokens; the current ones are the last T.
            position_ids = positions_from_attention_mask(attention_mask)[:, -inputs_embeds.shape[1] :]

        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        location = None
        if locate:
            location = heads.losses(
                input_ids, outputs.hidden_states[-1], trigger_boxes, slot_boxes,
                vision=(self, pixel_values), trigger_masks=located.get("trigger_masks"),
            )
        loss = outputs.loss
        if loss is not None and location is not None:
            loss = loss + location.total
        return GroundLMCausalLMOutputWithPast(
            loss=loss,
            logits=outputs.logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
            location_boxes=None if location is None else location.boxes,
            location_losses=None if location is None else location.losses,
            location_loss=None if location is None else location.total,
            location_sample_losses=None if location is None else location.per_sample,
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        pixel_values: torch.FloatTensor | None = None,
        image_marks: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ) -> dict:
        """The library's input preparation (position ids sliced to the new tokens, cache, mask), plus images.

        Images go in only on the prefill step (or on every step without a cache): after prefill their
        features live in the KV cache, and the new token holds no image placeholder.
        """
        model_inputs = super().prepare_inputs_for_generation(
            input_ids, is_first_iteration=is_first_iteration, **kwargs
        )
        if is_first_iteration or not kwargs.get("use_cache", True):
            model_inputs["pixel_values"] = pixel_values
            model_inputs["image_marks"] = image_marks
        return model_inputs


__all__ = [
    "GroundLMCausalLMOutputWithPast",
    "GroundLMForConditionalGeneration",
    "GroundLMPreTrainedModel",
    "positions_from_attention_mask",
]

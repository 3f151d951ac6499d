"""NExT-Chat's location heads for the `embedding` codec: a box decoder, a box encoder and their losses.

- box decoder: Linear(D, D/2) → ReLU → Linear(D/2, 4), read at every trigger (`<at>`) position's last hidden
  state; the 4 numbers are compared directly with the xyxy box in [0, 1] (no sigmoid, as NExT-Chat).
- box encoder: Linear(4, D/2) → ReLU → Linear(D/2, D), whose output replaces the input embedding of every slot
  (`<boxes>`) token.

Losses, each reported on its own (`LocationOutput.losses`):
- `box_l1`: mean absolute error of the 4 coordinates, per trigger;
- `box_giou`: 1 − GIoU, per trigger. NExT-Chat drops predictions whose corners are out of order (and its loss
  is NaN when all are dropped); here GIoU is taken on the box the two corners span (min/max per axis), so
  every prediction counts and L1 still pulls the corners into order;
- `cycle_box`: box → encoder → decoder vs the box (L1), on every slot box;
- `cycle_emb`: hidden → decoder → encoder vs the hidden state (MSE), on every trigger.

Weights: `l1_weight` 2 and `giou_weight` 0.2 are NExT-Chat's released code (`2 * L1 + GIoU / 5`); its paper
says 0.8 for GIoU "following DETR". The code's numbers are the default because they trained the released
checkpoints; set `giou_weight: 0.8` for the paper's. The cycle terms have weight 1 in both (`cycle_weight`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..geometry import generalized_box_iou_tensor


@dataclass
class LocationHeadConfig:
    """Settings of the embedding codec's heads, stored as a dict in `GroundLMConfig.location_head`."""

    trigger_token_id: int
    slot_token_id: int
    l1_weight: float = 2.0  # NExT-Chat code
    giou_weight: float = 0.2  # NExT-Chat code (paper: 0.8)
    cycle_weight: float = 1.0
    # The mask decoder: False (none), True or "mini" (the small SAM-style one, modeling/mask_decoder.py) or "sam"
    # (transformers' SamModel behind NExT-Chat's prompt MLP, modeling/sam_decoder.py).
    mask_decoder: bool | str = False
    mask_dim: int = 64
    # "sam" only: the SamConfig (a dict; the weights come with the model), or `sam_path`, a local transformers
    # SAM directory whose config and weights are loaded when the heads are built; `sam_pixel_mean/std` are the
    # normalisation of the model's own input, undone before SAM's (see modeling/sam_decoder.py).
    sam_config: dict | None = None
    sam_path: str | None = None
    sam_prompt_tokens: int = 4
    sam_pixel_mean: tuple[float, float, float] | None = None
    sam_pixel_std: tuple[float, float, float] | None = None
    dice_weight: float = 1.0
    bce_weight: float = 1.0

    def to_dict(self) -> dict:
        """The JSON-ready form stored in the model config."""
        return asdict(self)


@dataclass
class LocationOutput:
    """What the heads computed for one forward pass.

    boxes: [N_trigger, 4] decoded boxes (xyxy in [0, 1] of the frame), in reading order.
    losses: each weighted-free term's mean (`box_l1`, `box_giou`, `cycle_box`, `cycle_emb`, masks' `mask_dice`,
        `mask_bce`), for reporting.
    total: the weighted sum of the term means (a scalar, added to the LM loss).
    per_sample: [B] the same total split over the samples that hold the triggers/slots (sums to `total`).
    """

    boxes: torch.Tensor
    losses: dict[str, torch.Tensor]
    total: torch.Tensor
    per_sample: torch.Tensor


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_out))


def ordered_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """[N, 4] xyxy → the box the two corners span (x1 ≤ x2, y1 ≤ y2), differentiable."""
    x = torch.stack([boxes[:, 0], boxes[:, 2]], -1)  # [N, 2]
    y = torch.stack([boxes[:, 1], boxes[:, 3]], -1)
    return torch.stack([x.amin(-1), y.amin(-1), x.amax(-1), y.amax(-1)], -1)


def box_loss_terms(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-box L1 (mean over the 4 coordinates) and 1 − GIoU, each [N], for [N, 4] xyxy boxes."""
    l1 = (pred - target).abs().mean(-1)  # [N]
    giou = generalized_box_iou_tensor(ordered_boxes(pred.float()), target.float())  # [N], in [-1, 1]
    return l1, 1.0 - giou


class LocationHeads(nn.Module):
    """Box decoder and encoder (and optionally a mask decoder) on a language model of width `hidden`."""

    def __init__(
        self, hidden: int, config: LocationHeadConfig, vision_hidden: int | None = None, num_patches: int = 1024
    ):
        super().__init__()
        self.config = config
        self.box_decoder = _mlp(hidden, hidden // 2, 4)
        self.box_encoder = _mlp(4, hidden // 2, hidden)
        self.mask_decoder = build_mask_decoder(config, hidden, vision_hidden or hidden, num_patches)

    def encode(self, boxes: torch.Tensor) -> torch.Tensor:
        """[N, 4] boxes → [N, D] slot embeddings."""
        return self.box_encoder(boxes.to(self.box_encoder[0].weight.dtype))

    def decode(self, hidden: torch.Tensor) -> torch.Tensor:
        """[N, D] trigger hidden states → [N, 4] boxes."""
        return self.box_decoder(hidden.to(self.box_decoder[0].weight.dtype))

    def embed_slots(
        self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, slot_boxes: torch.Tensor
    ) -> torch.Tensor:
        """Write encoder(slot_boxes) [N_slot, D] into the slot-token rows of `inputs_embeds` [B, T, D]."""
        mask = input_ids == self.config.slot_token_id  # [B, T]
        if int(mask.sum()) != slot_boxes.shape[0]:
            raise ValueError(
                f"the batch holds {int(mask.sum())} slot tokens but {slot_boxes.shape[0]} slot_boxes are given"
            )
        if slot_boxes.shape[0] == 0:
            return inputs_embeds
        codes = self.encode(slot_boxes.to(inputs_embeds.device)).to(inputs_embeds.dtype)  # [N_slot, D]
        return inputs_embeds.masked_scatter(mask.unsqueeze(-1), codes)

    def losses(
        self,
        input_ids: torch.Tensor,
        last_hidden: torch.Tensor,
        trigger_boxes: torch.Tensor,
        slot_boxes: torch.Tensor | None,
        *,
        vision: tuple[nn.Module, torch.Tensor | None] | None = None,
        trigger_masks: torch.Tensor | None = None,
    ) -> LocationOutput:
        """Decode a box at every trigger of `input_ids` [B, T] from `last_hidden` [B, T, D] and score it.

        `trigger_boxes` [N_trigger, 4] are the targets in reading order; `slot_boxes` [N_slot, 4] feed the
        box → embedding → box cycle. With a mask decoder, `vision` is (the model, pixel_values [B_img, 3, S, S])
        and `trigger_masks` [N_trigger, S, S] the mask targets (one image per sample).
        """
        cfg = self.config
        batch = input_ids.shape[0]
        trig = input_ids == cfg.trigger_token_id  # [B, T]
        if int(trig.sum()) != trigger_boxes.shape[0]:
            raise ValueError(
                f"the batch holds {int(trig.sum())} trigger tokens but {trigger_boxes.shape[0]} trigger_boxes "
                "are given"
            )
        hidden = last_hidden[trig]  # [N_trigger, D], reading order
        pred = self.decode(hidden)  # [N_trigger, 4]
        target = trigger_boxes.to(pred.device, pred.dtype)
        per_sample = last_hidden.new_zeros(batch, dtype=torch.float32)
        terms: dict[str, torch.Tensor] = {}
        total = per_sample.sum()

        def add(name: str, values: torch.Tensor, rows: torch.Tensor, weight: float) -> None:
            # values [N] per item; rows [N] the sample each item belongs to. The term's mean enters the total.
            nonlocal total, per_sample
            if values.numel() == 0:
                return
            values = values.float()
            terms[name] = values.mean().detach()
            total = total + weight * values.mean()
            per_sample = per_sample.index_add(0, rows, weight * values / values.numel())

        trig_rows = trig.nonzero()[:, 0]  # [N_trigger]
        if pred.shape[0]:
            l1, giou = box_loss_terms(pred, target)
            add("box_l1", l1, trig_rows, cfg.l1_weight)
            add("box_giou", giou, trig_rows, cfg.giou_weight)
            cycled = self.encode(pred)  # [N_trigger, D]: hidden → box → embedding
            add("cycle_emb", F.mse_loss(cycled.float(), hidden.float(), reduction="none").mean(-1), trig_rows,
                cfg.cycle_weight)
        if slot_boxes is not None and slot_boxes.shape[0]:
            boxes = slot_boxes.to(pred.device, pred.dtype)
            slot_rows = (input_ids == cfg.slot_token_id).nonzero()[:, 0]
            back = self.decode(self.encode(boxes))  # [N_slot, 4]: box → embedding → box
            add("cycle_box", (back - boxes).abs().float().mean(-1), slot_rows, cfg.cycle_weight)
        if self.mask_decoder is not None and trigger_masks is not None and vision is not None and pred.shape[0]:
            from .mask_decoder import mask_loss_terms

            # the decoded boxes are detached: the mask loss trains the mask decoder, not the box decoder
            logits = self.mask_decoder.predict(vision[0], vision[1], hidden, trig_rows, pred.detach())  # [N, S, S]
            dice, bce = mask_loss_terms(logits, trigger_masks.to(logits.device))
            add("mask_dice", dice, trig_rows, cfg.dice_weight)
            add("mask_bce", bce, trig_rows, cfg.bce_weight)
        return LocationOutput(pred.detach(), terms, total, per_sample)


def _mini_decoder(settings: LocationHeadConfig, hidden: int, vision_hidden: int, num_patches: int) -> nn.Module:
    from .mask_decoder import MaskDecoder

    return MaskDecoder(hidden, vision_hidden, settings.mask_dim, max_patches=num_patches)


def _sam_decoder(settings: LocationHeadConfig, hidden: int, vision_hidden: int, num_patches: int) -> nn.Module:
    from .sam_decoder import SamMaskDecoder

    return SamMaskDecoder.from_settings(settings, hidden)


# Every mask decoder answers `predict(model, pixel_values, hidden, rows, boxes) -> logits [N, S, S]` (frame).
MASK_DECODERS = {"mini": _mini_decoder, "sam": _sam_decoder}


def build_mask_decoder(
    settings: LocationHeadConfig, hidden: int, vision_hidden: int, num_patches: int
) -> nn.Module | None:
    """The mask decoder `settings.mask_decoder` names (True means "mini"), or None for False."""
    kind = settings.mask_decoder
    if kind is False or kind is None:
        return None
    kind = "mini" if kind is True else kind
    if kind not in MASK_DECODERS:
        raise ValueError(
            f"unknown location_head.mask_decoder {kind!r}; choose false, true or one of {', '.join(MASK_DECODERS)}"
        )
    return MASK_DECODERS[kind](settings, hidden, vision_hidden, num_patches)


def build_location_heads(config) -> LocationHeads | None:
    """The heads of a `GroundLMConfig` with `location_head` settings (its codec has heads), else None."""
    if config.location_head is None:
        return None
    settings = LocationHeadConfig(**config.location_head)
    patches = (config.image_size // config.vision_config.patch_size) ** 2  # the mask decoder's grid
    return LocationHeads(config.text_config.hidden_size, settings, config.vision_config.hidden_size, patches)


__all__ = [
    "MASK_DECODERS",
    "LocationHeadConfig",
    "LocationHeads",
    "LocationOutput",
    "box_loss_terms",
    "build_location_heads",
    "build_mask_decoder",
    "ordered_boxes",
]

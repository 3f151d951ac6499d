"""NExT-Chat's box decoder/encoder losses (against hand-computed values), the mask decoder and mask RLE."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from groundlm.data.shapes import scene_at, scene_records
from groundlm.geometry import Frame
from groundlm.masks import decode_mask, mask_from_frame, mask_to_frame, rle_encode
from groundlm.modeling.location_heads import LocationHeadConfig, LocationHeads, box_loss_terms, ordered_boxes
from groundlm.modeling.mask_decoder import MaskDecoder, mask_loss_terms
from groundlm.presets import build_model, get_preset


def test_box_losses_match_hand_computed_values():
    pred = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 0.0, 0.0], [1.0, 1.0, 3.0, 3.0]])
    target = torch.tensor([[1.0, 1.0, 3.0, 3.0], [2.0, 2.0, 3.0, 3.0], [1.0, 1.0, 3.0, 3.0], [1.0, 1.0, 3.0, 3.0]])
    l1, giou = box_loss_terms(pred, target)
    # (1) overlap 1, union 7, hull 9: GIoU = 1/7 - 2/9; (2) disjoint, union 2, hull 9: GIoU = -7/9;
    # (3) corners given in the wrong order span the box of (1); L1 still sees the raw corners; (4) identical.
    expected_giou = torch.tensor([1 / 7 - 2 / 9, -7 / 9, 1 / 7 - 2 / 9, 1.0])
    assert torch.allclose(giou, 1 - expected_giou, atol=1e-5)
    assert torch.allclose(l1, torch.tensor([1.0, 2.0, 2.0, 0.0]))
    assert ordered_boxes(pred)[2].tolist() == [0.0, 0.0, 2.0, 2.0]


def test_heads_total_is_the_weighted_sum_of_term_means_split_over_samples():
    torch.manual_seed(0)
    cfg = LocationHeadConfig(trigger_token_id=7, slot_token_id=8, l1_weight=2.0, giou_weight=0.8, cycle_weight=0.5)
    heads = LocationHeads(16, cfg)
    ids = torch.tensor([[1, 7, 8, 2, 7, 8], [1, 8, 3, 7, 8, 0]])  # sample 0: two triggers; sample 1: one
    hidden = torch.randn(2, 6, 16)
    trig = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.2, 0.3, 0.4, 0.9], [0.0, 0.0, 1.0, 1.0]])
    slots = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.2, 0.3, 0.4, 0.9], [0.3, 0.3, 0.6, 0.6], [0.0, 0.0, 1.0, 1.0]])
    out = heads.losses(ids, hidden, trig, slots)
    pred = heads.decode(hidden[ids == 7])
    l1, giou = box_loss_terms(pred, trig)
    assert torch.allclose(out.boxes, pred.detach())
    assert torch.isclose(out.losses["box_l1"], l1.mean()) and torch.isclose(out.losses["box_giou"], giou.mean())
    cycle_box = (heads.decode(heads.encode(slots)) - slots).abs().mean()
    cycle_emb = torch.nn.functional.mse_loss(heads.encode(pred), hidden[ids == 7])
    assert torch.isclose(out.losses["cycle_box"], cycle_box) and torch.isclose(out.losses["cycle_emb"], cycle_emb)
    total = 2.0 * l1.mean() + 0.8 * giou.mean() + 0.5 * (cycle_box + cycle_emb)
    assert torch.isclose(out.total, total, atol=1e-6)
    assert out.per_sample.shape == (2,) and torch.isclose(out.per_sample.sum(), total, atol=1e-6)
    out.total.backward()
    assert heads.box_decoder[0].weight.grad is not None and heads.box_encoder[0].weight.grad is not None
    with pytest.raises(ValueError, match="trigger tokens"):
        heads.losses(ids, hidden, trig[:2], slots)


def test_default_weights_are_nextchat_code():
    cfg = LocationHeadConfig(trigger_token_id=1, slot_token_id=2)
    assert (cfg.l1_weight, cfg.giou_weight, cfg.cycle_weight) == (2.0, 0.2, 1.0)


def test_mask_decoder_shapes_and_losses():
    torch.manual_seed(0)
    decoder = MaskDecoder(text_hidden=32, vision_hidden=24, dim=16, max_patches=64)
    logits = decoder(torch.randn(3, 32), torch.randn(3, 64, 24))
    assert logits.shape == (3, 32, 32)
    target = torch.zeros(2, 4, 4)
    target[0, :2, :2] = 1
    perfect = (target * 2 - 1) * 50  # confident and right
    dice, bce = mask_loss_terms(perfect, target)
    assert torch.allclose(dice, torch.zeros(2), atol=1e-4) and torch.allclose(bce, torch.zeros(2), atol=1e-4)
    dice, _ = mask_loss_terms(-perfect, target)  # confident and wrong
    assert dice[0] > 0.75
    with pytest.raises(ValueError, match="square grid"):
        decoder(torch.randn(1, 32), torch.randn(1, 10, 24))


def test_mask_rle_round_trips_and_frames():
    rng = np.random.default_rng(0)
    for shape in [(5, 7), (1, 1), (64, 48)]:
        mask = rng.random(shape) > 0.5
        rle = rle_encode(mask)
        assert sum(rle["counts"]) == mask.size
        assert np.array_equal(decode_mask(rle, *shape), mask)
    full = np.ones((3, 4), dtype=bool)
    assert rle_encode(full)["counts"][0] == 0  # COCO runs start with zeros
    mask = np.zeros((40, 80), dtype=bool)
    mask[10:30, 20:60] = True
    for mode in ("resize", "pad"):
        frame = Frame(80, 40, mode)
        there = mask_to_frame(mask, frame, 32)
        assert there.shape == (32, 32)
        back = mask_from_frame(there, frame)
        assert back.shape == mask.shape and (back == mask).mean() > 0.97


def test_segmentation_records_give_mask_targets_and_a_mask_loss():
    preset = dataclasses.replace(get_preset("tiny"), location_codec="embedding")
    model, processor = build_model(preset)
    heads = model.config.location_head
    model.config.location_head = {**heads, "mask_decoder": True}
    from groundlm.modeling import GroundLMForConditionalGeneration

    model = GroundLMForConditionalGeneration(model.config)
    scene = scene_at("train", 5)
    (record,) = scene_records(scene, "train", 5, ["segmentation"])
    pixels, frame = processor.transform(scene.image)
    enc = processor.encode(record.messages, boxes=[o.box for o in record.objects], frame=frame,
                           masks=[o.mask for o in record.objects])
    enc.pixel_values = pixels
    target = record.objects[record.meta["target"]]
    assert np.array_equal(enc.locations["trigger_masks"][0], mask_to_frame(decode_mask(target.mask, 64, 64), frame, 64))
    batch = processor.pad([enc], side="right")
    assert batch["location_inputs"]["trigger_masks"].shape == (1, 64, 64)
    out = model(**batch)
    assert {"mask_dice", "mask_bce"} <= set(out.location_losses)
    out.loss.backward()
    assert model.location_heads.mask_decoder.hyper[0].weight.grad is not None

"""One record trains every codec: a ShapesWorld grounding record encodes for a tiny model built with each
registered codec, its supervised answer decodes back through the model's own tokenizer to the record's boxes,
and a forward pass gives a finite loss."""

from __future__ import annotations

import math

import pytest
import torch

from groundlm.data.shapes import scene_at, scene_records
from groundlm.geometry import box_iou
from groundlm.location import CODEC_NAMES
from groundlm.presets import build_model, get_preset
from groundlm.processor import IGNORE_INDEX


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_a_grounding_record_trains_and_reads_back_with_every_codec(name):
    torch.set_num_threads(1)  # conftest restores the count
    model, processor = build_model(get_preset("tiny", location_codec=name), seed=0)
    scene = scene_at("train", 5)
    (record,) = scene_records(scene, "train", 5, ["grounding"])
    pixels, frame = processor.transform(scene.image)
    boxes = [o.box for o in record.objects]
    enc = processor.encode(record.messages, boxes=boxes, frame=frame)
    enc.pixel_values = pixels
    batch = processor.pad([enc], side="right")
    with torch.no_grad():
        loss = model(**batch).loss
    assert math.isfinite(float(loss))
    if processor.codec.has_heads:
        return  # its boxes live in the heads' inputs, not in the text (test_location_training.py trains them)
    answer = processor.decode([t for t, y in zip(enc.input_ids, enc.labels, strict=True) if y != IGNORE_INDEX])
    read = [o.box for o in processor.parse(answer, frame)]
    slots = [o for o in record.messages if o.role == "assistant"][0].content.count("<box:")
    assert len(read) == slots > 0, answer
    # every box read back lies on one of the record's objects (within the format's grid)
    for box in read:
        assert max(box_iou(box, b) for b in boxes) >= 0.5, (answer, box)

"""The `merge2x2` connector and region marks (modeling/connector.py, modeling/marks.py, the processor's marks)."""

from __future__ import annotations

import torch

from groundlm.modeling.connector import merge_blocks, merged_centres
from groundlm.modeling.marks import RegionMark, mark_map
from groundlm.presets import build_model, get_preset

from .test_modeling import images, make_config, make_model


def test_merge2x2_puts_each_2x2_block_of_the_grid_in_one_token():
    x = torch.arange(16.0).reshape(1, 16, 1)  # a 4 x 4 grid numbered in reading order
    assert merge_blocks(x)[0].tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]


def test_merge2x2_token_centres_are_the_blocks_centres():
    centres = (torch.arange(4) + 0.5) / 4
    ys, xs = torch.meshgrid(centres, centres, indexing="ij")
    points = torch.stack([xs.flatten(), ys.flatten()], dim=-1)
    assert merged_centres("merge2x2", points).tolist() == [[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75]]


def test_merge2x2_model_has_a_quarter_of_the_patches_as_image_tokens():
    config = make_config("merge2x2")  # 28 px / 7 px: a 4 x 4 grid
    assert config.num_image_tokens == 4
    model = make_model("merge2x2")
    assert model.get_image_features(images(2)).shape == (2, 4, config.text_config.hidden_size)


def test_mark_map_is_the_share_of_each_patch_the_box_covers():
    marks = mark_map([(0.5, 0.25, 1.0, 0.625)], grid=4).reshape(4, 4)  # x 2..4 patches, y 1..2.5 patches
    assert marks[:, :2].abs().sum() == 0
    assert marks[1, 2:].tolist() == [1.0, 1.0] and marks[2, 2:].tolist() == [0.5, 0.5]
    assert marks[0].abs().sum() == 0 and marks[3].abs().sum() == 0


def test_region_mark_changes_only_the_marked_patches():
    mark = RegionMark(8)
    features = torch.randn(1, 4, 8)
    marks = torch.tensor([[0.0, 1.0, 0.0, 0.5]])
    out = mark(features, marks)
    assert torch.equal(out[0, 0], features[0, 0]) and torch.equal(out[0, 2], features[0, 2])
    assert torch.allclose(out[0, 1] - features[0, 1], mark.vector.detach())
    assert torch.allclose(out[0, 3] - features[0, 3], 0.5 * mark.vector.detach())


def _shapes_processor_and_model(**overrides):
    return build_model(get_preset("tiny", region_marks=True, **overrides))


def test_processor_marks_the_boxes_of_user_turns_only():
    model, processor = _shapes_processor_and_model()
    from PIL import Image

    image = Image.new("RGB", (64, 32))
    boxes = [[0, 0, 32, 16], [32, 16, 64, 32]]
    messages = [
        {"role": "user", "content": "[identify] what is <box:0>"},
        {"role": "assistant", "content": "it is at <box:1>"},
    ]
    pixel_values, frame = processor.transform(image)
    encoded = processor.encode(messages, boxes=boxes, frame=frame, image=True)
    grid = processor.config.mark_grid
    marks = encoded.marks.reshape(grid, grid)
    half = grid // 2
    assert marks[:half, :half].min() == 1.0  # box 0: the top-left quarter of the resized frame
    assert marks[half:].abs().sum() == 0 and marks[:, half:].abs().sum() == 0  # box 1 is the answer's, unmarked
    encoded.pixel_values = pixel_values
    plain = processor.encode([{"role": "user", "content": "[caption] describe"}], frame=frame, add_generation_prompt=True)
    plain.pixel_values = pixel_values
    batch = processor.pad([encoded, plain], side="right")
    assert batch["image_marks"].shape == (2, grid * grid)
    assert batch["image_marks"][1].abs().sum() == 0


def test_a_marked_prompt_changes_the_model_output_through_the_marks_alone():
    model, processor = _shapes_processor_and_model()
    from PIL import Image

    image = Image.new("RGB", (64, 64), (200, 30, 30))
    pixel_values, frame = processor.transform(image)
    enc = processor.encode([{"role": "user", "content": "[identify] what is <box:0>"}], boxes=[[0, 0, 32, 32]],
                           frame=frame, add_generation_prompt=True)
    enc.pixel_values = pixel_values
    batch = processor.pad([enc], side="left")
    del batch["labels"]
    with torch.no_grad():
        marked = model(**batch).logits[0, -1]
        batch["image_marks"] = torch.zeros_like(batch["image_marks"])
        unmarked = model(**batch).logits[0, -1]
    assert not torch.allclose(marked, unmarked)


def test_packed_rows_carry_each_images_marks_in_the_image_tokens_order():
    from PIL import Image

    from groundlm.train.packing import pack

    model, processor = _shapes_processor_and_model()
    pixel_values, frame = processor.transform(Image.new("RGB", (64, 64)))
    samples = []
    for box in ([0, 0, 16, 16], [48, 48, 64, 64]):
        messages = [{"role": "user", "content": "[identify] what is <box:0>"}, {"role": "assistant", "content": "red"}]
        enc = processor.encode(messages, boxes=[box], frame=frame)
        enc.pixel_values = pixel_values
        samples.append(enc)
    packed = pack(samples, processor.tokenizer.pad_token_id, row_tokens=200)  # both samples in one row
    assert packed.batch["image_marks"].shape == (2, processor.config.mark_grid**2)
    order = [i for i in packed.owner[0].unique_consecutive().tolist() if i >= 0]
    assert all(torch.equal(packed.batch["image_marks"][k], samples[i].marks) for k, i in enumerate(order))

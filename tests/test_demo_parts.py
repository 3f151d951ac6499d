"""The demo's pretrained parts (demo/parts.py) and the text-only ShapesWorld source they are trained on."""

from __future__ import annotations

import json
import re

import pytest
import torch

from groundlm.data.shapes import ShapesConfig, scene_at, scene_records
from groundlm.data.shapes.symbolic import SCENE_OPEN, with_scene
from groundlm.demo.parts import PARTS, SHIPPED, pretrain, save_part
from groundlm.presets import ModelSpec, build_model
from groundlm.train.recipe import ShapesSpec
from groundlm.train.schema import expand
from groundlm.train.sources import ShapesSource


def test_with_scene_lists_every_object_with_its_box_slot_and_drops_the_image():
    config = ShapesConfig(image_size=64)
    record = scene_records(scene_at("train", 3, config), "train", 3, ["refer"], config=config)[0]
    text = with_scene(record, seed=7)
    first = text.messages[0].content
    assert text.image is None and first.startswith(SCENE_OPEN) and first.endswith(record.messages[0].content)
    listed = re.findall(r"<p>([^<]+)</p><box:(\d+)>", first)
    assert sorted(int(i) for _, i in listed) == list(range(len(record.objects)))
    assert all(record.objects[int(i)].label == label for label, i in listed)
    assert with_scene(record, seed=7) == text  # the shuffled order is the seed's


def test_a_symbolic_shapes_source_gives_text_only_samples_with_the_boxes_written_by_the_codec():
    _, processor = build_model("tiny")
    source = ShapesSource(ShapesSpec(tasks=["identify"], scenes=10, symbolic=True, config={"image_size": 64}), processor)
    sample = source[2]
    assert sample.pixel_values is None and processor.image_token_id not in sample.input_ids
    text = processor.tokenizer.decode(sample.input_ids)
    # every object of the scene is listed with its box: 1 + one per object in the prompt's `{...}` groups
    scene = scene_at("train", 2, source.config)
    assert text.count("{") == len(scene.objects) + 1  # + the box the identify question points at


def test_saved_parts_load_through_the_pretrained_parts_path(tmp_path):
    model, _ = build_model("demo")
    model.save_pretrained(tmp_path / "model")
    _.save_pretrained(tmp_path / "model")
    tower = save_part("tower", tmp_path / "model", tmp_path / "tower")
    language = save_part("language", tmp_path / "model", tmp_path / "language")
    assert json.loads((tower / "preprocessor_config.json").read_text())["crop_size"]["height"] == 64
    spec = ModelSpec(
        vision_tower=str(tower), language_model=str(language), connector="merge2x2", vision_feature_layer=-1,
        vision_feature_norm=True, image_position_embedding="sincos2d", region_marks=True,
    )
    built, processor = build_model(spec)
    # the parts keep their weights (saved in bf16); the connector, norm and mark are new
    for mine, theirs in ((built.vision_tower, model.vision_tower), (built.language_model, model.language_model)):
        loaded, original = mine.state_dict(), theirs.state_dict()
        assert loaded.keys() == original.keys()
        assert all(torch.equal(loaded[k], original[k].to(torch.bfloat16).float()) for k in loaded)
    assert processor.tokenizer.get_vocab() == _.tokenizer.get_vocab()
    assert built.region_mark is not None and processor.config.mark_grid == 8


def test_a_package_path_in_a_recipe_points_inside_the_installed_package():
    assert expand("groundlm:demo/parts/x") == str(SHIPPED / "x")


@pytest.mark.parametrize("name", sorted(PARTS))
def test_pretrain_writes_the_part_in_small_shards_and_the_same_seed_writes_the_same_bytes(tmp_path, name):
    summary = pretrain(name, tmp_path / "a", steps=2, progress=False)
    part = tmp_path / "a" / "part"
    assert summary["steps"] == 2 and json.loads((part / "pretrain.json").read_text()) == summary
    assert (part / "config.json").is_file()
    # an earlier save's weights must not survive (the files and bytes are compared with a fresh run below)
    (part / "model.safetensors").write_bytes(b"stale")
    again = pretrain(name, tmp_path / "a", steps=2, progress=False)  # the finished run is resumed, not retrained
    assert again == summary
    pretrain(name, tmp_path / "b", steps=2, progress=False)
    files = sorted(f.name for f in part.iterdir())
    assert files == sorted(f.name for f in (tmp_path / "b" / "part").iterdir())
    assert sum(".safetensors" in n for n in files) >= 1
    for n in files:
        assert (part / n).read_bytes() == (tmp_path / "b" / "part" / n).read_bytes(), n
    # the package ships the part: every file stays under the repository's 4 MB per tracked file
    assert all((part / n).stat().st_size < 4_000_000 for n in files)

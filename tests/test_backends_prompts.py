"""The prompt each groundlm task becomes in each family: the family's published prompt strings, tokenised in
exactly the layout of the family's own transformers processor (where that processor runs here: PaliGemma,
Florence-2 and Kosmos-2; Qwen2.5-VL's processor needs torchvision for its video half, so its prompt is checked
against its chat template and image processor directly)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer

import groundlm
from groundlm.backends import read_task
from tests.backend_models import build_family

IMAGE = Image.new("RGB", (120, 80), (200, 30, 30))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("prompts")
    out = {}
    for family in ("paligemma", "florence2", "kosmos2", "qwen2_5_vl"):
        path = build_family(family, root / family)
        out[family] = (path, groundlm.load(path))
    return out


def encode(lm, text, boxes=()):
    return lm.processor.prompt(IMAGE, [{"role": "user", "content": text}], boxes)


def test_read_task_finds_the_subject_inside_groundlm_instruction_wordings():
    assert read_task("[refer] give me the location of the red cat").subject == "the red cat"
    assert read_task("[refer] find the dog in the image").subject == "the dog"
    assert read_task("[vqa] Based on the image, respond to this question with a short answer: why?").subject == "why?"
    assert read_task("[detection] circles").subject == "circles"
    assert read_task("[caption] please describe this image?").subject == ""
    asked = read_task("<OD>")
    assert asked.task is None and asked.words == "<OD>"


@pytest.mark.parametrize(("text", "published"), [
    ("[refer] give me the location of the red circle", "detect the red circle"),
    ("[detection] circles", "detect circles"),
    ("[caption] please describe this image?", "caption en"),
    ("[vqa] what colour is it?", "answer en what colour is it?"),
    ("segment the red circle", "segment the red circle"),
])
def test_paligemma_prompts_equal_its_processor_layout(built, text, published):
    path, lm = built["paligemma"]
    enc = encode(lm, text)
    theirs = AutoProcessor.from_pretrained(path)(images=[IMAGE], text=[published], return_tensors="pt")
    assert enc.input_ids == theirs["input_ids"][0].tolist()
    batch = lm.processor.pad([enc])
    assert torch.equal(batch["token_type_ids"], theirs["token_type_ids"])
    assert torch.allclose(enc.pixel_values, theirs["pixel_values"][0])


@pytest.mark.parametrize(("text", "task_token", "instruction"), [
    ("[refer] give me the location of the red circle", "<CAPTION_TO_PHRASE_GROUNDING>the red circle",
     "Locate the phrases in the caption: the red circle"),
    ("[detection]", "<OD>", "Locate the objects with category name in the image."),
    ("[detection] circles", "<OPEN_VOCABULARY_DETECTION>circles", "Locate circles in the image."),
    ("[grounding] describe this image in detail", "<DENSE_REGION_CAPTION>",
     "Locate the objects in the image, with their descriptions."),
    ("[caption] please describe this image?", "<CAPTION>", "What does the image describe?"),
    ("<REFERRING_EXPRESSION_SEGMENTATION>the cat", "<REFERRING_EXPRESSION_SEGMENTATION>the cat",
     "Locate the cat in the image with mask"),
])
def test_florence2_prompts_equal_its_processor_layout(built, text, task_token, instruction):
    path, lm = built["florence2"]
    enc = encode(lm, text)
    theirs = AutoProcessor.from_pretrained(path)(images=[IMAGE], text=[task_token], return_tensors="pt")
    assert enc.input_ids == theirs["input_ids"][0].tolist()
    assert lm.processor.tokenizer.decode(enc.input_ids).endswith(f"<s>{instruction}</s>")


def test_florence2_identify_writes_the_box_as_location_tokens(built):
    _, lm = built["florence2"]
    enc = encode(lm, "[identify] what is this <box:0>", boxes=[[30, 20, 90, 60]])
    assert lm.processor.tokenizer.decode(enc.input_ids).endswith(
        "<s>What does the region <loc_250><loc_250><loc_750><loc_750> describe?</s>")


@pytest.mark.parametrize(("text", "published"), [
    ("[refer] give me the location of the red circle", "<grounding><phrase> the red circle</phrase>"),
    ("[grounding] describe this image in detail", "<grounding> An image of"),
    ("[caption] please describe this image?", "An image of"),
    ("[vqa] what colour is it?", "Question: what colour is it? Answer:"),
])
def test_kosmos2_prompts_equal_its_processor_layout(built, text, published):
    path, lm = built["kosmos2"]
    enc = encode(lm, text)
    theirs = AutoProcessor.from_pretrained(path)(images=[IMAGE], text=[published], num_image_tokens=4,
                                                 return_tensors="pt")
    assert enc.input_ids == theirs["input_ids"][0].tolist()
    batch = lm.processor.pad([enc])
    assert torch.equal(batch["image_embeds_position_mask"], theirs["image_embeds_position_mask"].long())


def test_kosmos2_identify_points_at_the_box_with_patch_indices(built):
    _, lm = built["kosmos2"]
    enc = encode(lm, "[identify] what is this <box:0>", boxes=[[30, 20, 90, 60]])
    text = lm.processor.tokenizer.decode(enc.input_ids[7:])
    assert text == "<grounding><phrase> It</phrase><object><patch_index_0264><patch_index_0759></object> is"


def test_qwen2_5_vl_prompt_is_its_chat_template_with_the_json_grounding_request(built):
    path, lm = built["qwen2_5_vl"]
    enc = encode(lm, "[refer] give me the location of the red circle")
    request = ('Locate every object that matches the description "the red circle" in the image. '
               "Report bbox coordinates in JSON format.")
    # 120 x 80 → 112 x 84 input → 8 x 6 patches of 14 → 12 image tokens after the 2 x 2 merge
    expected = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
                + "<|image_pad|>" * 12 + f"<|vision_end|>{request}<|im_end|>\n<|im_start|>assistant\n")
    assert enc.input_ids == AutoTokenizer.from_pretrained(path)(expected, add_special_tokens=False)["input_ids"]
    theirs = AutoImageProcessor.from_pretrained(path)(images=[IMAGE], return_tensors="pt")
    assert torch.equal(enc.pixel_values, theirs["pixel_values"])
    assert lm.processor.pad([enc])["image_grid_thw"].tolist() == theirs["image_grid_thw"].tolist() == [[1, 6, 8]]


def test_qwen2_5_vl_writes_a_pointed_box_in_input_pixels(built):
    _, lm = built["qwen2_5_vl"]
    enc = encode(lm, "[identify] what is this <box:0>", boxes=[[30, 20, 90, 60]])
    assert "what is this [28, 21, 84, 63]<|im_end|>" in lm.processor.tokenizer.decode(enc.input_ids)

"""`groundlm export --format llava-hf`: transformers loads the directory and computes groundlm's logits from
groundlm's pixels, prompt ids and prompt string; what LLaVA cannot express is refused with the reason."""

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoProcessor,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
    SiglipVisionConfig,
)
from typer.testing import CliRunner

from groundlm.cli import app
from groundlm.export import ExportRefused, export_llava_hf, to_llava
from groundlm.export.chat_template import jinja_chat_template
from groundlm.export.image_processor import pad_fill, pad_fill_of, pad_scale
from groundlm.images import CLIP_MEAN
from groundlm.modeling import GroundLMForConditionalGeneration
from groundlm.presets import ModelSpec, build_model
from groundlm.processor import IGNORE_INDEX
from groundlm.templates import TEMPLATES

LLAVA_LIKE = ModelSpec(connector="mlp2x_gelu", template="llava_v1", frame="pad")
PROMPTS = ("[refer] the red circle", "[caption]")


@pytest.fixture(scope="module")
def pair():
    torch.set_num_threads(1)
    model, processor = build_model(LLAVA_LIKE, seed=3)
    return model, processor, to_llava(model)


def _image(width: int, height: int, seed: int = 0) -> Image.Image:
    """A noisy non-square image: every pixel of the resize and the letterbox band matters."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _batch(processor):
    encs = [
        processor.prompt(Image.new("RGB", (40, 30), c), [{"role": "user", "content": p}])
        for c, p in zip([(255, 0, 0), (0, 0, 255)], PROMPTS, strict=True)
    ]
    batch = processor.pad(encs, side="left")
    assert (batch.pop("labels") == IGNORE_INDEX).all()
    return batch


def _siglip(model: GroundLMForConditionalGeneration, seed: int = 4) -> GroundLMForConditionalGeneration:
    """The same model with a SigLIP tower of the same size (no CLS token: as many image tokens as patches)."""
    config = copy.deepcopy(model.config)
    v = config.vision_config
    config.vision_config = SiglipVisionConfig(
        hidden_size=v.hidden_size,
        intermediate_size=v.intermediate_size,
        num_hidden_layers=v.num_hidden_layers,
        num_attention_heads=v.num_attention_heads,
        image_size=v.image_size,
        patch_size=v.patch_size,
    )
    torch.manual_seed(seed)
    return GroundLMForConditionalGeneration(config).eval()


# ---- the in-memory model (the benchmarks' baseline) ------------------------------------------------------------
def test_exported_llava_computes_the_same_logits(pair):
    model, processor, llava = pair
    batch = _batch(processor)
    with torch.no_grad():
        ours = model(**batch).logits
        theirs = llava(**batch).logits
    assert (ours - theirs).abs().max().item() <= 1e-5


def test_exported_llava_generates_the_same_tokens(pair):
    model, processor, llava = pair
    batch = _batch(processor)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=processor.tokenizer.pad_token_id)
    assert torch.equal(model.generate(**batch, **kw), llava.generate(**batch, **kw))


# ---- the directory, end to end through transformers' own processor --------------------------------------------
@pytest.mark.parametrize("tower, frame", [("clip", "resize"), ("clip", "pad"), ("siglip", "pad")])
def test_export_directory_gives_groundlms_ids_pixels_and_logits(tower, frame, tmp_path):
    torch.set_num_threads(1)
    model, processor = build_model(dataclasses.replace(LLAVA_LIKE, frame=frame), seed=3)
    if tower == "siglip":
        model = _siglip(model)
    export_llava_hf(model, processor, tmp_path)
    llava, info = LlavaForConditionalGeneration.from_pretrained(
        tmp_path, local_files_only=True, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    hf = AutoProcessor.from_pretrained(tmp_path, local_files_only=True)
    image = _image(47, 30)
    ours = processor.prompt(image, [{"role": "user", "content": PROMPTS[0]}])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPTS[0]}]}]
    text = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    theirs = hf(text=text, images=image, return_tensors="pt")
    assert theirs["input_ids"][0].tolist() == ours.input_ids  # same string, same <image> expansion
    assert (theirs["pixel_values"][0] - ours.pixel_values).abs().max().item() <= 1e-6
    batch = processor.pad([ours], side="left")
    batch.pop("labels")
    with torch.no_grad():
        expected = model(**batch).logits
        got = llava(**theirs).logits
    assert (expected - got).abs().max().item() <= 1e-5


def test_a_siglip_tower_exports_strategy_full_so_no_patch_is_dropped(pair, tmp_path):
    model, processor, _ = pair
    siglip = _siglip(model)
    assert (
        siglip.config.vision_feature_select_strategy == "default"
    )  # groundlm keeps every SigLIP patch anyway
    export_llava_hf(siglip, processor, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["vision_feature_select_strategy"] == "full"
    assert json.loads((tmp_path / "processor_config.json").read_text())["num_additional_image_tokens"] == 0
    # and the CLIP model keeps its CLS-dropping "default"
    export_llava_hf(model, processor, tmp_path / "clip")
    assert (
        json.loads((tmp_path / "clip" / "config.json").read_text())["vision_feature_select_strategy"]
        == "default"
    )


def test_export_writes_the_hub_key_layout_vllm_reads(pair, tmp_path):
    from safetensors import safe_open

    model, processor, _ = pair
    export_llava_hf(model, processor, tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    prefixes = {k.split(".")[0] + "." + k.split(".")[1] for k in keys}
    assert prefixes == {
        "vision_tower.vision_model",
        "multi_modal_projector.linear_1",
        "multi_modal_projector.linear_2",
        "language_model.model",
        "language_model.lm_head",
    }
    assert "vision_tower.vision_model.embeddings.patch_embedding.weight" in keys
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"]
    assert config["image_token_index"] == processor.image_token_id
    generation = json.loads((tmp_path / "generation_config.json").read_text())
    assert generation["eos_token_id"] == processor.stop_token_id  # a server stops where groundlm does


@pytest.mark.parametrize("frame", ["resize", "pad"])
@pytest.mark.parametrize("size", [(47, 30), (30, 47)])
def test_exported_preprocessor_gives_groundlms_pixels_for_a_non_square_image(frame, size, tmp_path):
    _, processor = build_model(dataclasses.replace(LLAVA_LIKE, frame=frame), seed=0)
    model, _ = build_model(dataclasses.replace(LLAVA_LIKE, frame=frame), seed=0)
    export_llava_hf(model, processor, tmp_path)
    image = _image(*size, seed=1)
    theirs = AutoProcessor.from_pretrained(tmp_path, local_files_only=True).image_processor(
        image, return_tensors="pt"
    )["pixel_values"][0]
    ours, _ = processor.image(image)
    assert theirs.shape == ours.shape
    assert (theirs - ours).abs().max().item() <= 1e-6


def test_the_pad_constants_give_groundlms_rounded_fill_and_an_impossible_mean_is_refused():
    scale = pad_scale(CLIP_MEAN)
    assert pad_fill_of(tuple(m * scale for m in CLIP_MEAN)) == pad_fill(CLIP_MEAN) == (123, 117, 104)
    assert pad_fill_of(CLIP_MEAN) == (122, 116, 104)  # what the plain mean would give: the reason for scale
    # 200.4 rounds down, 100.6 up: no one factor moves both truncations onto the rounded values
    with pytest.raises(ValueError, match="frame 'pad' cannot be exported.*int\\(mean \\* 255\\)"):
        pad_scale((200.4 / 255, 100.6 / 255, 0.4))


# ---- the chat template -------------------------------------------------------------------------------------------
CONVERSATIONS = {
    "one turn": [{"role": "user", "content": "[vqa] what colour is the circle?"}],
    "system": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "[caption]"}],
    "empty system": [{"role": "system", "content": ""}, {"role": "user", "content": "[caption]"}],
    "two turns": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "[refer] the red circle"},
        {"role": "assistant", "content": "{<10><20><30><40>}"},
        {"role": "user", "content": "[vqa] and its shape?"},
    ],
}


def _parts(messages: list[dict], image: bool) -> list[dict]:
    """The OpenAI-style form a server passes: content parts, the image part in the last user message."""
    out = []
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    for i, m in enumerate(messages):
        parts = [{"type": "text", "text": m["content"]}]
        if image and i == last_user:
            parts.insert(0, {"type": "image"})
        out.append({"role": m["role"], "content": parts})
    return out


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    )


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("conversation", sorted(CONVERSATIONS))
@pytest.mark.parametrize("image", [True, False])
def test_chat_template_renders_groundlms_prompt(name, conversation, image, tokenizer):
    template = TEMPLATES[name]
    messages = CONVERSATIONS[conversation]
    if template.single_turn and conversation == "two turns":
        pytest.skip("a single-turn template refuses a second turn (tested below)")
    jinja = jinja_chat_template(template)
    expected = template.prompt(messages, image=image)
    for form in (messages, _parts(messages, image)):
        if form is messages and image:
            continue  # string content carries no image
        got = tokenizer.apply_chat_template(
            form, chat_template=jinja, add_generation_prompt=True, tokenize=False
        )
        assert got == expected


def test_chat_template_joins_text_parts_and_reads_a_developer_message_as_system(tokenizer):
    template = TEMPLATES["llava_v1"]
    jinja = jinja_chat_template(template)
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": [
        {"type": "text", "text": "[refer]"}, {"type": "image_url", "image_url": {"url": "x"}},
        {"type": "text", "text": ""}, {"type": "text", "text": "the red circle"}]}]  # fmt: skip
    got = tokenizer.apply_chat_template(
        messages, chat_template=jinja, add_generation_prompt=True, tokenize=False
    )
    expected = template.prompt(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "[refer] the red circle"}]
    )
    assert got == expected == "<s>Be brief. USER: <image>\n[refer] the red circle ASSISTANT:"


@pytest.mark.parametrize("name, messages, says", [
    ("llava_v1", [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "hi"}]}],
     "2 images"),
    ("plain", CONVERSATIONS["two turns"], "renders one turn only"),
    ("llava_v1", [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], "expected assistant"),
    ("llava_v1", [{"role": "user", "content": "a <image> b"}], "image placeholder"),
    ("llava_v1", [{"role": "user", "content": "a"}, {"role": "assistant", "content": " "},
                  {"role": "user", "content": "b"}], "empty assistant answer"),
])  # fmt: skip
def test_chat_template_refuses_what_groundlm_refuses(name, messages, says, tokenizer):
    jinja = jinja_chat_template(TEMPLATES[name])
    with pytest.raises(Exception, match=says):
        tokenizer.apply_chat_template(
            messages, chat_template=jinja, add_generation_prompt=True, tokenize=False
        )


# ---- refusals ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, says", [
    ({"connector": "concat4"}, "connector 'concat4'"),
    ({"connector": "linear"}, "connector 'linear'"),
    ({"image_position_embedding": "sincos2d"}, "image_position_embedding 'sincos2d'"),
    ({"vision_feature_norm": True}, "vision_feature_norm"),
    ({"location_codec": "embedding"}, "location heads"),
    ({"region_marks": True}, "region_marks"),
])  # fmt: skip
def test_models_llava_cannot_express_are_refused_with_the_reason(overrides, says, tmp_path):
    model, processor = build_model(dataclasses.replace(LLAVA_LIKE, **overrides))
    with pytest.raises(ExportRefused, match=says):
        export_llava_hf(model, processor, tmp_path / "out")
    with pytest.raises(ExportRefused, match=says):
        to_llava(model)
    assert not (tmp_path / "out").exists()


def test_a_qformer_connector_and_a_vit_tower_are_refused_with_the_reason():
    from groundlm.modeling import GroundLMConfig

    model, _ = build_model(LLAVA_LIKE)
    config = model.config.to_dict()
    for changes, says in (
        ({"connector": "qformer"}, "connector 'qformer'"),
        ({"vision_config": {**config["vision_config"], "model_type": "vit"}}, "tower 'vit'"),
    ):
        fields = {
            k: v for k, v in {**config, **changes}.items() if k not in ("model_type", "transformers_version")
        }
        with pytest.raises(ExportRefused, match=says):
            to_llava(GroundLMForConditionalGeneration(GroundLMConfig(**fields)))


def test_location_tokens_export_as_plain_vocabulary():
    model, processor = build_model(dataclasses.replace(LLAVA_LIKE, location_codec="tokens"), seed=3)
    batch = _batch(processor)
    with torch.no_grad():
        assert (model(**batch).logits - to_llava(model)(**batch).logits).abs().max().item() <= 1e-5


# ---- the command -----------------------------------------------------------------------------------------------------
def test_export_command_writes_a_llava_hf_directory_with_the_same_logits(pair, tmp_path):
    model, processor, _ = pair
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    result = CliRunner().invoke(
        app, ["export", str(tmp_path / "model"), str(tmp_path / "llava"), "--format", "llava-hf"]
    )
    assert result.exit_code == 0, result.output
    again = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava", local_files_only=True)
    batch = _batch(processor)
    with torch.no_grad():
        assert (again(**batch).logits - model(**batch).logits).abs().max().item() <= 1e-5
    for name in (
        "preprocessor_config.json",
        "processor_config.json",
        "chat_template.jinja",
        "tokenizer.json",
    ):
        assert (tmp_path / "llava" / name).is_file(), name


def test_export_command_refuses_a_model_llava_cannot_express_and_an_unknown_format(tmp_path):
    model, processor = build_model("tiny")  # concat4 connector
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    result = CliRunner().invoke(app, ["export", str(tmp_path / "model"), str(tmp_path / "llava")])
    assert result.exit_code == 1
    assert "connector 'concat4'" in result.output and "mlp2x_gelu" in result.output
    assert not (tmp_path / "llava").exists() or not any((tmp_path / "llava").iterdir())
    result = CliRunner().invoke(
        app, ["export", str(tmp_path / "model"), str(tmp_path / "x"), "--format", "gguf"]
    )
    assert result.exit_code == 1 and "unknown export format 'gguf'; choose one of llava-hf" in result.output


def test_export_command_refuses_a_file_or_a_non_empty_directory_as_out(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    for out, says in (
        (tmp_path / "file", "is a file; a model is a directory"),
        (tmp_path / "full", "not empty"),
    ):
        result = CliRunner().invoke(app, ["export", str(tmp_path / "no-model"), str(out)])
        assert result.exit_code == 1 and says in result.output, result.output
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"  # nothing lost

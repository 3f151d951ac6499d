"""Every shipped recipe with every location codec: a dry run of one step per stage on ShapesWorld, or the clear
error of a combination that cannot work; the frame check of recipes; a codec's tokens on a pretrained-style
tokenizer (single ids, and its example text survives tokenise → decode → parse)."""

from __future__ import annotations

import math
import warnings
from types import SimpleNamespace

import pytest
import torch
import yaml
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from groundlm.location import CODEC_NAMES, add_location_tokens, make_codec
from groundlm.train import RecipeError, dry_run, loop, shipped_recipes, train
from groundlm.train.monitor import read_metrics
from groundlm.train.recipe import FrameWarning, from_dict, recipe_path

from .train_helpers import one_thread, tiny_recipe  # noqa: F401 (fixture)

# What the matrix expects, stated here rather than derived from the code under test.
HEADS_RECIPES = {"nextchat", "llava_grounding"}  # their model sets location_head (box encoder / decoder)
SINCOS_RECIPES = {"shapes-tower", "shapes-language"}  # their preset (demo) starts coordinate tokens from the sincos code
HEADS_CODECS = {"embedding"}
COORDINATE_TOKEN_CODECS = {"text", "tokens", "florence2", "paligemma"}


def _settings(name: str) -> SimpleNamespace:
    return SimpleNamespace(location_codec=name, location_bins=100, image_size=1000)


def test_the_expectation_tables_match_the_codecs():
    for name in CODEC_NAMES:
        codec = make_codec(_settings(name))
        assert codec.has_heads == (name in HEADS_CODECS)
        assert (codec.coordinate_tokens() is not None) == (name in COORDINATE_TOKEN_CODECS)


def _recipe_data(recipe: str, codec: str) -> dict:
    data = yaml.safe_load(recipe_path(recipe).read_text())
    data["model"] = {**data["model"], "location_codec": codec}
    return data


@pytest.mark.parametrize("codec", CODEC_NAMES)
@pytest.mark.parametrize("recipe", shipped_recipes())
def test_every_shipped_recipe_dry_runs_with_every_codec(recipe, codec, tmp_path, monkeypatch, one_thread):  # noqa: F811
    data = _recipe_data(recipe, codec)
    warnings.simplefilter("ignore", FrameWarning)  # checked below where the run goes ahead
    if recipe in HEADS_RECIPES and codec not in HEADS_CODECS:
        with pytest.raises(RecipeError, match=rf"^{recipe}: model\.location_head: needs a location_codec with heads"):
            from_dict(data, recipe)
        return
    if recipe in SINCOS_RECIPES and codec not in COORDINATE_TOKEN_CODECS:
        with pytest.raises(RecipeError, match=rf"^{recipe}: model\.coordinate_init: 'sincos' \(set by preset"):
            from_dict(data, recipe)
        return
    published = make_codec(_settings(codec)).frame
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resolved = dry_run(from_dict(data, recipe), steps=1, scenes=8)
    frame_warnings = [w for w in caught if issubclass(w.category, FrameWarning)]
    frame = data["model"].get("frame", "resize")
    assert bool(frame_warnings) == (published is not None and published != frame)
    # the loss plot is tested by test_train_recipes.py; here it would be most of the time
    monkeypatch.setattr(loop, "draw_run", lambda *a, **k: None)
    train(resolved, tmp_path, progress=False)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["stage"] for r in rows] == [s["name"] for s in data["stages"]]
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert yaml.safe_load((tmp_path / "recipe.yaml").read_text())["model"]["location_codec"] == codec


# ---- the frame check ------------------------------------------------------------------------------------------


def _frame_recipe(codec: str, frame: str) -> dict:
    data = tiny_recipe(1)
    data["model"] = {"preset": "tiny", "location_codec": codec, "frame": frame}
    return data


def test_a_frame_unlike_the_codecs_published_frame_warns_naming_the_field():
    with pytest.warns(FrameWarning, match=r"^r\.yaml: model\.frame: 'pad', but location_codec 'qwen2_5_vl' .*'resize'"):
        from_dict(_frame_recipe("qwen2_5_vl", "pad"), "r.yaml")
    with pytest.warns(FrameWarning, match=r"model\.frame: 'resize', but location_codec 'shikra' .*'pad'"):
        from_dict(_frame_recipe("shikra", "resize"), "r.yaml")


@pytest.mark.parametrize(("codec", "frame"), [("shikra", "pad"), ("ferret", "resize"), ("text", "pad"),
                                              ("tokens", "resize"), ("embedding", "pad")])
def test_the_published_frame_or_a_codec_of_groundlms_own_does_not_warn(codec, frame):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FrameWarning)
        assert from_dict(_frame_recipe(codec, frame), "r.yaml").model.frame == frame


def test_every_published_codec_declares_a_frame_of_the_processor():
    from groundlm.geometry import FRAMES

    for name in CODEC_NAMES:
        frame = make_codec(_settings(name)).frame
        assert (frame is None) == (name in {"text", "tokens", "embedding"}) and (frame is None or frame in FRAMES)


def test_sincos_coordinates_without_coordinate_tokens_is_a_recipe_error_naming_the_field():
    data = tiny_recipe(1)
    data["model"] = {"preset": "tiny", "location_codec": "ferret", "coordinate_init": "sincos"}
    with pytest.raises(RecipeError, match=r"^r\.yaml: model\.coordinate_init: 'sincos' lays a code .* 'ferret'"):
        from_dict(data, "r.yaml")


# ---- a pretrained-style tokenizer gains each codec's tokens ---------------------------------------------------

# Each codec's example: the published string where the reference has one (published_models.md §2), else a
# record rendered by the codec (groundlm's own formats).
EXAMPLES = {
    "text": "<p>a man</p> {<12><30><56><91>}",
    "kosmos2": "<grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863>"
    "</object> warming himself by<phrase> a fire</phrase><object><patch_index_0005><patch_index_0911></object>.",
    "florence2": "car<loc_52><loc_335><loc_998><loc_806>wheel<loc_708><loc_576><loc_865><loc_806>",
    "paligemma": "<loc0256><loc0100><loc0768><loc0900> cat ; <loc0000><loc0010><loc1023><loc0500> dog",
    "qwen_vl": "<ref> Two apples</ref><box>(302,257),(582,671)</box><box>(603,252),(878,642)</box>",
    "qwen2_vl": "<|object_ref_start|>cat<|object_ref_end|><|box_start|>(302,257),(582,671)<|box_end|>",
    "qwen2_5_vl": '```json\n[{"bbox_2d": [139, 768, 315, 954], "label": "small cake"}]\n```',
    "internvl": "<ref>the middle leopard</ref><box>[[302, 257, 582, 671]]</box>",
    "shikra": "Answer: [0.123,0.456,0.789,0.999] .",
    "llava": "the man [0.39, 0.12, 0.59, 0.87]",
    "ferret": "A bounding box: the dog [302, 257, 582, 671]",
    "cogvlm": "a man at the box [[212,498,787,564]]",
}
RENDERED = ("<p>the cat</p><box:0> and <p>two dogs</p><box:1><box:2>",
            [(0.1, 0.2, 0.3, 0.4), (0.5, 0.5, 0.9, 0.7), (0.0, 0.6, 0.2, 1.0)])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A byte-level BPE tokenizer saved and reloaded as a pretrained one (AutoTokenizer, local files only)."""
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["a man and a cat next to two dogs, the small cake. Answer: at the box [[1, 2]] (3,4) {5} 0.678 9"] * 4
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    path = tmp_path_factory.mktemp("pretrained")
    PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>",
                            clean_up_tokenization_spaces=False).save_pretrained(path)
    return path


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_a_pretrained_tokenizer_gains_the_codecs_tokens_and_its_example_survives_decoding(name, pretrained):
    tok = AutoTokenizer.from_pretrained(pretrained, local_files_only=True)
    codec = make_codec(_settings(name))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    before = len(tok)
    added = add_location_tokens(model, tok, codec)
    assert added == codec.added_tokens() and len(tok) == before + len(added)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    for t in codec.added_tokens():
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1, t
    codec.check_tokenizer(tok)
    content, boxes = RENDERED
    texts = [codec.render(content, boxes)] + ([EXAMPLES[name]] if name in EXAMPLES else [])
    for text in texts:
        decoded = tok.decode(tok(text, add_special_tokens=False)["input_ids"], skip_special_tokens=True)
        hook_boxes = boxes if codec.has_heads else ()  # the embedding codec's boxes come from its decoder
        want = codec.parse(text, hook_boxes)
        assert want and codec.parse(decoded, hook_boxes) == want, (text, decoded)

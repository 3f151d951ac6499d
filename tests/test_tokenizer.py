"""The word-level tokenizer for small models."""

from transformers import AutoTokenizer

from groundlm.tokenizer import build_word_tokenizer

COORDS = [f"<{i}>" for i in range(101)]


def _tok():
    return build_word_tokenizer(
        ["the", "red", "circle", "give", "me", "location", "of"],
        tokens=["<p>", "</p>", "<delim>", "{", "}", "[refer]", *COORDS],
        special_tokens=["[INST]", "[/INST]", "<image>", "<Img>", "</Img>", "###"],
    )


def test_location_text_and_template_markers_are_single_tokens():
    tok = _tok()
    text = "<s>[INST] <Img><image></Img> [refer] give me the location of The red circle [/INST] " \
        "<p>red circle</p> {<12><34><56><100>}<delim>{<1><2><3><4>}</s>"
    pieces = tok.convert_tokens_to_ids(tok.tokenize(text))
    assert tok.convert_ids_to_tokens(pieces) == [
        "<s>", "[INST]", "<Img>", "<image>", "</Img>", "[refer]", "give", "me", "the", "location", "of", "the",
        "red", "circle", "[/INST]", "<p>", "red", "circle", "</p>", "{", "<12>", "<34>", "<56>", "<100>", "}",
        "<delim>", "{", "<1>", "<2>", "<3>", "<4>", "}", "</s>",
    ]
    assert tok.unk_token_id not in pieces


def test_unknown_words_map_to_unk_and_specials_are_skipped_on_decode():
    tok = _tok()
    ids = tok("<s>the zebra ###", add_special_tokens=False)["input_ids"]
    assert ids[2] == tok.unk_token_id
    assert tok.decode(ids, skip_special_tokens=True) == "the"


def test_save_and_load_as_a_transformers_tokenizer(tmp_path):
    tok = _tok()
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = "[INST] <image> the red circle {<1><2><3><4>} [/INST]"
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert again.pad_token == "<pad>" and again.padding_side == "left"


def test_decoding_writes_answers_in_minigptv2_spacing():
    tok = _tok()
    text = "<p>red circle</p> {<12><34><56><100>}<delim>{<1><2><3><4>} the <p>circle</p> {<1><2><3><4>}"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    # prose: no space before punctuation, whatever the spacing of the input
    prose = build_word_tokenizer(["is", "the", "circle", "red", "yes", "it"], tokens=[",", "?"])
    ids = prose("is the circle red ? yes , it is", add_special_tokens=False)["input_ids"]
    assert prose.decode(ids) == "is the circle red? yes, it is"

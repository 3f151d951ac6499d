import pytest

from groundlm.records import Message
from groundlm.templates import (
    TEMPLATES,
    VICUNA_V1_SYSTEM,
    ChatTemplate,
    Segment,
    get_template,
)

SYSTEM = "You are a helpful assistant."
Q1, A1 = "[refer] the cat", "{<10><20><30><40>}"
Q2, A2 = "what colour is it?", "black"

TWO_TURNS = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": Q1},
    {"role": "assistant", "content": A1},
    {"role": "user", "content": Q2},
    {"role": "assistant", "content": A2},
]
CAPTION = [
    {"role": "user", "content": "Describe the image."},
    {"role": "assistant", "content": "a black cat on a mat"},
]

# Golden renders: the exact text and the exact segments (target = answer + end token) of each template.
GOLDEN = {
    "llama2": (
        TWO_TURNS,
        [
            Segment(
                "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\n"
                "<Img><image></Img> [refer] the cat [/INST]",
                False,
            ),
            Segment(" {<10><20><30><40>}</s>", True),
            Segment("<s>[INST] what colour is it? [/INST]", False),
            Segment(" black</s>", True),
        ],
        "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\n<Img><image></Img> [refer] the cat [/INST]"
        " {<10><20><30><40>}</s><s>[INST] what colour is it? [/INST] black</s>",
    ),
    "vicuna": (
        TWO_TURNS,
        [
            Segment(
                "<s>You are a helpful assistant.###Human: <Img><image></Img> [refer] the cat ###Assistant:",
                False,
            ),
            Segment(" {<10><20><30><40>}###", True),
            Segment("Human: what colour is it? ###Assistant:", False),
            Segment(" black###", True),
        ],
        "<s>You are a helpful assistant.###Human: <Img><image></Img> [refer] the cat ###Assistant:"
        " {<10><20><30><40>}###Human: what colour is it? ###Assistant: black###",
    ),
    "llava_v1": (
        TWO_TURNS,
        [
            Segment("<s>You are a helpful assistant. USER: <image>\n[refer] the cat ASSISTANT:", False),
            Segment(" {<10><20><30><40>}</s>", True),
            Segment("USER: what colour is it? ASSISTANT:", False),
            Segment(" black</s>", True),
        ],
        "<s>You are a helpful assistant. USER: <image>\n[refer] the cat ASSISTANT: {<10><20><30><40>}</s>"
        "USER: what colour is it? ASSISTANT: black</s>",
    ),
    "chatml": (
        TWO_TURNS,
        [
            Segment(
                "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                "<|im_start|>user\n<image>\n[refer] the cat<|im_end|>\n<|im_start|>assistant\n",
                False,
            ),
            Segment("{<10><20><30><40>}<|im_end|>", True),
            Segment("\n<|im_start|>user\nwhat colour is it?<|im_end|>\n<|im_start|>assistant\n", False),
            Segment("black<|im_end|>", True),
            Segment("\n", False),
        ],
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<image>\n[refer] the cat<|im_end|>\n"
        "<|im_start|>assistant\n{<10><20><30><40>}<|im_end|>\n"
        "<|im_start|>user\nwhat colour is it?<|im_end|>\n"
        "<|im_start|>assistant\nblack<|im_end|>\n",
    ),
    "nextchat": (
        TWO_TURNS,
        [
            Segment(
                "<s>You are a helpful assistant. USER: <im_start><image><im_end> [refer] the cat ASSISTANT:", False
            ),
            Segment(" {<10><20><30><40>}</s>", True),
            Segment("USER: what colour is it? ASSISTANT:", False),
            Segment(" black</s>", True),
        ],
        "<s>You are a helpful assistant. USER: <im_start><image><im_end> [refer] the cat ASSISTANT:"
        " {<10><20><30><40>}</s>USER: what colour is it? ASSISTANT: black</s>",
    ),
    "plain": (
        CAPTION,
        [Segment("<s><image>", False), Segment("a black cat on a mat\n", True)],
        "<s><image>a black cat on a mat\n",
    ),
}

GOLDEN_TARGETS = {
    "llama2": [" {<10><20><30><40>}</s>", " black</s>"],
    "vicuna": [" {<10><20><30><40>}###", " black###"],
    "llava_v1": [" {<10><20><30><40>}</s>", " black</s>"],
    "chatml": ["{<10><20><30><40>}<|im_end|>", "black<|im_end|>"],
    "nextchat": [" {<10><20><30><40>}</s>", " black</s>"],
    "plain": ["a black cat on a mat\n"],
}


def test_exactly_six_templates():
    assert sorted(TEMPLATES) == ["chatml", "llama2", "llava_v1", "nextchat", "plain", "vicuna"]
    assert set(GOLDEN) == set(TEMPLATES)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_render(name):
    messages, segments, text = GOLDEN[name]
    template = get_template(name)
    rendered = template.render(messages)
    assert rendered == segments
    assert ChatTemplate.text(rendered) == text
    assert [s.text for s in rendered if s.target] == GOLDEN_TARGETS[name]
    # Every target ends with the stop string, and the template's special strings all occur in the render.
    assert all(s.text.endswith(template.stop) for s in rendered if s.target)
    assert all(tok in text for tok in template.special_tokens)


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_records_messages_render_like_dicts(name):
    messages = GOLDEN[name][0]
    as_records = [Message(m["role"], m["content"]) for m in messages]
    assert get_template(name).render(as_records) == get_template(name).render(messages)


def test_generation_prompts_golden():
    first = [{"role": "user", "content": Q1}]
    # MiniGPT-v2's evaluation prompt, with our placeholder for <ImageHere>.
    assert get_template("llama2").prompt(first) == "<s>[INST] <Img><image></Img> [refer] the cat [/INST]"
    assert (
        get_template("vicuna").prompt(first)
        == "<s>###Human: <Img><image></Img> [refer] the cat ###Assistant:"
    )
    assert get_template("llava_v1").prompt(first) == "<s>USER: <image>\n[refer] the cat ASSISTANT:"
    # NExT-Chat's vicuna_v1.1 prompt: its system text by default, the image between <im_start> and <im_end>.
    assert get_template("nextchat").prompt(first) == (
        f"<s>{VICUNA_V1_SYSTEM} USER: <im_start><image><im_end> [refer] the cat ASSISTANT:"
    )
    assert get_template("chatml").prompt(first) == (
        "<|im_start|>user\n<image>\n[refer] the cat<|im_end|>\n<|im_start|>assistant\n"
    )
    assert get_template("plain").prompt(first) == "<s><image>"
    assert get_template("llama2").prompt(first, image=False) == "<s>[INST] [refer] the cat [/INST]"
    assert get_template("llama2").prompt(TWO_TURNS[:4]) == (
        "<s>[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\n<Img><image></Img> [refer] the cat [/INST]"
        " {<10><20><30><40>}</s><s>[INST] what colour is it? [/INST]"
    )


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_generation_prompt_is_prefix_of_training_render(name):
    # What the model generates from must be exactly the text before the last answer during training.
    template = get_template(name)
    messages = GOLDEN[name][0]
    segments = template.render(messages)
    last_target = max(i for i, s in enumerate(segments) if s.target)
    prompt_segments = template.render(messages[:-1], add_generation_prompt=True)
    assert prompt_segments == segments[:last_target]
    assert not prompt_segments[-1].target
    assert template.prompt(messages[:-1]) == ChatTemplate.text(segments[:last_target])


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_without_image_and_without_system(name):
    template = get_template(name)
    messages = [m for m in GOLDEN[name][0] if m["role"] != "system"]
    text = ChatTemplate.text(template.render(messages, image=False))
    assert "<image>" not in text and "<Img>" not in text
    assert SYSTEM not in text
    with_image = ChatTemplate.text(template.render(messages))
    assert with_image.count("<image>") == 1


def test_empty_system_is_no_system():
    plain = [{"role": "user", "content": "hi"}]
    empty = [{"role": "system", "content": ""}, *plain]
    for template in TEMPLATES.values():
        assert template.prompt(empty) == template.prompt(plain)
    assert get_template("llava_v1").prompt(plain, image=False) == "<s>USER: hi ASSISTANT:"


def test_llava_system_option():
    messages = [{"role": "system", "content": VICUNA_V1_SYSTEM}, {"role": "user", "content": "hi"}]
    assert (
        get_template("llava_v1").prompt(messages, image=False) == f"<s>{VICUNA_V1_SYSTEM} USER: hi ASSISTANT:"
    )


def test_plain_ignores_user_text_and_system():
    messages = [{"role": "system", "content": SYSTEM}, *CAPTION]
    assert ChatTemplate.text(get_template("plain").render(messages)) == "<s><image>a black cat on a mat\n"


def test_stop_strings():
    assert {n: t.stop for n, t in TEMPLATES.items()} == {
        "llama2": "</s>",
        "vicuna": "###",
        "nextchat": "</s>",
        "llava_v1": "</s>",
        "chatml": "<|im_end|>",
        "plain": "\n",
    }


def _error(messages, match, **kw):
    with pytest.raises(ValueError, match=match):
        get_template("llama2").render(messages, **kw)


def test_errors():
    u = {"role": "user", "content": "q"}
    a = {"role": "assistant", "content": "a"}
    s = {"role": "system", "content": "s"}
    _error([], "empty conversation")
    _error([s], r"messages\[0\].*no user turn")
    _error([u, u], r"messages\[1\] has role 'user' but 'assistant'")
    _error([a], r"messages\[0\] has role 'assistant' but 'user'")
    _error([s, u, a, a], r"messages\[3\] has role 'assistant'")
    _error([u, s, a], r"messages\[1\] is a system message")
    _error([u, a, u], r"messages\[2\] is a user turn; a training render must end with an assistant turn")
    _error([u, a], r"messages\[1\] is an assistant turn; a generation prompt", add_generation_prompt=True)
    _error([u, {"role": "bot", "content": "a"}], r"messages\[1\] has role 'bot'")
    _error([{"role": "user"}], r"messages\[0\] has no role/content")
    _error([{"role": "user", "content": None}, a], r"messages\[0\]\.content must be a string")
    with pytest.raises(ValueError, match=r"messages\[2\] starts a second turn.*'plain'"):
        get_template("plain").render([u, a, u, a])


def test_get_template_unknown_lists_names():
    with pytest.raises(ValueError, match="chatml.*llama2.*llava_v1.*plain.*vicuna"):
        get_template("mistral")


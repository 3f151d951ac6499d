"""Chat templates: a conversation as ordered text segments, each marked as supervised (target) or not.

The label mask is built from this structure: a segment is a target exactly when it is an assistant answer
plus its end token, so nothing has to re-tokenise the rendered string and search for separators (LLaVA's
`preprocess_v1` does that, and its off-by-one mismatches silently zero the loss of whole samples).

The six templates, as rendered for a system message `S`, two turns and an image (`<image>` is the single
placeholder the processor later expands to the image tokens):

    llama2    <s>[INST] <<SYS>>\\nS\\n<</SYS>>\\n\\n<Img><image></Img> q1 [/INST] a1</s><s>[INST] q2 [/INST] a2</s>
    vicuna    <s>S###Human: <Img><image></Img> q1 ###Assistant: a1###Human: q2 ###Assistant: a2###
    llava_v1  <s>S USER: <image>\\nq1 ASSISTANT: a1</s>USER: q2 ASSISTANT: a2</s>
    chatml    <|im_start|>system\\nS<|im_end|>\\n<|im_start|>user\\n<image>\\nq1<|im_end|>\\n
              <|im_start|>assistant\\na1<|im_end|>\\n<|im_start|>user\\nq2<|im_end|>\\n<|im_start|>assistant\\na2<|im_end|>\\n
    plain     <s><image>a1\\n          (one turn; the user text and any system message are ignored)
    nextchat  <s>S USER: <im_start><image><im_end> q1 ASSISTANT: a1</s>USER: q2 ASSISTANT: a2</s>
              (S defaults to the Vicuna system text, as NExT-Chat's `vicuna_v1.1`)

Choices where the references leave room:
- The space between the assistant marker and the answer belongs to the answer (target) segment, so a
  generation prompt ends exactly with the marker (`[/INST]`, `ASSISTANT:`, `###Assistant:`), as MiniGPT-v2's
  and LLaVA's inference prompts do. Sentencepiece and byte-level BPE tokenizers both put that space into the
  first answer token, so training and generation see the same tokens.
- BOS is written as the literal `<s>` (the processor tokenises without adding special tokens). `llama2`
  repeats it before every turn (MiniGPT-v2's multi-turn layout), the others write it once; ChatML has none.
- `vicuna` follows MiniGPT-4: the end token `###` also opens the next turn, so turns after the first start
  with `Human: ` and a system text sits directly before the first `###`. Without a system message the
  conversation starts `<s>###Human: `, as MiniGPT-4's stage-2 training template.
- `llava_v1` has an empty system by default (no leading space then); pass a system message, e.g.
  `VICUNA_V1_SYSTEM`, to reproduce LLaVA-1.5 training prompts.
- `chatml`'s newline after `<|im_end|>` is not supervised; the answer target is `a<|im_end|>`.
- `plain` (LLaVA / MiniGPT-4 stage 1) is BOS + image, then the caption + `\\n` as target.
- An empty system message is the same as none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# LLaVA's vicuna_v1 system prompt (what `--version v1`, the LLaVA-1.5 training setting, uses). Quoted as data.
VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

@dataclass(frozen=True)
class Segment:
    """A piece of rendered conversation; `target` marks text the model is trained to produce."""

    text: str
    target: bool


def _role_content(message: object, index: int) -> tuple[str, str]:
    # Accept records.Message objects and plain {"role", "content"} dicts alike.
    try:
        if isinstance(message, Mapping):
            role, content = message["role"], message["content"]
        else:
            role, content = message.role, message.content  # type: ignore[attr-defined]
    except (KeyError, AttributeError) as err:
        raise ValueError(f"messages[{index}] has no role/content: {message!r}") from err
    if not isinstance(content, str):
        raise ValueError(f"messages[{index}].content must be a string, got {type(content).__name__}")
    return role, content


def _segments_add(segments: list[Segment], text: str, target: bool) -> None:
    # Adjacent pieces with the same flag are merged, so segments alternate between prompt and answer.
    if not text:
        return
    if segments and segments[-1].target == target:
        segments[-1] = Segment(segments[-1].text + text, target)
    else:
        segments.append(Segment(text, target))


@dataclass(frozen=True)
class ChatTemplate:
    """How a conversation is written as text for one family of language models.

    A turn is `user + question + assistant`, then (when answered) `answer_prefix + answer + eos` as the
    target and `turn_end` after it. `first_user`, when set, replaces `user` for the first turn.
    """

    name: str
    bos: str  # written at the start (and before every turn when `bos_every_turn`)
    eos: str  # ends every answer, supervised; generation stops at it
    user: str  # opens a user turn
    assistant: str  # closes a user turn and opens the answer; a generation prompt ends with it
    image_prefix: str  # put before the first user text when the conversation has an image
    first_user: str | None = None
    answer_prefix: str = " "
    turn_end: str = ""
    bos_every_turn: bool = False
    system_format: str = "{}"  # how a non-empty system text is written
    system_in_user: bool = False  # LLaMA-2 puts the <<SYS>> block inside the first [INST]
    default_system: str = ""
    ignore_user_text: bool = False  # stage-1 captioning: the prompt is only the image
    single_turn: bool = False
    special_tokens: tuple[str, ...] = ()  # literal strings a tokenizer must keep whole

    @property
    def stop(self) -> str:
        """The string that ends an answer; generation stops at it."""
        return self.eos

    def _turns(
        self, messages: Sequence, add_generation_prompt: bool
    ) -> tuple[str | None, list[tuple[str, str | None]]]:
        """Validate `messages`; return the system text and (question, answer-or-None) pairs."""
        pairs = [_role_content(m, i) for i, m in enumerate(messages)]
        if not pairs:
            raise ValueError("empty conversation: there are no messages to render")
        system = None
        start = 0
        if pairs[0][0] == "system":
            system, start = pairs[0][1], 1
        if start == len(pairs):
            raise ValueError("messages[0] is a system message but no user turn follows it")
        for i in range(start, len(pairs)):
            role = pairs[i][0]
            if role == "system":
                raise ValueError(f"messages[{i}] is a system message; it may only be the first message")
            expected = "user" if (i - start) % 2 == 0 else "assistant"
            if role != expected:
                raise ValueError(
                    f"messages[{i}] has role {role!r} but {expected!r} was expected "
                    "(after an optional system message, roles alternate user, assistant, ...)"
                )
        last = len(pairs) - 1
        if add_generation_prompt and pairs[last][0] != "user":
            raise ValueError(
                f"messages[{last}] is an assistant turn; a generation prompt must end with a user turn"
            )
        if not add_generation_prompt and pairs[last][0] != "assistant":
            raise ValueError(
                f"messages[{last}] is a user turn; a training render must end with an assistant turn "
                "(use add_generation_prompt=True to build a prompt)"
            )
        turns: list[tuple[str, str | None]] = []
        for i in range(start, len(pairs), 2):
            answer = pairs[i + 1][1] if i + 1 < len(pairs) else None
            turns.append((pairs[i][1], answer))
        if self.single_turn and len(turns) > 1:
            raise ValueError(
                f"messages[{start + 2}] starts a second turn; the {self.name!r} template renders one turn only"
            )
        return system, turns

    def render(
        self, messages: Sequence, *, image: bool = True, add_generation_prompt: bool = False
    ) -> list[Segment]:
        """The conversation as ordered segments; `target` is True exactly for each answer plus its end token.

        `messages` are `records.Message`s or `{"role", "content"}` dicts: an optional system message first,
        then alternating user/assistant turns. With `image`, the single `<image>` placeholder is put before
        the first user text using `image_prefix`. A training render must end with an assistant turn; with
        `add_generation_prompt` the last message is a user turn and the output ends with the assistant marker.
        """
        system, turns = self._turns(messages, add_generation_prompt)
        system = system or self.default_system
        system_block = self.system_format.format(system) if system and not self.ignore_user_text else ""
        out: list[Segment] = []
        _segments_add(out, self.bos, False)
        if not self.system_in_user:
            _segments_add(out, system_block, False)
        for k, (question, answer) in enumerate(turns):
            if k and self.bos_every_turn:
                _segments_add(out, self.bos, False)
            _segments_add(
                out, self.first_user if k == 0 and self.first_user is not None else self.user, False
            )
            if k == 0:
                if self.system_in_user:
                    _segments_add(out, system_block, False)
                if image:
                    _segments_add(out, self.image_prefix, False)
            if not self.ignore_user_text:
                _segments_add(out, question, False)
            _segments_add(out, self.assistant, False)
            if answer is not None:
                _segments_add(out, self.answer_prefix + answer + self.eos, True)
                _segments_add(out, self.turn_end, False)
        return out

    def prompt(self, messages: Sequence, image: bool = True) -> str:
        """The generation prompt as one string (a render ending with the assistant marker)."""
        return self.text(self.render(messages, image=image, add_generation_prompt=True))

    @staticmethod
    def text(segments: Sequence[Segment]) -> str:
        """Concatenate segments back into the rendered string."""
        return "".join(s.text for s in segments)


_IMG = "<image>"
IMAGE_PLACEHOLDER = _IMG  # the processor expands it to `num_image_tokens` copies of the model's image token
_MINIGPT_IMAGE = f"<Img>{_IMG}</Img> "

LLAMA2 = ChatTemplate(
    name="llama2",
    bos="<s>",
    eos="</s>",
    user="[INST] ",
    assistant=" [/INST]",
    image_prefix=_MINIGPT_IMAGE,
    bos_every_turn=True,
    system_format="<<SYS>>\n{}\n<</SYS>>\n\n",
    system_in_user=True,
    special_tokens=("<s>", "</s>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "<Img>", "</Img>", _IMG),
)

VICUNA = ChatTemplate(
    name="vicuna",
    bos="<s>",
    eos="###",
    first_user="###Human: ",
    user="Human: ",
    assistant=" ###Assistant:",
    image_prefix=_MINIGPT_IMAGE,
    special_tokens=("<s>", "###", "<Img>", "</Img>", _IMG),
)

LLAVA_V1 = ChatTemplate(
    name="llava_v1",
    bos="<s>",
    eos="</s>",
    user="USER: ",
    assistant=" ASSISTANT:",
    image_prefix=f"{_IMG}\n",
    system_format="{} ",
    special_tokens=("<s>", "</s>", _IMG),
)

CHATML = ChatTemplate(
    name="chatml",
    bos="",
    eos="<|im_end|>",
    user="<|im_start|>user\n",
    assistant="<|im_end|>\n<|im_start|>assistant\n",
    image_prefix=f"{_IMG}\n",
    answer_prefix="",
    turn_end="\n",
    system_format="<|im_start|>system\n{}<|im_end|>\n",
    special_tokens=("<|im_start|>", "<|im_end|>", _IMG),
)

PLAIN = ChatTemplate(
    name="plain",
    bos="<s>",
    eos="\n",
    user="",
    assistant="",
    image_prefix=_IMG,
    answer_prefix="",
    ignore_user_text=True,
    single_turn=True,
    special_tokens=("<s>", _IMG),
)

# NExT-Chat's `vicuna_v1.1` conversation (SeparatorStyle.ADD_COLON_TWO, sep " ", sep2 "</s>", the Vicuna system
# text by default) with its image written `<im_start>` + image tokens + `<im_end>` where its questions put
# `<image>` (first, then a space: "<image> Where is ...?").
NEXTCHAT = ChatTemplate(
    name="nextchat",
    bos="<s>",
    eos="</s>",
    user="USER: ",
    assistant=" ASSISTANT:",
    image_prefix=f"<im_start>{_IMG}<im_end> ",
    system_format="{} ",
    default_system=VICUNA_V1_SYSTEM,
    special_tokens=("<s>", "</s>", "<im_start>", "<im_end>", _IMG),
)

TEMPLATES: dict[str, ChatTemplate] = {t.name: t for t in (LLAMA2, VICUNA, LLAVA_V1, CHATML, PLAIN, NEXTCHAT)}


def get_template(name: str) -> ChatTemplate:
    """The template called `name`, with an error listing the valid names."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise ValueError(f"unknown chat template {name!r}; choose one of {sorted(TEMPLATES)}") from None

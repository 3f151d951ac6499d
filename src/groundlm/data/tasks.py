"""Task builders: an annotation in, a conversation with `<box:i>` slots out (docs/data-format.md).

One function per MiniGPT-v2 task identifier (`caption`, `vqa`, `refer`, `identify`, `grounding`,
`detection`). Each draws its instruction from that task's pool with the `random.Random` it is given, so a
seeded generator gives the same conversation on every machine. With ``eval=True`` the instruction is fixed:
MiniGPT-v2's own evaluation prompt where its repository has one, so a MiniGPT-v2 checkpoint is asked exactly
what it was benchmarked with (docs/published-systems.md):

- caption:   ``[caption] please describe this image?``  (evaluation prompt)
- vqa:       ``[vqa] Based on the image, respond to this question with a short answer: {}``  (OK-VQA/GQA)
- refer:     ``[refer] give me the location of {}``  (RefCOCO evaluation prompt)
- identify:  ``[identify] what is this {}``  (no benchmark prompt exists; this is the demo's shortcut text)
- grounding: ``[grounding] describe this image in detail``  (no benchmark prompt; the demo's shortcut text)
- detection: ``[detection] {}``  (no benchmark prompt; the bare phrase, as the demo examples and the
  phrase-to-object training data write it)

Every pool starts with that evaluation prompt, because a small model trained only on paraphrases would meet
the evaluation wording for the first time at test time; the other entries are the project's own wording.
Everything is lower case except the VQA evaluation prompt, which is quoted exactly.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from ..records import Message

CAPTION_POOL: tuple[str, ...] = (
    "[caption] please describe this image?",
    "[caption] describe the picture in a few words",
    "[caption] what does this image show?",
    "[caption] write a short caption for this picture",
    "[caption] give a brief description of the image",
    "[caption] sum up what you see in one sentence",
)

VQA_POOL: tuple[str, ...] = (
    "[vqa] Based on the image, respond to this question with a short answer: {}",
    "[vqa] {}",
    "[vqa] answer briefly: {}",
    "[vqa] look at the image and reply in a word or two: {}",
    "[vqa] {} reply with a single word",
    "[vqa] using the picture, answer this: {}",
)

REFER_POOL: tuple[str, ...] = (
    "[refer] give me the location of {}",
    "[refer] locate {}",
    "[refer] find {} in the image",
    "[refer] point out {}",
    "[refer] show me where {} is",
    "[refer] which region contains {}?",
    "[refer] mark {} with a box",
)

IDENTIFY_POOL: tuple[str, ...] = (
    "[identify] what is this {}",
    "[identify] describe the object at {}",
    "[identify] what object is inside {}?",
    "[identify] name the thing in {}",
    "[identify] tell me what {} contains",
    "[identify] which object occupies {}?",
)

GROUNDING_POOL: tuple[str, ...] = (
    "[grounding] describe this image in detail",
    "[grounding] describe the picture and locate every object you mention",
    "[grounding] write a caption and give a box for each object",
    "[grounding] tell me what is in the image and where",
    "[grounding] give a grounded description of this image",
)

DETECTION_POOL: tuple[str, ...] = (
    "[detection] {}",
    "[detection] find all {}",
    "[detection] where are the {}?",
    "[detection] mark all the {} in the image",
    "[detection] detect every one of the {}",
)

POOLS: tuple[tuple[str, ...], ...] = (
    CAPTION_POOL,
    VQA_POOL,
    REFER_POOL,
    IDENTIFY_POOL,
    GROUNDING_POOL,
    DETECTION_POOL,
)


def slot(index: int) -> str:
    """The record slot for ``objects[index]``: ``<box:index>``."""
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"a box slot needs a non-negative integer index, got {index!r}")
    return f"<box:{index}>"


def slots(indices: Sequence[int]) -> str:
    """Several slots written back to back (``<box:0><box:2>``), the form for one phrase with many boxes."""
    if isinstance(indices, int):
        indices = [indices]
    if not indices:
        raise ValueError("at least one object index is needed")
    return "".join(slot(i) for i in indices)


def ground(phrase: str, indices: Sequence[int]) -> str:
    """A phrase tied to its boxes: ``<p>red circles</p><box:0><box:2>``."""
    phrase = phrase.strip()
    if not phrase:
        raise ValueError("a grounded phrase must not be empty")
    return f"<p>{phrase}</p>{slots(indices)}"


def _instruction(pool: Sequence[str], rng: random.Random | None, eval: bool, *args: str) -> str:
    # The first entry of every pool is the evaluation prompt (see the module docstring).
    if eval:
        template = pool[0]
    elif rng is None:
        raise ValueError("pass a random.Random (seeded) to draw an instruction, or use eval=True")
    else:
        template = rng.choice(pool)
    return template.format(*args)


def _turns(question: str, answer: str) -> list[Message]:
    return [Message("user", question), Message("assistant", answer)]


def caption(text: str, rng: random.Random | None = None, *, eval: bool = False) -> list[Message]:
    """A ``[caption]`` conversation: an instruction from the pool, answered by ``text``."""
    return _turns(_instruction(CAPTION_POOL, rng, eval), text)


def vqa(question: str, answer: str, rng: random.Random | None = None, *, eval: bool = False) -> list[Message]:
    """A ``[vqa]`` conversation: ``question`` wrapped in a pool instruction, answered by ``answer``."""
    return _turns(_instruction(VQA_POOL, rng, eval, question), answer)


def refer(
    expression: str, indices: int | Sequence[int], rng: random.Random | None = None, *, eval: bool = False
) -> list[Message]:
    """A ``[refer]`` conversation: a referring expression in, the referent's slot(s) ``<box:i>`` out."""
    return _turns(_instruction(REFER_POOL, rng, eval, expression), slots(indices))


def identify(
    indices: int | Sequence[int], description: str, rng: random.Random | None = None, *, eval: bool = False
) -> list[Message]:
    """An ``[identify]`` conversation: the user points at ``<box:i>``, the answer describes the object."""
    return _turns(_instruction(IDENTIFY_POOL, rng, eval, slots(indices)), description)


def grounding(
    grounded_caption: str, rng: random.Random | None = None, *, eval: bool = False
) -> list[Message]:
    """A ``[grounding]`` conversation answered by a caption whose phrases are ``<p>…</p><box:i>`` (see `ground`)."""
    if "<p>" not in grounded_caption:
        raise ValueError(
            f"a grounded caption needs at least one <p>phrase</p><box:i>, got {grounded_caption!r}"
        )
    return _turns(_instruction(GROUNDING_POOL, rng, eval), grounded_caption)


def detection(
    phrase: str, indices: Sequence[int], rng: random.Random | None = None, *, eval: bool = False
) -> list[Message]:
    """A ``[detection]`` conversation: a phrase in, every matching box out as ``<p>phrase</p><box:i>…``."""
    return _turns(_instruction(DETECTION_POOL, rng, eval, phrase), ground(phrase, indices))

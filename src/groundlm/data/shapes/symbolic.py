"""ShapesWorld scenes written as text: the input of a text-only stage (the language model's pretraining).

A symbolic scene lists every object as its words and its box, in an order shuffled per scene so that nothing
but the coordinates says where an object is:

    <p>medium purple diamond</p><box:0> <p>small red triangle</p><box:1>

The `<box:i>` slots are the record's own objects, so the model's location codec writes the boxes exactly as
it writes them in answers (`{<26><12><53><39>}` for the text codec). `with_scene` puts that line in front of a
record's first user turn, where the image goes in a multimodal record; the record then trains the language
model on every task without an image: the task logic and the answer formats, over the same words and box
codes the visual tokens are later aligned to (docs/recipes.md, "The demo's pretrained parts").
"""

from __future__ import annotations

import random
from dataclasses import replace

from ...records import Message, Record

# Words the demo's word-level tokenizer knows; the task tag that follows closes the list.
SCENE_OPEN = "image:"


def scene_text(record: Record, rng: random.Random) -> str:
    """Every object of `record` as `<p>label</p><box:i>`, in a shuffled order."""
    order = list(range(len(record.objects)))
    rng.shuffle(order)
    listed = " ".join(f"<p>{record.objects[i].label}</p><box:{i}>" for i in order)
    return f"{SCENE_OPEN} {listed}"


def with_scene(record: Record, seed: int | str) -> Record:
    """`record` with its scene written before its first user turn, and no image."""
    messages = list(record.messages)
    first = next(i for i, m in enumerate(messages) if m.role == "user")
    scene = scene_text(record, random.Random(f"{seed}:scene"))
    messages[first] = Message("user", f"{scene} {messages[first].content}")
    return replace(record, messages=messages, image=None)

"""What a groundlm prompt asks, read so that another model family can be asked it in its own words.

groundlm's prompts start with a MiniGPT-v2 task identifier (`[refer] give me the location of the red cat`,
`tasks.py`). A backend needs the task and its *subject* (`the red cat`), not the instruction wording around
it, so `read_task` matches the text against the instruction pools of `data/tasks.py` (every wording groundlm
trains and evaluates with): a pool entry `[refer] give me the location of {}` gives the subject as what fills
`{}`; a text that matches no entry keeps everything after the tag as its subject. A text without a tag is
`Asked(None, text)`: the family's own prompt, passed through unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

from ..data.tasks import POOLS
from ..tasks import task_of


@dataclass(frozen=True)
class Asked:
    """A prompt's task (None: no tag), its subject (the referring expression, the question, ...) and all its
    words after the tag (for a chat model, which can be asked in the user's own words)."""

    task: str | None
    subject: str
    words: str


class UnsupportedTask(ValueError):
    """A model family has no prompt for a groundlm task."""

    def __init__(self, family: str, task: str, supported: tuple[str, ...]):
        super().__init__(
            f"{family} has no prompt for the [{task}] task; it answers {', '.join(f'[{t}]' for t in supported)} "
            "and its own raw prompts (a prompt without a task tag is sent as written); docs/other-models.md"
        )
        self.family = family
        self.task = task


@cache
def _patterns() -> dict[str, list[re.Pattern[str]]]:
    """Per task, a full-match pattern for each pool wording, longest wording first (the most specific wins)."""
    out: dict[str, list[tuple[int, re.Pattern[str]]]] = {}
    for pool in POOLS:
        for wording in pool:
            task = task_of(wording)
            if task is None:
                continue
            rest = wording[wording.index("]") + 1 :].strip()
            if "{}" not in rest:
                pattern = re.compile(re.escape(rest), re.IGNORECASE)
            else:
                before, after = rest.split("{}", 1)
                pattern = re.compile(rf"{re.escape(before)}(?P<subject>.+?){re.escape(after)}", re.IGNORECASE | re.DOTALL)
            out.setdefault(task, []).append((len(rest), pattern))
    return {task: [p for _, p in sorted(found, key=lambda x: -x[0])] for task, found in out.items()}


def read_task(text: str) -> Asked:
    """The task and subject of a user text (see the module docstring)."""
    task = task_of(text)
    if task is None:
        return Asked(None, text.strip(), text.strip())
    rest = text[text.index("]") + 1 :].strip()
    for pattern in _patterns().get(task, []):
        m = pattern.fullmatch(rest)
        if m is not None:
            subject = m.groupdict().get("subject")
            return Asked(task, (subject if subject is not None else "").strip(), rest)
    return Asked(task, rest, rest)


__all__ = ["Asked", "UnsupportedTask", "read_task"]

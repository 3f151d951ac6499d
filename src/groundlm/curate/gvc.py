"""LLaVA-Grounding's grounded visual chat (GVC): an LLM marks which phrases of a text refer to which boxes.

After LLaVA-Grounding's data design (Zhang et al., 2023; facts in docs/curation.md): a text-only LLM gets the
image's objects (numbered, label and box) and a caption or a whole conversation, and returns every assistant
text with its grounded phrases marked `<p>phrase</p>[k, ...]` (k: object numbers from 1). A marked text is
accepted only when removing the marks gives back the original text (whitespace aside), every tag is closed and
every number names an object; its phrases then become `<p>phrase</p><box:k-1>` slots into the record's objects,
so `records.validate_record` and every location codec read them. A caption becomes a `[grounding]` record (the
instruction drawn from the task's pool), a conversation a `chat` record with the same user turns. A valid
answer that grounds nothing makes no record ("nothing grounded").
"""

from __future__ import annotations

import re

from ..data import tasks
from ..records import Message, Record
from .answers import Invalid, json_answer, string_list
from .pipeline import rng_for, source_meta
from .prompts import PromptSet, few_shot
from .session import Session, Skip
from .subjects import Subject
from .symbolic import objects_text

DEFAULTS = {"seed": 0}
# `<p>phrase</p>[1, 3]`; a phrase holds no "<", so each match scans ahead once (linear).
_MARK = re.compile(r"<p>([^<]*)</p>\s*\[([0-9,\s]*)\]")
_SPACE = re.compile(r"\s+")


def _squashed(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def ground_text(marked: str, original: str, n_objects: int) -> tuple[str, int] | Invalid:
    """The record text of one marked answer (`<p>phrase</p><box:i>` slots) and how many phrases it grounds,
    or Invalid when the marks are malformed or the words differ from `original`."""
    pieces, outside, words, end, phrases = [], [], [], 0, 0
    for m in _MARK.finditer(marked):
        outside.append(marked[end : m.start()])
        phrase = m.group(1).strip()
        if not phrase:
            return Invalid("an empty phrase")
        ids = [s.strip() for s in m.group(2).split(",") if s.strip()]
        if not ids:
            return Invalid("a phrase without object numbers")
        if not all(s.isdigit() and len(s) <= 6 for s in ids):
            return Invalid("object numbers not separated by commas")
        numbers = [int(s) for s in ids]
        wrong = [k for k in numbers if not 1 <= k <= n_objects]
        if wrong:
            return Invalid(f"object number {wrong[0]} is not in 1..{n_objects}")
        pieces += [outside[-1], f"<p>{phrase}</p>" + "".join(f"<box:{k - 1}>" for k in numbers)]
        words += [outside[-1], m.group(1)]
        phrases += 1
        end = m.end()
    outside.append(marked[end:])
    pieces.append(outside[-1])
    words.append(outside[-1])
    if any("<p>" in s or "</p>" in s for s in outside):
        return Invalid("a phrase tag not closed or without [numbers]")
    if _squashed("".join(words)) != _squashed(original):
        return Invalid("the text was changed, not only marked")
    return "".join(pieces).strip(), phrases


class GroundedChat:
    """Grounded captions and grounded conversations from plain ones and the image's boxes."""

    name = "gvc"
    needs_describer = False

    def __init__(self, prompts: PromptSet):
        self.settings = prompts.settings(DEFAULTS)
        self.system = prompts.text("system.txt")
        self.examples = prompts.examples("examples.jsonl")

    def curate(self, subject: Subject, session: Session) -> list[Record]:
        if not subject.objects:
            session.skip("no objects to ground")
            return []
        if subject.size is None:
            session.skip("no image size for the boxes")
            return []
        units = [(f"caption-{k}", [Message("assistant", c)], True) for k, c in enumerate(subject.captions)]
        units += [(r.id, r.messages, False) for r in subject.conversations]
        if not units:
            session.skip("no captions or conversations")
        records = []
        for name, messages, caption in units:
            try:
                grounded = self._ground(subject, messages, session)
            except Skip as skip:
                session.skip(skip.reason)
                continue
            if grounded is not None:
                records.append(self._record(subject, name, messages, grounded, session, caption))
        return records

    def _context(self, subject: Subject, messages: list[Message]) -> str:
        lines, k = [], 0
        for m in messages:
            if m.role == "assistant":
                k += 1
                lines.append(f"Text {k}: {m.content}")
            elif m.role == "user":
                lines.append(f"User: {m.content}")
        return "Objects:\n" + objects_text(subject, numbered=True) + "\n\n" + "\n".join(lines)

    def _ground(self, subject: Subject, messages: list[Message], session: Session) -> list[str] | None:
        originals = [m.content for m in messages if m.role == "assistant"]
        n = len(subject.objects)

        def parse(text: str) -> tuple[list[str], int] | Invalid:
            value = json_answer(text)
            marked = value if isinstance(value, Invalid) else string_list(value, "grounded")
            if isinstance(marked, Invalid):
                return marked
            if len(marked) != len(originals):
                return Invalid(f"{len(marked)} grounded texts for {len(originals)} texts")
            out, phrases = [], 0
            for k, (answer, original) in enumerate(zip(marked, originals, strict=True), start=1):
                result = ground_text(answer, original, n)
                if isinstance(result, Invalid):
                    return Invalid(f"text {k}: {result.reason}")
                out.append(result[0])
                phrases += result[1]
            return out, phrases

        texts, phrases = session.ask(
            few_shot(self.system, self.examples, self._context(subject, messages)), parse, what="ground"
        )
        if not phrases:
            session.skip("nothing grounded")
            return None
        return texts

    def _record(self, subject: Subject, name: str, messages: list[Message], grounded: list[str],
                session: Session, caption: bool) -> Record:
        if caption:
            rng = rng_for(self.settings["seed"], subject, name)
            turns = tasks.grounding(grounded[0], rng)
            meta = source_meta(self.name, session, task="grounding")
        else:
            answers = iter(grounded)
            turns = [Message(m.role, next(answers)) if m.role == "assistant" else Message(m.role, m.content)
                     for m in messages]
            meta = source_meta(self.name, session, grounded_from=name)
        return Record(f"{subject.key}-gvc-{name}", subject.image, list(subject.objects), turns, meta)

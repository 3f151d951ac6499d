"""LLaVA-Instruct: a text-only LLM that sees an image as its captions and boxes writes instruction data.

After LLaVA's design (Liu et al., "Visual Instruction Tuning", 2023; facts in docs/curation.md): three request
types, each with its own system prompt and few-shot examples (user turn: the symbolic image; assistant turn: a
response), the shipped set in prompts/llava-instruct/ written for groundlm:

- `conversation`: a multi-turn chat about the image; the LLM sees the captions only;
- `detail`: a detailed description; captions and boxes; the record's question is drawn from a pool;
- `complex_reasoning`: one question that needs reasoning beyond the scene, and its answer; captions and boxes.

Answers are JSON (conversation, complex_reasoning) or prose (detail); each is checked (shape, length, no box
coordinates copied into the text). Each becomes a `chat` record on the image, keeping the image's objects so
that GVC can ground it later.
"""

from __future__ import annotations

from ..records import Message, Record
from .answers import Invalid, json_answer, plain_text
from .pipeline import rng_for, source_meta
from .prompts import PromptSet, few_shot
from .session import Session, Skip
from .subjects import Subject
from .symbolic import captions_text, objects_text

KINDS = ("conversation", "detail", "complex_reasoning")
DEFAULTS = {"min_turns": 2, "detail_min_words": 30, "answer_min_words": 1, "seed": 0}


class LlavaInstruct:
    """Conversations, detailed descriptions and complex-reasoning questions from captions and boxes."""

    name = "llava-instruct"
    needs_describer = False

    def __init__(self, prompts: PromptSet):
        self.settings = prompts.settings(DEFAULTS)
        self.system = {kind: prompts.text(f"{kind}/system.txt") for kind in KINDS}
        self.examples = {kind: prompts.examples(f"{kind}/examples.jsonl") for kind in KINDS}
        self.detail_questions = prompts.lines("detail/questions.lines")
        self.parsers = {
            "conversation": self._conversation,
            "detail": lambda text: plain_text(text, self.settings["detail_min_words"]),
            "complex_reasoning": self._reasoning,
        }

    def curate(self, subject: Subject, session: Session) -> list[Record]:
        if not subject.captions:
            session.skip("no captions")
            return []
        records = []
        for kind in KINDS:
            context = captions_text(subject)
            if kind != "conversation" and subject.objects:
                if subject.size is None:
                    session.skip(f"{kind}: no image size for the boxes")
                    continue
                context += "\n\n" + objects_text(subject)
            messages = few_shot(self.system[kind], self.examples[kind], context)
            try:
                value = session.ask(messages, self.parsers[kind], what=kind)
            except Skip as skip:
                session.skip(skip.reason)
                continue
            records.append(self._record(subject, kind, value, session))
        return records

    def _record(self, subject: Subject, kind: str, value, session: Session) -> Record:
        if kind == "detail":
            question = rng_for(self.settings["seed"], subject, kind).choice(self.detail_questions)
            turns = [(question, value)]
        elif kind == "complex_reasoning":
            turns = [value]
        else:
            turns = value
        messages = [m for q, a in turns for m in (Message("user", q), Message("assistant", a))]
        meta = source_meta(self.name, session, kind=kind)
        return Record(f"{subject.key}-llava-{kind}", subject.image, list(subject.objects), messages, meta)

    def _pair(self, item, where: str) -> tuple[str, str] | Invalid:
        if not isinstance(item, dict):
            return Invalid(f"{where} is not an object with question and answer")
        pair = []
        for key in ("question", "answer"):
            value = item.get(key)
            if not isinstance(value, str):
                return Invalid(f"{where} has no {key} text")
            text = plain_text(value, self.settings["answer_min_words"])
            if isinstance(text, Invalid):
                return Invalid(f"{where} {key}: {text.reason}")
            pair.append(text)
        return pair[0], pair[1]

    def _conversation(self, text: str) -> list[tuple[str, str]] | Invalid:
        value = json_answer(text)
        if isinstance(value, Invalid):
            return value
        turns = value.get("conversation") if isinstance(value, dict) else None
        if not isinstance(turns, list):
            return Invalid("no 'conversation' list in the JSON answer")
        if len(turns) < self.settings["min_turns"]:
            return Invalid(f"fewer than {self.settings['min_turns']} turns")
        pairs = []
        for item in turns:
            pair = self._pair(item, "a turn")
            if isinstance(pair, Invalid):
                return pair
            pairs.append(pair)
        return pairs

    def _reasoning(self, text: str) -> tuple[str, str] | Invalid:
        value = json_answer(text)
        return value if isinstance(value, Invalid) else self._pair(value, "the answer")

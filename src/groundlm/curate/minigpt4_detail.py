"""MiniGPT-4's stage-2 data: a vision model describes each image at length, a chat LLM cleans the text, rules
filter what is left.

After MiniGPT-4's curation (Zhu et al., "MiniGPT-4", 2023, section 3.2; the facts used are in
docs/curation.md):

1. the describer (a groundlm model: `--describer DIR`, or a server: `--describer-url`) is asked `describe.txt`
   about the image; when its answer is shorter than `continue_below_tokens` (80, as published) it is asked
   `continue.txt` once more in the same conversation and the two answers are joined;
2. the chat LLM gets `fix_system.txt` and the description, and returns the corrected paragraph only;
3. rules stand in for the published manual pass: an answer with a phrase of `reject.lines` (chat-bot
   boilerplate such as apologies), with fewer than `min_words` words, with more than `max_non_ascii` of its
   characters outside ASCII (not English), or with box coordinates is refused, asked again, then skipped.

The record asks one instruction of `instructions.lines` (drawn per image) and answers with the paragraph; as in
MiniGPT-4's stage 2 it carries no task tag and no boxes.
"""

from __future__ import annotations

from ..records import Message, Record
from .answers import Invalid, plain_text
from .pipeline import rng_for, source_meta
from .prompts import PromptSet
from .session import Session, Skip
from .subjects import Subject

DEFAULTS = {"continue_below_tokens": 80, "min_words": 20, "max_non_ascii": 0.05, "seed": 0}
_QUOTES = "\"'“”‘’"


class MiniGPT4Detail:
    """Detailed image descriptions by a groundlm model, corrected by a chat LLM and filtered by rules."""

    name = "minigpt4-detail"
    needs_describer = True

    def __init__(self, prompts: PromptSet):
        self.settings = prompts.settings(DEFAULTS)
        self.describe_prompt = prompts.text("describe.txt")
        self.continue_prompt = prompts.text("continue.txt")
        self.fix_system = prompts.text("fix_system.txt")
        self.instructions = prompts.lines("instructions.lines")
        self.reject = [s.lower() for s in prompts.lines("reject.lines")]

    def description(self, subject: Subject, session: Session) -> str:
        """The describer's text for the image, continued once when it is short."""
        turns = [{"role": "user", "content": self.describe_prompt}]
        first = session.describe(subject.image, turns)
        text = first.text.strip()
        if first.tokens < self.settings["continue_below_tokens"]:
            turns += [{"role": "assistant", "content": first.text},
                      {"role": "user", "content": self.continue_prompt}]
            text = f"{text} {session.describe(subject.image, turns).text.strip()}".strip()
        return text

    def parse(self, text: str) -> str | Invalid:
        """The corrected paragraph, or why it cannot be used."""
        text = text.strip().strip(_QUOTES).strip()
        lowered = text.lower()
        for phrase in self.reject:
            if phrase in lowered:
                return Invalid(f"contains {phrase!r}")
        if text and sum(not c.isascii() for c in text) / len(text) > self.settings["max_non_ascii"]:
            return Invalid("not English")
        return plain_text(text, self.settings["min_words"])

    def curate(self, subject: Subject, session: Session) -> list[Record]:
        try:
            description = self.description(subject, session)
            if not description:
                raise Skip("empty description")
            messages = [{"role": "system", "content": self.fix_system}, {"role": "user", "content": description}]
            paragraph = session.ask(messages, self.parse, what="fix")
        except Skip as skip:
            session.skip(skip.reason)
            return []
        instruction = rng_for(self.settings["seed"], subject, self.name).choice(self.instructions)
        meta = source_meta(self.name, session, describer=session.describer.identity if session.describer else None)
        turns = [Message("user", instruction), Message("assistant", paragraph)]
        return [Record(f"{subject.key}-minigpt4-detail", subject.image, [], turns, meta)]

"""The interface every curation pipeline has, and the helpers they share.

A pipeline is built from its prompt set (prompts.py) and turns one `Subject` (an image and what the sources
say about it) into records through a `Session`, which asks the LLM (and the describer) with caching and
validation. Whatever it cannot make it counts with `session.skip(reason)`; it never writes a record it has
not checked. `PIPELINES` in `__init__.py` maps each name to its class.
"""

from __future__ import annotations

import random
from typing import Protocol

from ..records import Record
from .prompts import PromptSet
from .session import Session
from .subjects import Subject


class Pipeline(Protocol):
    """One way of making data with an LLM."""

    name: str
    needs_describer: bool  # whether it asks a groundlm model about the images (`--describer`)

    def __init__(self, prompts: PromptSet) -> None: ...

    def curate(self, subject: Subject, session: Session) -> list[Record]:
        """The records made for `subject` (possibly none; skips are counted in the session)."""
        ...


def rng_for(seed: int, subject: Subject, kind: str) -> random.Random:
    """The random draws (instruction wording) of one record: fixed by the seed, the image and the kind."""
    return random.Random(f"{seed}:{subject.image}:{kind}")


def source_meta(pipeline: str, session: Session, **extra) -> dict:
    """The `meta` of a curated record: the chat task, the pipeline and the LLM that wrote it."""
    return {"task": "chat", "source": f"curate/{pipeline}", "llm": session.client.endpoint.model, **extra}

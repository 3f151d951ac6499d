"""Reading an LLM's answer: the checks every pipeline shares.

A pipeline's parser takes the answer's text and returns either what it needs or `Invalid(reason)`; it never
raises and runs in time linear in the answer (one JSON decode, regular expressions without nested
repetition). An invalid answer is asked again, then skipped and counted under its reason (session.py).
"""

from __future__ import annotations

import json
import re
from typing import Any, NamedTuple


class Invalid(NamedTuple):
    """Why an answer cannot be used (the reason is what the run's report counts)."""

    reason: str


_NUMBER = r"-?(?:\d+(?:\.\d*)?|\.\d+)"  # one way to match each number: no backtracking blow-up
# Four numbers in brackets or parentheses: box coordinates copied from the prompt into the data.
_COORDINATES = re.compile(rf"[\[(]\s*{_NUMBER}(?:\s*,\s*{_NUMBER}){{3}}\s*[\])]")


def unfenced(text: str) -> str:
    """`text` without a Markdown code fence around it (```json ... ```): models add one even when told not to."""
    body = text.strip()
    if len(body) >= 6 and body.startswith("```") and body.endswith("```"):
        first_line, _, rest = body[3:-3].partition("\n")
        # the first line is the fence's language tag ("json"), or already the content
        body = rest if first_line.strip().isalpha() or not first_line.strip() else first_line + "\n" + rest
    return body.strip()


def json_answer(text: str) -> Any | Invalid:
    """The JSON value of an answer (a code fence around it is allowed), or Invalid."""
    try:
        return json.loads(unfenced(text))
    except (json.JSONDecodeError, RecursionError):
        return Invalid("not JSON")


def string_list(value: Any, key: str) -> list[str] | Invalid:
    """`value[key]` as a list of non-empty strings, or Invalid naming the key."""
    if not isinstance(value, dict) or key not in value:
        return Invalid(f"no {key!r} in the JSON answer")
    items = value[key]
    if not isinstance(items, list) or not all(isinstance(s, str) and s.strip() for s in items):
        return Invalid(f"{key!r} is not a list of non-empty strings")
    return [s.strip() for s in items]


def plain_text(text: str, min_words: int) -> str | Invalid:
    """A prose answer: stripped, at least `min_words` words, no copied box coordinates."""
    text = text.strip()
    if not text:
        return Invalid("empty answer")
    if len(text.split()) < min_words:
        return Invalid(f"shorter than {min_words} words")
    if _COORDINATES.search(text):
        return Invalid("box coordinates in the text")
    return text

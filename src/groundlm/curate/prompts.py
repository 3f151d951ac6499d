"""A pipeline's prompt set: the folder of text and JSON files that say what the LLM is told.

The shipped sets are `src/groundlm/curate/prompts/<pipeline>/`; `groundlm curate --prompts DIR` replaces one
with a folder of the same layout (docs/curation.md lists each pipeline's files). Kinds of file:

- `*.txt`: a prompt, used as written (surrounding blank lines dropped);
- `*.lines`: one entry per non-blank line (instruction pools, phrases that reject an answer);
- `*.jsonl`: few-shot examples, one `{"context": ..., "response": ...}` object per line;
- `settings.json`: the pipeline's thresholds (a user's file may set only some; the rest keep their defaults).

Every file a pipeline needs is read when the run starts, so a missing or broken file stops it before any
request is paid for, with the file and line named.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

# How a setting's type is named in errors.
_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


class PromptError(ValueError):
    """A prompt set's file is missing or malformed."""


def shipped(pipeline: str) -> Path:
    """The folder of the prompt set shipped for `pipeline`."""
    return Path(str(resources.files("groundlm.curate") / "prompts" / pipeline))


class PromptSet:
    """The files of one prompt folder, read on demand and checked."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise PromptError(f"prompt set {self.folder} is not a folder")

    def _path(self, name: str) -> Path:
        path = self.folder / name
        if not path.is_file():
            raise PromptError(f"{path}: missing (prompt set {self.folder})")
        return path

    def text(self, name: str) -> str:
        """The prompt in `name` (a .txt file)."""
        text = self._path(name).read_text(encoding="utf-8").strip()
        if not text:
            raise PromptError(f"{self.folder / name}: empty")
        return text

    def lines(self, name: str) -> list[str]:
        """The non-blank lines of `name` (a .lines file)."""
        lines = [s.strip() for s in self._path(name).read_text(encoding="utf-8").splitlines() if s.strip()]
        if not lines:
            raise PromptError(f"{self.folder / name}: no entries")
        return lines

    def examples(self, name: str) -> list[dict]:
        """The few-shot examples in `name` (a .jsonl file of `{"context", "response"}` objects)."""
        path = self._path(name)
        examples = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                example = json.loads(line)
            except json.JSONDecodeError as err:
                raise PromptError(f"{path}:{number}: invalid JSON ({err.msg})") from err
            if not (isinstance(example, dict) and isinstance(example.get("context"), str)
                    and isinstance(example.get("response"), str)):
                raise PromptError(f"{path}:{number}: expected {{\"context\": text, \"response\": text}}")
            examples.append(example)
        return examples

    def settings(self, defaults: dict) -> dict:
        """`defaults` updated by the set's settings.json (when it has one); unknown or mistyped keys are errors."""
        path = self.folder / "settings.json"
        if not path.is_file():
            return dict(defaults)
        try:
            given = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise PromptError(f"{path}: invalid JSON ({err.msg}, line {err.lineno})") from err
        if not isinstance(given, dict):
            raise PromptError(f"{path}: expected a JSON object")
        for key, value in given.items():
            if key not in defaults:
                raise PromptError(f"{path}: unknown setting {key!r} (known: {', '.join(sorted(defaults))})")
            if type(value) is not type(defaults[key]) and not (
                isinstance(defaults[key], float) and type(value) is int
            ):
                kind = _KINDS.get(type(defaults[key]), type(defaults[key]).__name__)
                raise PromptError(f"{path}: {key} must be {kind}, got {value!r}")
        return {**defaults, **given}


def few_shot(system: str, examples: list[dict], context: str) -> list[dict]:
    """Chat messages: the system prompt, each example as a user turn and the assistant's reply, then `context`."""
    messages = [{"role": "system", "content": system}]
    for example in examples:
        messages += [{"role": "user", "content": example["context"]},
                     {"role": "assistant", "content": example["response"]}]
    return [*messages, {"role": "user", "content": context}]

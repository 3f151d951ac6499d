"""An image as text for a text-only LLM: its captions and its objects' boxes (LLaVA's "symbolic image").

Boxes are `[x1, y1, x2, y2]` as fractions of the image's width and height with three decimals, the form LLaVA's
generation prompts use (docs/curation.md). GVC numbers the objects from 1 so the LLM can name them; object
`k` is the record's `objects[k - 1]`.
"""

from __future__ import annotations

from .subjects import Subject


def captions_text(subject: Subject) -> str:
    """The captions, one per line."""
    return "\n".join(subject.captions)


def objects_text(subject: Subject, *, numbered: bool = False) -> str:
    """One line per object, `label: [x1, y1, x2, y2]` (numbered `k. label: [...]`); the subject needs a size."""
    lines = []
    for k, obj in enumerate(subject.objects, start=1):
        box = ", ".join(f"{min(max(v, 0.0), 1.0):.3f}" for v in subject.normalised(obj))
        line = f"{obj.label or 'object'}: [{box}]"
        lines.append(f"{k}. {line}" if numbered else line)
    return "\n".join(lines)

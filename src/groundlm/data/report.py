"""What a data conversion skipped, counted per reason: the part `ImportReport` (importers/base.py) and
`ExportReport` (exporters/base.py) share."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Skips:
    """Skipped rows or records, counted per reason."""

    skipped: Counter = field(default_factory=Counter)

    def skip(self, reason: str, n: int = 1) -> None:
        """Count ``n`` skips under ``reason``."""
        self.skipped[reason] += n

    @property
    def n_skipped(self) -> int:
        """The total number of skips over all reasons."""
        return sum(self.skipped.values())

    def skipped_text(self) -> str:
        """``, skipped N (reason: n, ...)``, most frequent first, or "" when nothing was skipped."""
        if not self.skipped:
            return ""
        reasons = ", ".join(f"{reason}: {n}" for reason, n in self.skipped.most_common())
        return f", skipped {self.n_skipped} ({reasons})"

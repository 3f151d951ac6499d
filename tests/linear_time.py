"""Linear time, checked as growth: the CPU time on a whole text against the time on its first eighth.

An absolute budget ("a megabyte in under a second") fails on a slow or busy machine and passes a
quadratic parser on a fast one; the growth from an eighth to the whole does neither. Linear work grows
8-fold, quadratic work 64-fold. Measured here, linear parsers grew 7- to 17-fold (the whole text no longer
fits the caches), so the bound of 32 sits between, and each size keeps its fastest of a few runs.
"""

from __future__ import annotations

import gc
import math
import time

PARTS = 8
GROWTH_BOUND = 4 * PARTS
# below this a timer reading says nothing about growth: a whole text faster than GROWTH_BOUND × FLOOR passes
FLOOR_SECONDS = 0.005


def cpu_seconds(fn, text, repeats: int = 1) -> float:
    """The least CPU time of this process over `repeats` calls of fn(text): a busy neighbour adds none."""
    best = math.inf
    # the collector's passes over every live object grow with what fn keeps alive, not with fn's algorithm
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.process_time()
            fn(text)
            best = min(best, time.process_time() - start)
    finally:
        gc.enable()
    return best


def assert_linear(fn, whole: str, eighth: str | None = None, label: str = "") -> None:
    """fn's CPU time on `whole` grows less than GROWTH_BOUND-fold from `eighth` (default: whole's first eighth)."""
    eighth = whole[: len(whole) // PARTS] if eighth is None else eighth
    small = cpu_seconds(fn, eighth, repeats=3)
    big = cpu_seconds(fn, whole, repeats=2)
    assert big < GROWTH_BOUND * max(small, FLOOR_SECONDS), (
        f"{label}: {big:.3f} s on {len(whole):,} characters, {small:.4f} s on {len(eighth):,}: "
        f"{big / max(small, 1e-9):.0f}-fold growth for {len(whole) / len(eighth):.0f}-fold text"
    )

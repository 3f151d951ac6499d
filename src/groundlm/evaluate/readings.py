"""How another model's raw answers are read back into boxes before scoring (`groundlm eval --predictions
--codec NAME --reading R`). Three readings, a dict of plain functions (`READINGS`):

- `codec` (default): the codec's own `parse`: every location written in the format, anywhere in the answer.
- `minigptv2`: MiniGPT-v2's REC evaluation rule (its eval script, described in docs/evaluation.md): remove every
  `<unk>` and every space; the answer must *start* with one `{<a><b><c><d>}` (1-3 digits each) and hold exactly
  four numbers in all, else it is a miss; the numbers divided by the codec's bins are fractions of the
  original image (MiniGPT-v2 squashes the image, no padding), corners as written. Only the `text` codec writes
  that syntax, so the reading refuses other codecs.
- `lenient`: the codec's parse, and when that finds nothing, the first box written in free text as
  `[a, b, c, d]` or `(a, b), (c, d)` (what a model that ignored the format often writes). Its numbers are
  fractions when all are at most 1 and one has a decimal point, else integers on a grid of `scale` (default
  1000, the Qwen-VL / InternVL / Ferret / CogVLM convention; 100 for MiniGPT-v2).

Each reading returns `GroundedObject`s with `box_norm` in [0, 1] of the row's frame; the runner maps them to
pixels. Every reading is linear in the answer's length; `reader` wraps it so it never raises.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..location import GroundedObject, LocationCodec
from ..location.scan import never_raising

# one reading: (raw answer, the codec it is written in, the grid of free-text integers) -> objects
Reading = Callable[[str, LocationCodec, float], list[GroundedObject]]

_MINIGPT_V2_START = re.compile(r"\{<(\d{1,3})><(\d{1,3})><(\d{1,3})><(\d{1,3})>\}")
_DIGIT_RUN = re.compile(r"\d+")
# bounded numbers (no nested quantifiers over the same characters), so a failed attempt costs O(1) per start
_NUM = r"(\d{1,9}(?:\.\d{1,20})?)"
_SEP = r"\s{0,8},\s{0,8}"
_FREE_BOX = re.compile(
    rf"\[\s{{0,8}}{_NUM}{_SEP}{_NUM}{_SEP}{_NUM}{_SEP}{_NUM}\s{{0,8}}\]"
    rf"|\(\s{{0,8}}{_NUM}{_SEP}{_NUM}\s{{0,8}}\)\s{{0,8}},?\s{{0,8}}\(\s{{0,8}}{_NUM}{_SEP}{_NUM}\s{{0,8}}\)"
)


def _codec(text: str, codec: LocationCodec, scale: float) -> list[GroundedObject]:
    return codec.parse(text)


def _minigptv2(text: str, codec: LocationCodec, scale: float) -> list[GroundedObject]:
    answer = text.replace("<unk>", "").replace(" ", "")
    start = _MINIGPT_V2_START.match(answer)
    # exactly four numbers in the whole answer, the four of the leading box
    if start is None or sum(1 for _ in _DIGIT_RUN.finditer(answer)) != 4:
        return []
    bins = codec.bins  # the text codec's grid (MiniGPT-v2: 100)
    return [GroundedObject(None, tuple(int(n) / bins for n in start.groups()))]


def _lenient(text: str, codec: LocationCodec, scale: float) -> list[GroundedObject]:
    objects = codec.parse(text)
    if objects:
        return objects
    found = _FREE_BOX.search(text)
    if found is None:
        return []
    numbers = [n for n in found.groups() if n is not None]
    fractions = all(float(n) <= 1 for n in numbers) and any("." in n for n in numbers)
    x1, y1, x2, y2 = (float(n) if fractions else float(n) / scale for n in numbers)
    return [GroundedObject(None, (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)))]


READINGS: dict[str, Reading] = {"codec": _codec, "minigptv2": _minigptv2, "lenient": _lenient}


def reader(name: str, codec_name: str, codec: LocationCodec, scale: float = 1000.0) -> Callable[[str], list]:
    """The reading called `name` of answers in `codec` (named `codec_name`), as a function of the answer that
    never raises; a clear error for an unknown reading or one that cannot read this codec."""
    if name not in READINGS:
        raise ValueError(f"unknown reading {name!r}; choose one of {', '.join(READINGS)}")
    if name == "minigptv2" and codec_name != "text":
        raise ValueError(f"the minigptv2 reading reads MiniGPT-v2's {{<x1><y1><x2><y2>}} answers: use it with "
                         f"--codec text, not {codec_name!r}")
    read = READINGS[name]
    return lambda text: never_raising(lambda t: read(t, codec, scale), text)


__all__ = ["READINGS", "Reading", "reader"]

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
- `lmms_eval`: lmms-eval `refcoco_bbox_rec`'s parse (lmms_eval/tasks/refcoco/utils_rec.py): the first
  `[a, b, c, d]` (comma separated, optional minus and decimals), taken as fractions of the ORIGINAL image as
  written (no rescaling); none found is a miss (lmms-eval substitutes [0, 0, 0, 0], IoU 0). Unlike lmms-eval the
  box is then clipped to the image and its corners ordered, as every box groundlm scores.
- `vlmevalkit`: VLMEvalKit `RefCOCODataset`'s parse (vlmeval/dataset/refcoco.py): the first `[a, b, c, d]`
  (comma or space separated, signs and exponents allowed), else the first four numbers anywhere in the answer;
  then its scale guess on the largest absolute value: <= 1.5 fractions of the original image, <= 1000 a 0-1000
  grid of it, else pixels; clipped to the image, swapped corners put in order.

The codec readings return `GroundedObject`s with `box_norm` in [0, 1] of the row's frame, which the runner maps
to pixels. The two tools' readings know their numbers refer to the original image, so they also set `box` in its
pixels (from the row's `size`), which the runner keeps. Every reading is linear in the answer's length; `reader`
wraps it so it never raises.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..location import GroundedObject, LocationCodec
from ..location.scan import never_raising

# one reading: (raw answer, the codec it is written in, the grid of free-text integers, the original image's
# (width, height) or None) -> objects
Reading = Callable[[str, LocationCodec, float, "tuple[float, float] | None"], list[GroundedObject]]

_MINIGPT_V2_START = re.compile(r"\{<(\d{1,3})><(\d{1,3})><(\d{1,3})><(\d{1,3})>\}")
_DIGIT_RUN = re.compile(r"\d+")
# bounded numbers (no nested quantifiers over the same characters), so a failed attempt costs O(1) per start
_NUM = r"(\d{1,9}(?:\.\d{1,20})?)"
_SEP = r"\s{0,8},\s{0,8}"
_FREE_BOX = re.compile(
    rf"\[\s{{0,8}}{_NUM}{_SEP}{_NUM}{_SEP}{_NUM}{_SEP}{_NUM}\s{{0,8}}\]"
    rf"|\(\s{{0,8}}{_NUM}{_SEP}{_NUM}\s{{0,8}}\)\s{{0,8}},?\s{{0,8}}\(\s{{0,8}}{_NUM}{_SEP}{_NUM}\s{{0,8}}\)"
)


def _codec(text: str, codec: LocationCodec, scale: float, size=None) -> list[GroundedObject]:
    return codec.parse(text)


def _minigptv2(text: str, codec: LocationCodec, scale: float, size=None) -> list[GroundedObject]:
    answer = text.replace("<unk>", "").replace(" ", "")
    start = _MINIGPT_V2_START.match(answer)
    # exactly four numbers in the whole answer, the four of the leading box
    if start is None or sum(1 for _ in _DIGIT_RUN.finditer(answer)) != 4:
        return []
    bins = codec.bins  # the text codec's grid (MiniGPT-v2: 100)
    return [GroundedObject(None, tuple(int(n) / bins for n in start.groups()))]


def _lenient(text: str, codec: LocationCodec, scale: float, size=None) -> list[GroundedObject]:
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


# lmms-eval's number `-?\d+(?:\.\d+)?` and VLMEvalKit's `[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?`, bounded
_LMMS_NUM = r"(-?\d{1,20}(?:\.\d{1,20})?)"
_LMMS_BOX = re.compile(rf"\[\s{{0,8}}{_LMMS_NUM},\s{{0,8}}{_LMMS_NUM},\s{{0,8}}{_LMMS_NUM},\s{{0,8}}{_LMMS_NUM}\s{{0,8}}\]")
_VLMEK_NUM = r"[-+]?\d{0,20}\.?\d{1,20}(?:[eE][-+]?\d{1,3})?"
_VLMEK_SEP = r"(?:\s{0,8},\s{0,8}|\s{1,8})"
_VLMEK_BOX = re.compile(
    rf"\[\s{{0,8}}({_VLMEK_NUM}){_VLMEK_SEP}({_VLMEK_NUM}){_VLMEK_SEP}({_VLMEK_NUM}){_VLMEK_SEP}({_VLMEK_NUM})\s{{0,8}}\]"
)
_VLMEK_ANY = re.compile(_VLMEK_NUM)


def _in_image(values: list[float], size) -> list[GroundedObject]:
    """A box of original-image fractions `values`: clipped, corners ordered, with its pixels when `size` is
    known."""
    x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in values)
    norm = (min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))
    box = None if size is None else (norm[0] * size[0], norm[1] * size[1], norm[2] * size[0], norm[3] * size[1])
    return [GroundedObject(None, norm, box)]


def _lmms_eval(text: str, codec: LocationCodec, scale: float, size=None) -> list[GroundedObject]:
    found = _LMMS_BOX.search(text)
    return [] if found is None else _in_image([float(n) for n in found.groups()], size)


def _vlmevalkit(text: str, codec: LocationCodec, scale: float, size=None) -> list[GroundedObject]:
    found = _VLMEK_BOX.search(text)
    if found is not None:
        values = [float(n) for n in found.groups()]
    else:
        values = []
        for number in _VLMEK_ANY.finditer(text):
            values.append(float(number.group()))
            if len(values) == 4:
                break
        if len(values) < 4:
            return []
    largest = max(abs(v) for v in values)
    if largest <= 1.5:
        fractions = values
    elif largest <= 1000:
        fractions = [v / 1000 for v in values]
    elif size is not None:  # pixels of the original image
        fractions = [v / size[i % 2] for i, v in enumerate(values)]
    else:
        return []  # pixels, but no image size to read them against
    return _in_image(fractions, size)


READINGS: dict[str, Reading] = {
    "codec": _codec, "minigptv2": _minigptv2, "lenient": _lenient, "lmms_eval": _lmms_eval,
    "vlmevalkit": _vlmevalkit,
}

# the tools' readings fix their own syntax: they read any raw answer without a --codec
CODEC_FREE = frozenset({"lmms_eval", "vlmevalkit"})


def reader(name: str, codec_name: str, codec: LocationCodec, scale: float = 1000.0) -> Callable[..., list]:
    """The reading called `name` of answers in `codec` (named `codec_name`), as a function `read(answer,
    size=None)` that never raises (`size`: the original image's (width, height)); a clear error for an unknown
    reading or one that cannot read this codec."""
    if name not in READINGS:
        raise ValueError(f"unknown reading {name!r}; choose one of {', '.join(READINGS)}")
    if name == "minigptv2" and codec_name != "text":
        raise ValueError(f"the minigptv2 reading reads MiniGPT-v2's {{<x1><y1><x2><y2>}} answers: use it with "
                         f"--codec text, not {codec_name!r}")
    read = READINGS[name]
    return lambda text, size=None: never_raising(lambda t: read(t, codec, scale, size), text)


__all__ = ["CODEC_FREE", "READINGS", "Reading", "reader"]

"""Object hallucination: CHAIR (Rohrbach et al. 2018) on captions and POPE (Li et al. 2023) on yes/no answers.

CHAIR word matching (docs/evaluation.md, "CHAIR"), step by step:
1. lower-case the caption and split it into words: runs of letters/digits, hyphenated compounds kept whole
   ("t-shirt"), apostrophes split off ("couch's" → "couch", "s"). The original uses nltk's word_tokenize.
2. singularise each word with a small plural rule guided by the vocabulary (below). The original uses
   pattern.en's `singularize`, which is not used here.
3. merge two-word terms: the COCO double words ("traffic light", "hot dog", "teddy bear", …) stay as one
   term; "baby/adult <animal>" → the animal; "passenger jet/train" → jet/train (so the passenger is not a
   person); "bow tie" → tie; "toilet seat" → toilet; "home plate" becomes one term that is no object.
4. if "toilet" occurs, every "seat" is dropped (a toilet seat is not a chair).
5. keep the words in the COCO synonym list (`coco_synonyms.json`) and map each to its category.

The plural rule: a word already in the vocabulary (any synonym, or a word of a two-word term) is kept; else
"-men" → "-man", "-children" → "-child", "mice"/"geese" → "mouse"/"goose", "-ies" → "-y" or "-ie",
"-ves" → "-f" or "-fe", "-es" → "" after s/x/z/ch/sh/o, "-s" → ""; the first candidate that is in the
vocabulary wins, otherwise the word is left as it is. Differences from pattern.en are therefore confined to
words that can never be objects, except that "sports ball" and "skies"/"sky" behave sensibly here ("sports"
is kept, "skies" does not become "ski").

The synonym file is the CHAIR list with whitespace stripped from every entry; the original kept " motor
bike" and " cheesecake" with a leading space (so they never matched) and "iPhone" capitalised (never matched
after lower-casing); here they match.

CHAIR_i = hallucinated mentions / all mentions (a mention is an occurrence, repeats counted);
CHAIR_s = captions with at least one hallucinated mention / captions. A mention is hallucinated when its
category is not among the image's ground-truth objects, which the original builds as the COCO instance
categories of the image plus the objects named by its human captions (`image_objects`).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

_SYNONYMS_FILE = Path(__file__).with_name("coco_synonyms.json")

# Two-word terms of the CHAIR rules: each maps to the term it stands for.
_DOUBLE_WORDS = [
    "motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal", "stop light",
    "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball", "baseball bat", "baseball glove",
    "tennis racket", "wine glass", "hot dog", "cell phone", "mobile phone", "teddy bear", "hair drier",
    "potted plant", "laptop computer", "home plate",
]  # fmt: skip
_ANIMALS = "bird cat dog horse sheep cow elephant bear zebra giraffe animal cub".split()
_MERGES: dict[str, str] = {w: w for w in _DOUBLE_WORDS}
_MERGES |= {f"{age} {a}": a for a in _ANIMALS for age in ("baby", "adult")}
_MERGES |= {f"passenger {v}": v for v in ("jet", "train")}
_MERGES |= {"bow tie": "tie", "toilet seat": "toilet"}

_IRREGULAR = {"mice": "mouse", "geese": "goose"}
_WORD = re.compile(r"[^\W_]+(?:-[^\W_]+)*")


@functools.cache
def coco_synonyms() -> dict[str, str]:
    """Every CHAIR vocabulary word (category names included) → its COCO category name."""
    doc = json.loads(_SYNONYMS_FILE.read_text(encoding="utf-8"))
    table: dict[str, str] = {}
    for cat in doc["categories"]:
        for word in [cat["name"], *cat["synonyms"]]:
            table[word] = cat["name"]
    return table


@functools.cache
def _known_words() -> frozenset[str]:
    # Words worth singularising into: vocabulary entries and both halves of every two-word term.
    words = set(coco_synonyms())
    for term in _MERGES:
        words.update(term.split())
    return frozenset(words)


def singularize(word: str) -> str:
    """The vocabulary-guided plural rule of CHAIR matching (module docstring): "knives" → "knife"."""
    known = _known_words()
    if word in known:
        return word
    if word in _IRREGULAR:
        return _IRREGULAR[word]
    candidates: list[str] = []
    if word.endswith("men"):
        candidates.append(word[:-3] + "man")
    if word.endswith("children"):
        candidates.append(word[:-3])
    if word.endswith("ies"):
        # Only -y/-ie: "skies" must not fall through to the -s rule and become "ski".
        candidates += [word[:-3] + "y", word[:-3] + "ie"]
    elif word.endswith("s") and not word.endswith("ss"):
        if word.endswith("ves"):
            candidates += [word[:-3] + "f", word[:-3] + "fe"]
        if word.endswith("es") and re.search(r"(s|x|z|ch|sh|o)$", word[:-2]):
            candidates.append(word[:-2])
        candidates.append(word[:-1])
    return next((c for c in candidates if c in known), word)


def caption_objects(caption: str) -> list[tuple[str, str]]:
    """The COCO object mentions of a caption, in order, as (word or term as matched, category).

    Follows the CHAIR word pipeline of the module docstring, e.g. "Two hot dogs and a puppy" →
    [("hot dog", "hot dog"), ("puppy", "dog")].
    """
    words = [singularize(w) for w in _WORD.findall(caption.lower())]
    merged: list[str] = []
    i = 0
    while i < len(words):
        pair = " ".join(words[i : i + 2])
        if i + 1 < len(words) and pair in _MERGES:
            merged.append(_MERGES[pair])
            i += 2
        else:
            merged.append(words[i])
            i += 1
    if "toilet" in merged:
        merged = [w for w in merged if w != "seat"]
    vocab = coco_synonyms()
    return [(w, vocab[w]) for w in merged if w in vocab]


def image_objects(categories: Iterable[str] = (), captions: Iterable[str] = ()) -> set[str]:
    """Ground-truth objects of an image as CHAIR builds them: its annotated categories ∪ objects in its captions.

    `categories` are COCO category names (or any vocabulary word); `captions` are the human captions.
    """
    vocab = coco_synonyms()
    objects: set[str] = set()
    for name in categories:
        key = name.strip().lower()
        if key not in vocab:
            raise ValueError(f"{name!r} is not a COCO category or CHAIR synonym")
        objects.add(vocab[key])
    for caption in captions:
        objects.update(cat for _, cat in caption_objects(caption))
    return objects


@dataclass(frozen=True)
class CaptionHallucination:
    """One scored caption: its key, every object mention, and the hallucinated ones, as (word, category)."""

    key: Hashable
    mentions: tuple[tuple[str, str], ...]
    hallucinated: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ChairResult:
    """CHAIR scores with their counts.

    `chair_i = hallucinated_mentions / mentions` (0.0 when nothing was mentioned) and
    `chair_s = hallucinated_captions / captions`. `recall` is lmms-eval's object recall: distinct
    ground-truth objects mentioned / distinct ground-truth objects, summed over captions.
    """

    chair_i: float
    chair_s: float
    mentions: int
    hallucinated_mentions: int
    captions: int
    hallucinated_captions: int
    recall: float
    per_caption: tuple[CaptionHallucination, ...] = field(repr=False)

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready summary (per-caption details left out)."""
        return {
            "chair_i": self.chair_i,
            "chair_s": self.chair_s,
            "mentions": self.mentions,
            "hallucinated_mentions": self.hallucinated_mentions,
            "captions": self.captions,
            "hallucinated_captions": self.hallucinated_captions,
            "recall": self.recall,
        }


def chair(
    captions: Mapping[Hashable, str] | Iterable[tuple[Hashable, str]],
    ground_truth: Mapping[Hashable, Iterable[str]],
) -> ChairResult:
    """CHAIR_i and CHAIR_s of generated captions.

    `captions` maps an image key to its generated caption (or is a sequence of (key, caption) pairs when an
    image has several); `ground_truth` maps each key to the image's object categories (build them with
    `image_objects`). Convention: CHAIR's word pipeline with a simple plural rule (module docstring).
    """
    pairs = list(captions.items()) if isinstance(captions, Mapping) else list(captions)
    scored: list[CaptionHallucination] = []
    found = expected = 0
    for key, caption in pairs:
        if key not in ground_truth:
            raise KeyError(f"no ground-truth objects for {key!r}")
        gt = set(ground_truth[key])
        mentions = caption_objects(caption)
        scored.append(
            CaptionHallucination(key, tuple(mentions), tuple(m for m in mentions if m[1] not in gt))
        )
        found += len(gt & {cat for _, cat in mentions})
        expected += len(gt)
    mentions_n = sum(len(c.mentions) for c in scored)
    halluc_n = sum(len(c.hallucinated) for c in scored)
    halluc_caps = sum(bool(c.hallucinated) for c in scored)
    return ChairResult(
        chair_i=halluc_n / mentions_n if mentions_n else 0.0,
        chair_s=halluc_caps / len(scored) if scored else 0.0,
        mentions=mentions_n,
        hallucinated_mentions=halluc_n,
        captions=len(scored),
        hallucinated_captions=halluc_caps,
        recall=found / expected if expected else 0.0,
        per_caption=tuple(scored),
    )


# --------------------------------------------------------------------------------------------------------
# POPE


def pope_answer(text: str) -> bool:
    """POPE's reading of a free-form answer: True for "yes", False for "no".

    Convention (RUCAIBox/POPE `evaluate.py`, also LLaVA's `eval_pope.py`): keep the text before the first
    ".", delete commas, split on spaces; the answer is "no" if a word is exactly "No", "no" or "not", and "yes"
    otherwise — so empty or unrelated text counts as yes, and "NO" or "Not" (other capitalisations) too.
    """
    first = text.split(".")[0].replace(",", "")
    return not any(w in ("No", "no", "not") for w in first.split(" "))


def _as_yes(value: bool | str) -> bool:
    return value if isinstance(value, bool) else pope_answer(value)


@dataclass(frozen=True)
class PopeResult:
    """POPE scores, "yes" being the positive class; `yes_ratio` is the fraction of PREDICTED yes."""

    accuracy: float
    precision: float
    recall: float
    f1: float
    yes_ratio: float
    tp: int
    fp: int
    tn: int
    fn: int

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready form."""
        return dict(self.__dict__)


def pope_metrics(predictions: Sequence[bool | str], labels: Sequence[bool | str]) -> PopeResult:
    """Accuracy, precision, recall, F1 and yes-ratio of yes/no predictions against POPE labels.

    `predictions` are booleans (True = yes) or raw answers, read with `pope_answer`; `labels` are booleans or
    the strings "yes"/"no" of the question files. Undefined ratios (no predicted or no true yes) are 0.0.
    lmms-eval's `pope_yes_ratio` counts the ground-truth yes instead (always 0.5 on balanced splits); this one
    counts predictions, as POPE does.
    """
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} questions")
    truth: list[bool] = []
    for label in labels:
        if isinstance(label, bool):
            truth.append(label)
        elif label.strip().lower() in ("yes", "no"):
            truth.append(label.strip().lower() == "yes")
        else:
            raise ValueError(f"a POPE label must be 'yes' or 'no', got {label!r}")
    pred = [_as_yes(p) for p in predictions]
    tp = sum(p and t for p, t in zip(pred, truth, strict=True))
    fp = sum(p and not t for p, t in zip(pred, truth, strict=True))
    tn = sum(not p and not t for p, t in zip(pred, truth, strict=True))
    fn = sum(not p and t for p, t in zip(pred, truth, strict=True))
    n = len(pred)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return PopeResult(
        accuracy=(tp + tn) / n if n else 0.0,
        precision=precision,
        recall=recall,
        f1=2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        yes_ratio=(tp + fp) / n if n else 0.0,
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
    )

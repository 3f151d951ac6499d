"""Caption metrics through pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L and CIDEr(-D), as the COCO caption server.

Convention (pycocoevalcap 1.2 = coco-caption; docs/evaluation.md, "Captions"): candidates and references are
lower-cased and tokenised by the Stanford PTB tokenizer (Java), punctuation tokens are dropped, then
- BLEU is corpus-level with the "closest" reference length for the brevity penalty;
- METEOR 1.5 runs as a Java process (`-l en -norm`);
- ROUGE-L is the LCS F-measure (beta 1.2), precision and recall each maxed over references, averaged over images;
- CIDEr is CIDEr-D (n = 1..4, sigma 6, ×10) whose IDF comes from the references of the images scored, so a
  CIDEr computed on one subset must not be compared with one computed on another.
SPICE is not offered: it downloads Stanford CoreNLP on first use, which cannot work offline.

Without Java nothing is silently replaced. By default every metric is then reported as `MetricUnavailable`
with the reason: BLEU, ROUGE-L and CIDEr are pure Python, but on other tokens their numbers differ from the
standard ones and would be mistaken for them. `python_tokenizer=True` opts in to a pure-Python imitation of
the PTB tokenizer; the result says `tokenizer="python (non-standard)"`, and METEOR stays unavailable.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

CAPTION_METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")
PTB = "ptb"
PYTHON_TOKENIZER = "python (non-standard)"

# Tokens the coco-caption wrapper deletes after PTB tokenisation (PTB's names for brackets included).
_PTB_PUNCT = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
_CLITIC = re.compile(r"(\w)('s|'re|'ve|'ll|'d|'m|n't)\b")
_TOKEN = re.compile(r"n't|'\w+|\w+(?:[-./]\w+)*|[^\w\s]+")


@dataclass(frozen=True)
class MetricUnavailable:
    """A metric that could not be computed, with the reason (e.g. Java is missing)."""

    reason: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return {"unavailable": self.reason}


@dataclass(frozen=True)
class CaptionScores:
    """Corpus scores by pycocoevalcap name (`CAPTION_METRICS`) and the tokenizer that produced them."""

    scores: dict[str, float | MetricUnavailable]
    tokenizer: str | None

    def __getitem__(self, name: str) -> float | MetricUnavailable:
        return self.scores[name]

    def available(self) -> dict[str, float]:
        """Only the metrics that were computed."""
        return {k: v for k, v in self.scores.items() if not isinstance(v, MetricUnavailable)}

    def to_dict(self) -> dict[str, object]:
        """JSON-ready form: numbers, or `{"unavailable": reason}` entries."""
        out: dict[str, object] = {
            k: v.to_dict() if isinstance(v, MetricUnavailable) else v for k, v in self.scores.items()
        }
        out["tokenizer"] = self.tokenizer
        return out


@functools.cache
def java_problem() -> str | None:
    """None when a working `java` is on PATH, else why not (the PTB tokenizer and METEOR need it)."""
    java = shutil.which("java")
    if java is None:
        return "Java not found on PATH (needed by the PTB tokenizer and METEOR; apt-get install default-jre-headless)"
    try:
        subprocess.run([java, "-version"], capture_output=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`java -version` failed: {exc}"
    return None


def python_tokenize(text: str) -> str:
    """A pure-Python stand-in for the PTB tokenizer + punctuation filter (lower-cased, space-joined).

    Clitics are split as PTB does ("dog's" → "dog 's", "don't" → "do n't"); punctuation tokens are dropped.
    Not identical to PTB on every input, hence reported as non-standard.
    """
    text = _CLITIC.sub(r"\1 \2", text.replace("\n", " ").lower())
    tokens = [t for t in _TOKEN.findall(text) if t not in _PTB_PUNCT and re.search(r"\w", t)]
    return " ".join(tokens)


def _ptb_tokenize(captions: Mapping[Hashable, Sequence[str]]) -> dict[Hashable, list[str]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # The wrapper keys captions by image and reads `caption` fields; it writes a temp file next to its jar.
    wrapped = {k: [{"caption": c} for c in v] for k, v in captions.items()}
    out = PTBTokenizer().tokenize(wrapped)
    # The wrapper zips output lines with captions and silently drops any shortfall: check every caption came back.
    for k, v in captions.items():
        if len(out.get(k, [])) != len(v):
            raise RuntimeError(f"PTB tokenizer returned {len(out.get(k, []))} of {len(v)} captions for {k!r}")
    return out


def _meteor(gts: dict, res: dict) -> float | MetricUnavailable:
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = None
    try:
        scorer = Meteor()
        score, _ = scorer.compute_score(gts, res)
        return float(score)
    except Exception as exc:  # the Java process can die (memory, missing jar); report it, do not crash
        return MetricUnavailable(f"METEOR failed: {exc!r}")
    finally:
        # Stop the Java process now rather than whenever the wrapper is garbage-collected.
        proc = getattr(scorer, "meteor_p", None)
        if proc is not None:
            proc.kill()
            proc.wait()


def caption_scores(
    candidates: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    *,
    meteor: bool = True,
    python_tokenizer: bool = False,
) -> CaptionScores:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr of one candidate caption per image against its references.

    `candidates` maps an image key to the generated caption; `references` maps the same keys to the human
    captions (extra reference keys are ignored, as pycocoevalcap does with `params['image_id']` set to the
    scored images). Convention: the COCO caption server's (module docstring). Without Java every metric is
    `MetricUnavailable` unless `python_tokenizer=True`; `meteor=False` skips METEOR (its JVM start is slow).
    """
    unknown = [k for k in candidates if k not in references]
    if unknown:
        raise KeyError(f"candidates without references: {unknown[:5]}")
    if any(not references[k] for k in candidates):
        raise ValueError("every scored image needs at least one reference caption")
    try:
        import pycocoevalcap  # noqa: F401
    except ImportError:
        gone = MetricUnavailable("pycocoevalcap is not installed (pip install pycocoevalcap)")
        return CaptionScores(dict.fromkeys(CAPTION_METRICS, gone), None)
    if not candidates:
        raise ValueError("no candidate captions to score")

    refs = {k: list(references[k]) for k in candidates}
    cands = {k: [candidates[k]] for k in candidates}
    problem = java_problem()
    if problem is None:
        tokenizer = PTB
        try:
            gts, res = _ptb_tokenize(refs), _ptb_tokenize(cands)
        except (
            Exception
        ) as exc:  # e.g. the package folder is read-only (the wrapper writes a temp file there)
            problem = f"PTB tokenizer failed: {exc!r}"
    if problem is not None:
        if not python_tokenizer:
            gone = MetricUnavailable(f"{problem}; scores without the PTB tokenizer are not the standard ones")
            return CaptionScores(dict.fromkeys(CAPTION_METRICS, gone), None)
        tokenizer = PYTHON_TOKENIZER
        gts = {k: [python_tokenize(c) for c in v] for k, v in refs.items()}
        res = {k: [python_tokenize(c) for c in v] for k, v in cands.items()}

    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    scores: dict[str, float | MetricUnavailable] = {}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    scores.update({f"Bleu_{n + 1}": float(b) for n, b in enumerate(bleu)})
    if not meteor:
        scores["METEOR"] = MetricUnavailable("not requested (meteor=False)")
    elif problem is not None:
        scores["METEOR"] = MetricUnavailable(problem)
    else:
        scores["METEOR"] = _meteor(gts, res)
    scores["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    scores["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return CaptionScores({k: scores[k] for k in CAPTION_METRICS}, tokenizer)

"""VQA metrics: VQAv2 soft accuracy with the official answer normalisation, GQA exact match, VizWiz.

Official VQAv2 normalisation (GT-Vision-Lab/VQA `vqaEval.py`; docs/evaluation.md, "VQA"), in order:
1. newlines and tabs become spaces, then the text is stripped;
2. punctuation: each of ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted when it touches a space
   somewhere in the answer (``"p "`` or ``" p"`` occurs) or when the answer contains a digit-comma-digit
   ("1,000"), and replaced by a space otherwise; both tests look at the answer as it was before this step;
3. periods not followed by a digit are deleted (decimal points survive); apostrophes and colons are kept
   on purpose (possessives, times);
4. lower-case, split on whitespace, number words "none", "zero" … "ten" become "0" … "10", the articles
   "a", "an", "the" are dropped, and contractions written without their apostrophe are repaired
   ("dont" → "don't", "couldnt've" → "couldn't've").

Three entries of the official contraction table are left out: "Im", "Ive", "Id've"/"I'dve" are keyed with a
capital I and can never match after lower-casing, and "somebody'd" is mapped backwards ("somebodyd") there.
The official code also only strips the first 32 periods of an answer (a `count` argument passed by accident);
answers are far shorter. Everything else is the official behaviour.

Soft accuracy: for each of the (10) human answers, leave it out, count the remaining answers equal to the
prediction, and take min(count / 3, 1); the question's accuracy is the mean over the 10 leave-one-out subsets.
So a prediction matching 3 of 10 annotators scores 0.9, and 4 or more score 1.0.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

# Contractions as the official table repairs them. Its keys are exactly these forms with ONE apostrophe
# removed (so "couldn't've" is repaired from "couldnt've" and "couldn'tve", "y'all'd've" from three keys).
_CONTRACTED = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd
he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've might've mustn't must've
needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't shouldn't've somebody'd've
somebody'll somebody's someone'd someone'd've someone'll someone's something'd something'd've something'll
that's there'd there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've
we've weren't what'll what're what's what've when's where'd where's where've who'd who'd've who'll who's
who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've
you'll you're you've
""".split()


def _contraction_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for form in _CONTRACTED:
        for i, ch in enumerate(form):
            if ch == "'":
                table[form[:i] + form[i + 1 :]] = form
    return table


CONTRACTIONS: dict[str, str] = _contraction_table()
NUMBER_WORDS: dict[str, str] = {
    w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())
} | {"none": "0"}
ARTICLES = frozenset({"a", "an", "the"})
# The official punctuation set: note it has no period (handled separately), apostrophe or colon.
PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'

_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
_PERIOD_NOT_DECIMAL = re.compile(r"\.(?!\d)")
_ALL_PUNCT = str.maketrans("", "", string.punctuation)


def process_punctuation(text: str) -> str:
    """Steps 2-3 of the official normalisation: the punctuation rule and the period rule (module docstring)."""
    out = text
    glued_number = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in PUNCTUATION:
        # The official rule tests the answer as given, not the partly cleaned one.
        if glued_number or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_NOT_DECIMAL.sub("", out)


def process_digits_articles(text: str) -> str:
    """Step 4 of the official normalisation: lower-case, number words → digits, drop articles, fix contractions."""
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def normalize_answer(text: str) -> str:
    """The official VQAv2 answer normalisation (module docstring), e.g. "Two dogs!" → "2 dogs"."""
    return process_digits_articles(process_punctuation(_clean(text)))


def _leave_one_out(matches: Sequence[bool]) -> float:
    """Mean over the leave-one-out subsets of min(#matches among the others / 3, 1)."""
    total = sum(matches)
    return sum(min((total - m) / 3, 1.0) for m in matches) / len(matches)


def vqa_accuracy(prediction: str, answers: Sequence[str], *, unanimous_shortcut: bool = False) -> float:
    """VQAv2 soft accuracy of one prediction against the human answers (normally 10), in [0, 1].

    Convention: official normalisation of prediction and answers, then the leave-one-out average of
    min(matches / 3, 1) (module docstring). With `unanimous_shortcut=True` the reference code's quirk is
    reproduced: when all answers are identical (after stripping whitespace) nothing is normalised, so "Yes."
    scores 0 against ten "yes". The default normalises always, as lmms-eval's `vqav2_val` does.
    """
    if not answers:
        raise ValueError("VQA accuracy needs at least one ground-truth answer")
    gts = [_clean(a) for a in answers]
    pred = _clean(prediction)
    if not unanimous_shortcut or len(set(gts)) > 1:
        gts = [normalize_answer(a) for a in gts]
        pred = normalize_answer(pred)
    return _leave_one_out([g == pred for g in gts])


def vqa_score(
    predictions: Sequence[str], answers: Sequence[Sequence[str]], *, unanimous_shortcut: bool = False
) -> float:
    """Mean `vqa_accuracy` over questions (the official "overall" before its ×100 and rounding)."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} questions")
    if not predictions:
        return 0.0
    scores = [
        vqa_accuracy(p, a, unanimous_shortcut=unanimous_shortcut)
        for p, a in zip(predictions, answers, strict=True)
    ]
    return sum(scores) / len(scores)


def exact_match(
    prediction: str, answer: str, *, ignore_case: bool = True, ignore_punctuation: bool = True
) -> bool:
    """GQA-style exact match of one prediction and its single answer, after stripping whitespace.

    Convention (lmms-eval `gqa`, HF `exact_match` with ignore_case and ignore_punctuation): case is ignored
    and every character of `string.punctuation` is deleted from both sides. MiniGPT-v2 compares only
    lower-cased strings (`ignore_punctuation=False`); LLaVA strips one trailing period and lower-cases.
    """
    pred, gt = prediction.strip(), answer.strip()
    if ignore_case:
        pred, gt = pred.lower(), gt.lower()
    if ignore_punctuation:
        pred, gt = pred.translate(_ALL_PUNCT).strip(), gt.translate(_ALL_PUNCT).strip()
    return pred == gt


def exact_match_accuracy(
    predictions: Sequence[str],
    answers: Sequence[str],
    *,
    ignore_case: bool = True,
    ignore_punctuation: bool = True,
) -> float:
    """Fraction of predictions that `exact_match` their answer (GQA accuracy)."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} questions")
    if not predictions:
        return 0.0
    hits = sum(
        exact_match(p, a, ignore_case=ignore_case, ignore_punctuation=ignore_punctuation)
        for p, a in zip(predictions, answers, strict=True)
    )
    return hits / len(predictions)


def vizwiz_accuracy(
    prediction: str, answers: Sequence[str], *, leave_one_out: bool = False, normalize: bool = False
) -> float:
    """VizWiz accuracy of one prediction against its 10 crowd answers, in [0, 1].

    Default convention (MiniGPT-v2 `eval_vqa.py`, the rule behind its VizWiz numbers): prediction and
    answers are only stripped and lower-cased, the prediction is compared with ALL answers (no leave-one-out)
    and the score is min(matches / 3, 1) — so 3 matches score 1.0 where VQAv2 would give 0.9.
    `leave_one_out=True` averages over the leave-one-out subsets as VQAv2 does, and `normalize=True` applies
    the official VQAv2 normalisation instead of lower-casing; with both it equals `vqa_accuracy`
    (lmms-eval's `vizwiz_vqa_val` pre-processes slightly differently: it also deletes "," and "?" and
    splits "'s" before the official steps).
    Unanswerable questions are not special-cased: their answers read "unanswerable", and the prompt asks the
    model to reply with that word, so it is scored like any other answer.
    """
    if not answers:
        raise ValueError("VizWiz accuracy needs at least one ground-truth answer")
    prep = normalize_answer if normalize else (lambda s: _clean(s).lower())
    pred = prep(prediction)
    matches = [prep(a) == pred for a in answers]
    if leave_one_out:
        return _leave_one_out(matches)
    return min(sum(matches) / 3, 1.0)

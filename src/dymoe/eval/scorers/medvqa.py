"""Medical VQA (SMoE's Medicine domain: VQA-RAD, PathVQA, SLAKE): closed accuracy and open recall, LLaVA-Med style.

Two numbers per test set, as SMoE reports them ("Closed(Acc.)/Open(Recall)", following LLaVA-Med): the headline of
the matrix cell is their mean (the "Med. Avg" later papers quote for SMoE, 67.70 for its CL row, is the mean of the
six closed/open numbers). A question is *closed* when its reference row says ``answer_type: CLOSED`` (SLAKE,
LLaVA-Med's files) or, without that field, when its normalised answer is ``yes``/``no`` (VQA-RAD and PathVQA from
the Hugging Face releases carry no type).

``medvqa-llavamed`` is microsoft/LLaVA-Med ``llava/eval/run_eval.py`` + ``eval_metrics/`` as written:

* both strings are lower-cased and passed through ``normalize_word`` (ported below);
* closed: if ``"yes"`` or ``"no"`` occurs in the prediction as a *substring* (so "no" in "normal", "know"), a hit
  when the answer is a substring of the prediction — and a miss is **not counted at all** (the script appends
  nothing: wrong yes/no answers leave the denominator); a prediction without either substring counts 0;
* open: ``calculate_f1score``'s recall (normalising again; ``tp`` counts the prediction's occurrences of shared
  words, so repeated words inflate it).

``medvqa`` (the clean variant SMoE's spec proposes) keeps the normalisation but matches words: a closed question is
a hit iff the answer's words occur contiguously in the prediction's words (and, for a yes/no answer, the opposite
word does not occur); every closed question counts. Open recall is the multiset word recall
``sum_w min(c_pred(w), c_gold(w)) / sum_w c_gold(w)``. A missing prediction scores 0. Both iterate over the
references in ``medvqa`` and over the predictions in ``medvqa-llavamed`` (the script zips the two files).
"""

from __future__ import annotations

import re
from collections import Counter

from dymoe.errors import DataError
from dymoe.eval.scorers.base import (
    ScoreResult,
    index_predictions,
    index_references,
    lookup,
    pred_text,
    require_qid,
    with_headline,
)
from dymoe.eval.scorers.evalai import ARTICLES, CONTRACTIONS, NUMBER_MAP

_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_STRIP = re.compile(r"(\d)(\,)(\d)")  # LLaVA-Med's version (EvalAI's differs)
_PUNCT = (";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")


def normalize_word(token: str) -> str:
    """LLaVA-Med's ``glossary.normalize_word`` (EvalAI-like punctuation, number words, articles, contractions)."""
    out = token
    for p in _PUNCT:
        if (p + " " in token or " " + p in token) or (re.search(_COMMA_STRIP, token) is not None):
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    token = _PERIOD_STRIP.sub("", out, re.UNICODE)  # noqa: B034 - the reference's count=32 quirk, kept
    words = [NUMBER_MAP.get(w, w) for w in token.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words).replace(",", "")


def answer_text(row: dict, where: str) -> str:
    """The gold answer: ``answer``, else the second turn of LLaVA-Med's ``conversations``/``conversatons``."""
    if "answer" in row:
        return str(row["answer"])
    conv = row.get("conversations", row.get("conversatons"))
    if isinstance(conv, list) and len(conv) > 1 and isinstance(conv[1], dict):
        return str(conv[1].get("value", ""))
    raise DataError(f"{where}: missing field 'answer'")


def is_closed(row: dict, where: str) -> bool:
    """``answer_type`` CLOSED/OPEN when given, else whether the normalised answer is yes or no."""
    kind = row.get("answer_type")
    if kind is not None:
        kind = str(kind).upper()
        if kind not in ("CLOSED", "OPEN"):
            raise DataError(f"{where}: answer_type must be CLOSED or OPEN, got {row['answer_type']!r}")
        return kind == "CLOSED"
    return normalize_word(answer_text(row, where).lower()) in ("yes", "no")


def llavamed_recall(candidate: str, reference: str) -> float:
    """``calculate_f1score(candidate, reference)[2]`` of LLaVA-Med (quirks kept)."""
    cand = Counter(normalize_word(candidate).lower().strip().split())
    ref = Counter(normalize_word(reference).lower().strip().split())
    if not cand or not ref:
        return 0.0
    tp = sum(c for w, c in cand.items() if w in ref)
    fn = sum(c for w, c in ref.items() if w not in cand)
    return tp / (tp + fn) if tp else 0.0


def word_recall(candidate: str, reference: str) -> float:
    """Multiset word recall of the normalised reference in the normalised candidate."""
    cand = Counter(normalize_word(candidate).split())
    ref = Counter(normalize_word(reference).split())
    total = sum(ref.values())
    return sum(min(c, cand[w]) for w, c in ref.items()) / total if total else 0.0


def closed_hit(candidate: str, reference: str) -> bool:
    """Clean closed-question hit: the answer's words appear contiguously; a yes/no answer must be unambiguous."""
    cand = normalize_word(candidate.lower()).split()
    gold = normalize_word(reference.lower()).split()
    if not gold:
        return False
    if gold in (["yes"], ["no"]) and ("no" if gold == ["yes"] else "yes") in cand:
        return False
    return any(cand[i: i + len(gold)] == gold for i in range(len(cand) - len(gold) + 1))


def _result(closed: list[tuple[str, float]], opened: list[tuple[str, float]], n: int, dropped: int = 0):
    closed_acc = 100.0 * sum(s for _, s in closed) / len(closed) if closed else 0.0
    open_rec = 100.0 * sum(s for _, s in opened) / len(opened) if opened else 0.0
    parts = [x for x in (closed_acc if closed else None, open_rec if opened else None) if x is not None]
    headline = sum(parts) / len(parts) if parts else 0.0
    per = {qid: s for qid, s in closed + opened}
    res = ScoreResult(accuracy=headline, n=n, correct=headline * n / 100.0,
                      details={"per_sample": per, "n_closed": len(closed), "n_open": len(opened)})
    if dropped:
        res.details["closed_dropped"] = dropped
    return with_headline(res, "mean_closed_open", {"closed_accuracy": closed_acc, "open_recall": open_rec})


def score_medvqa(predictions: list[dict], references: list[dict], annotations: dict | None = None) -> ScoreResult:
    """Clean closed accuracy / open recall over the references; headline = their mean (one of them if the set
    has only closed or only open questions)."""
    preds = index_predictions(predictions)
    closed, opened = [], []
    for i, row in enumerate(references):
        where = f"reference row {i}"
        qid = require_qid(row, where)
        gold = answer_text(row, where)
        text = preds.get(qid, "")
        if is_closed(row, where):
            closed.append((qid, float(qid in preds and closed_hit(text, gold))))
        else:
            opened.append((qid, word_recall(text, gold) if qid in preds else 0.0))
    return _result(closed, opened, len(references))


def score_medvqa_llavamed(
    predictions: list[dict], references: list[dict], annotations: dict | None = None
) -> ScoreResult:
    """LLaVA-Med's own closed accuracy / open recall (quirks kept, see the module docstring)."""
    refs = index_references(references)
    closed, opened = [], []
    dropped = 0
    for i, p in enumerate(predictions):
        where = f"prediction {i}"
        qid = require_qid(p, where)
        row = lookup(refs, qid, where, "the references")
        gold = normalize_word(answer_text(row, f"reference {qid!r}").lower())
        text = normalize_word(pred_text(p, where).lower())
        if is_closed(row, f"reference {qid!r}"):
            if "yes" in text or "no" in text:
                if gold in text:
                    closed.append((qid, 1.0))
                else:
                    dropped += 1
            else:
                closed.append((qid, 0.0))
        else:
            opened.append((qid, llavamed_recall(text, gold)))
    return _result(closed, opened, len(predictions), dropped)

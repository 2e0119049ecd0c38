"""VizWiz and VQAv2: upper-cased exact match against the single ``answer`` (CoIN ``eval_vizwiz.py``,
``eval_vqav2.py``); both scripts import the TextVQA soft-accuracy evaluator but never use it."""

from __future__ import annotations

from dymoe.eval.scorers.base import (
    ScoreResult,
    field_of,
    index_predictions,
    index_references,
    lookup,
    make_result,
    pred_text,
    require_qid,
    soft_normalise,
)
from dymoe.eval.scorers.evalai import soft_accuracy


def score_exact_upper(
    predictions: list[dict], references: list[dict], annotations: dict | None = None
) -> ScoreResult:
    """CoIN VizWiz / VQAv2 accuracy (reference behaviour, quirks kept).

    Iterates over the *predictions* (denominator = number of prediction lines, duplicates included; references
    without a prediction are not counted), looks each up by ``question_id`` and scores ``text.upper() ==
    answer.upper()``: no stripping, no VQA soft score over the 10 human answers, no special case for
    "unanswerable". An empty prediction is wrong.
    """
    refs = index_references(references)
    per = []
    for i, p in enumerate(predictions):
        qid = require_qid(p, f"prediction {i}")
        row = lookup(refs, qid, f"prediction {i}", "the references")
        answer = str(field_of(row, "answer", f"reference {qid!r}"))
        per.append((qid, float(pred_text(p, f"prediction {i}").upper() == answer.upper())))
    return make_result(per)


def score_vqa_strict(predictions: list[dict], references: list[dict], annotations: dict | None = None) -> ScoreResult:
    """VizWiz / VQAv2 over the *references*: with a list ``answers`` (the human answers) the VQA soft accuracy
    ``min(1, matches/3)`` (leave-one-out, EvalAI normalisation); otherwise normalised exact match with
    ``answer`` (strip, trailing periods, lower-case). A missing prediction is wrong."""
    preds = index_predictions(predictions)
    per = []
    for i, r in enumerate(references):
        qid = require_qid(r, f"reference row {i}")
        if qid not in preds:
            per.append((qid, 0.0))
            continue
        answers = r.get("answers")
        if isinstance(answers, list) and answers and all(isinstance(a, str) for a in answers):
            per.append((qid, soft_accuracy(preds[qid], answers)))
        else:
            answer = str(field_of(r, "answer", f"reference row {i}"))
            per.append((qid, float(soft_normalise(preds[qid]) == soft_normalise(answer))))
    return make_result(per, missing=sum(1 for q, _ in per if q not in preds))

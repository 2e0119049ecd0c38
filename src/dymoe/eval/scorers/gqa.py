"""GQA: exact match on the balanced test-dev questions (CoIN ``convert_gqa_for_eval.py`` + ``eval_gqa.py``).

Ground truth per ``question_id``: the side file ``questions`` (``testdev_balanced_questions.json``:
``{qid: {"answer": str, "isBalanced": bool, ...}}``), else the ``annotation`` entry merged into the reference row,
else the row's inline ``answer`` (then every question counts as balanced).
"""

from __future__ import annotations

from typing import Any

from dymoe.errors import DataError
from dymoe.eval.scorers.base import (
    ScoreResult,
    index_predictions,
    index_references,
    make_result,
    pred_text,
    require_qid,
    side_entry,
    soft_normalise,
)


def convert_prediction(text: str) -> str:
    """``text.rstrip('.').lower()``, then drop *one* leading space (convert_gqa_for_eval.py)."""
    text = text.rstrip(".").lower()
    return text[1:] if text[:1] == " " else text


def _gold(row: dict[str, Any], where: str) -> tuple[str, bool]:
    answer = row.get("answer")
    if not isinstance(answer, str):
        raise DataError(f"{where}: expected a string 'answer', got {answer!r}")
    return answer, bool(row.get("isBalanced", True))


def _truth(qid: str, refs: dict[str, dict], questions: dict | None, where: str) -> tuple[str, bool]:
    if questions is not None:
        if qid not in questions:
            raise DataError(f"{where}: question_id {qid!r} is not in the GQA questions file")
        return _gold(questions[qid], f"questions[{qid!r}]")
    if qid not in refs:
        raise DataError(f"{where}: question_id {qid!r} is not in the references")
    row = refs[qid]
    return _gold(side_entry(row, None) or row, where)


def score_gqa(predictions: list[dict], references: list[dict], annotations: dict | None = None) -> ScoreResult:
    """CoIN GQA accuracy (reference behaviour).

    Iterates over the *predictions* (a dict by ``questionId``: a repeated id keeps the last one; questions without
    a prediction are simply not counted). Each prediction is converted by :func:`convert_prediction` and compared
    with ``answer`` by exact string equality; only questions with ``isBalanced`` count (denominator = balanced
    predicted questions). An empty prediction is wrong. Unknown ids are an error (the reference raises KeyError).
    """
    questions = (annotations or {}).get("questions")
    refs = index_references(references) if questions is None else {}
    preds: dict[str, str] = {}
    for i, p in enumerate(predictions):
        preds[require_qid(p, f"prediction {i}")] = convert_prediction(pred_text(p, f"prediction {i}"))
    per = []
    unbalanced = 0
    for qid, text in preds.items():
        answer, balanced = _truth(qid, refs, questions, f"prediction for {qid!r}")
        if balanced:
            per.append((qid, float(text == answer)))
        else:
            unbalanced += 1
    return make_result(per, unbalanced=unbalanced)


def score_gqa_strict(predictions: list[dict], references: list[dict], annotations: dict | None = None) -> ScoreResult:
    """GQA over the *references* (balanced ones when the side file says so): normalised exact match (strip,
    trailing periods, lower-case); a missing prediction is wrong."""
    questions = (annotations or {}).get("questions")
    refs = index_references(references)
    preds = index_predictions(predictions)
    per = []
    for qid in refs:
        answer, balanced = _truth(qid, refs, questions, f"reference {qid!r}")
        if balanced:
            per.append((qid, float(qid in preds and soft_normalise(preds[qid]) == soft_normalise(answer))))
    return make_result(per, missing=sum(1 for q, _ in per if q not in preds))

"""TextVQA: soft accuracy with the EvalAI normalisation (CoIN ``eval_textvqa.py`` + ``m4c_evaluator.py``).

Ground truth per ``question_id``: the side file ``annotations`` (``TextVQA_0.5.1_val.json``: ``{"data": [{
"question_id", "answers": [10 strings]}]}``), else the ``annotation`` entry merged into the reference row, else the
row's inline ``answers`` list (or a single inline ``answer``, repeated 10 times: exact match then scores 1).
"""

from __future__ import annotations

from typing import Any

from dymoe.errors import DataError
from dymoe.eval.scorers.base import (
    ScoreResult,
    index_predictions,
    index_references,
    lookup,
    make_result,
    pred_text,
    qid_key,
    require_qid,
    side_entry,
)
from dymoe.eval.scorers.evalai import soft_accuracy


def _side_index(annotations: dict | None) -> dict[str, Any] | None:
    if not annotations or annotations.get("annotations") is None:
        return None
    data = annotations["annotations"]
    data = data.get("data") if isinstance(data, dict) else data
    if not isinstance(data, list):
        raise DataError("annotations (TextVQA): expected {'data': [...]} or a list of entries")
    return {qid_key(a.get("question_id")): a for a in data}


def _answers(row: dict[str, Any], side: dict[str, Any] | None, where: str) -> list[str]:
    entry = side_entry(row, side)
    if side is not None and entry is None:
        raise DataError(f"{where}: question_id {row.get('question_id')!r} is not in the TextVQA annotations")
    src = entry if entry is not None else row
    answers = src.get("answers")
    if answers is None and isinstance(src.get("answer"), str):
        answers = [src["answer"]] * 10
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers) or not answers:
        raise DataError(f"{where}: expected 'answers' as a list of strings, got {answers!r}")
    return answers


def score_textvqa(predictions: list[dict], references: list[dict], annotations: dict | None = None) -> ScoreResult:
    """CoIN TextVQA accuracy (reference behaviour).

    Iterates over the *predictions* (the denominator is the number of prediction lines; duplicates count twice,
    references without a prediction are not counted); each is looked up by ``question_id`` (unknown id: error, the
    reference crashes with KeyError). Requires exactly 10 answers per question (the reference asserts it). An
    empty prediction normalises to ``""`` and scores 0 unless annotators answered with an empty string.
    """
    side = _side_index(annotations)
    refs = index_references(references)
    per = []
    for i, p in enumerate(predictions):
        where = f"prediction {i}"
        qid = require_qid(p, where)
        row = side.get(qid) if side is not None else lookup(refs, qid, where, "the references")
        if row is None:
            raise DataError(f"{where}: question_id {qid!r} is not in the TextVQA annotations")
        answers = _answers(row, None, where)
        if len(answers) != 10:
            raise DataError(f"{where}: expected 10 answers for question_id {qid!r}, got {len(answers)}")
        per.append((qid, soft_accuracy(pred_text(p, where), answers)))
    return make_result(per)


def score_textvqa_strict(
    predictions: list[dict], references: list[dict], annotations: dict | None = None
) -> ScoreResult:
    """TextVQA soft accuracy over the *references*: a missing prediction scores 0, a repeated one keeps the last,
    any number of answers is accepted (leave-one-out over however many there are)."""
    side = _side_index(annotations)
    preds = index_predictions(predictions)
    per = []
    for i, r in enumerate(references):
        qid = require_qid(r, f"reference row {i}")
        answers = _answers(r, side, f"reference row {i}")
        per.append((qid, soft_accuracy(preds[qid], answers) if qid in preds else 0.0))
    return make_result(per, missing=sum(1 for qid, _ in per if qid not in preds))

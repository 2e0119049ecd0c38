"""OCR-VQA: lower-cased exact match (CoIN ``eval_ocrvqa.py``)."""

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


def score_ocrvqa(predictions: list[dict], references: list[dict], annotations: dict | None = None) -> ScoreResult:
    """CoIN OCR-VQA accuracy (reference behaviour, quirks kept).

    Iterates over the *predictions* (denominator = number of prediction lines); looks each up by ``question_id``.
    A prediction containing ``"Unanswerable"`` (case-sensitive) is skipped but stays in the denominator (so it
    is wrong even if the answer is "Unanswerable"); otherwise correct iff ``text.lower() == answer.lower()``
    (no stripping). An empty prediction is wrong.
    """
    refs = index_references(references)
    per = []
    skipped = 0
    for i, p in enumerate(predictions):
        qid = require_qid(p, f"prediction {i}")
        row = lookup(refs, qid, f"prediction {i}", "the references")
        answer = str(field_of(row, "answer", f"reference {qid!r}"))
        text = pred_text(p, f"prediction {i}")
        if "Unanswerable" in text:
            skipped += 1
            per.append((qid, 0.0))
            continue
        per.append((qid, float(text.lower() == answer.lower())))
    return make_result(per, unanswerable=skipped)


def score_ocrvqa_strict(
    predictions: list[dict], references: list[dict], annotations: dict | None = None
) -> ScoreResult:
    """OCR-VQA over the *references*: normalised exact match (strip, trailing periods, lower-case), no
    "Unanswerable" skip; a missing prediction is wrong."""
    preds = index_predictions(predictions)
    per = []
    for i, r in enumerate(references):
        qid = require_qid(r, f"reference row {i}")
        answer = soft_normalise(str(field_of(r, "answer", f"reference row {i}")))
        per.append((qid, float(qid in preds and soft_normalise(preds[qid]) == answer)))
    return make_result(per, missing=sum(1 for q, _ in per if q not in preds))

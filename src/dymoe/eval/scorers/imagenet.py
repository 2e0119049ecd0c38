"""ImageNet as QA: bidirectional substring match (CoIN ``eval_ImagetNet.py``)."""

from __future__ import annotations

from dymoe.errors import DataError
from dymoe.eval.scorers.base import (
    ScoreResult,
    field_of,
    index_predictions,
    make_result,
    pred_text,
    require_qid,
    soft_normalise,
)


def score_imagenet(predictions: list[dict], references: list[dict], annotations: dict | None = None) -> ScoreResult:
    """CoIN ImageNet accuracy (reference behaviour, quirks kept).

    * Aligned by **list position**, not by ``question_id``: prediction ``i`` is compared with reference row ``i``
      (the reference relies on ``merge.jsonl`` being in test-file order). The denominator is the number of
      predictions; more predictions than references is an error (the reference raises IndexError).
    * Correct iff ``answer in text or text in answer``: case-sensitive, bidirectional substring. So an **empty
      prediction is correct** (``"" in answer``), "dog" is correct for "hot dog", and "a photo of a tabby cat" is
      correct for "tabby cat".
    """
    if len(predictions) > len(references):
        raise DataError(
            f"ImageNet scorer aligns by position: {len(predictions)} predictions but only {len(references)} references"
        )
    per = []
    for i, p in enumerate(predictions):
        text = pred_text(p, f"prediction {i}")
        answer = field_of(references[i], "answer", f"reference row {i}")
        per.append((p.get("question_id", i), float(answer in text or text in answer)))
    return make_result(per)


def score_imagenet_strict(
    predictions: list[dict], references: list[dict], annotations: dict | None = None
) -> ScoreResult:
    """ImageNet matched by ``question_id`` over the references: correct iff the normalised prediction
    (strip, trailing period, lower-case, squeezed spaces) equals the normalised answer. Empty or missing = wrong."""
    preds = index_predictions(predictions)
    per = []
    for i, r in enumerate(references):
        qid = require_qid(r, f"reference row {i}")
        answer = soft_normalise(str(field_of(r, "answer", f"reference row {i}")))
        text = soft_normalise(preds.get(qid, ""))
        per.append((qid, float(bool(text) and text == answer)))
    return make_result(per, missing=sum(1 for q, _ in per if q not in preds))

"""Referring-expression grounding: IoU > 0.5 on square-padded, normalised boxes (CoIN ``eval_grounding.py``).

References carry ``answer_bbox`` (a string ``"[x1, y1, x2, y2]"`` in [0, 1] coordinates of the image padded to a
square) and ``size`` (``[w, h]`` of the original image).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from dymoe.errors import DataError
from dymoe.eval.scorers.base import (
    ScoreResult,
    field_of,
    index_predictions,
    index_references,
    lookup,
    make_result,
    pred_text,
    require_qid,
)

Box = list[float]


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``[x1, y1, x2, y2]`` boxes; 0 when the union is not positive."""
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def parse_box_legacy(text: str) -> Box | None:
    """The reference parser, quirks kept: drop one leading space, remove ``[``/``]``, then ``text[1:-1]``
    (drops the first and the last character), split on ``,`` and ``float`` each part.

    "[0.12, 0.34, 0.56, 0.78]" → ``[0.12, 0.34, 0.56, 0.7]`` (the last digit is lost; the leading "0" of
    "0.12" goes harmlessly). Returns ``None`` (sample wrong) unless exactly 4 floats parse.
    """
    text = text[1:] if text[:1] == " " else text
    text = text.replace("[", "").replace("]", "")
    try:
        box = [float(x) for x in text[1:-1].split(",")]
    except ValueError:
        return None
    return box if len(box) == 4 else None


_NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def parse_box_strict(text: str) -> Box | None:
    """Robust parser: the first four numbers anywhere in the text (brackets, spaces, words ignored)."""
    nums = _NUMBER.findall(text)
    return [float(x) for x in nums[:4]] if len(nums) >= 4 else None


def _truth(row: dict, where: str) -> tuple[Box, float]:
    raw = str(field_of(row, "answer_bbox", where))
    try:
        box = [float(x) for x in raw.replace("[", "").replace("]", "").split(",")]
    except ValueError:
        box = []
    if len(box) != 4:
        raise DataError(f"{where}: expected 'answer_bbox' as '[x1, y1, x2, y2]', got {raw!r}")
    size = field_of(row, "size", where)
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, (int, float)) for s in size)):
        raise DataError(f"{where}: expected 'size' as [width, height], got {size!r}")
    return box, float(max(size))


def _hit(pred: Box | None, gt: Box, max_wh: float) -> float:
    if pred is None:
        return 0.0
    # both boxes are scaled to padded-square pixels like the reference; IoU itself is scale invariant
    return float(iou([x * max_wh for x in pred], [x * max_wh for x in gt]) > 0.5)


def score_grounding(predictions: list[dict], references: list[dict], annotations: dict | None = None) -> ScoreResult:
    """CoIN grounding accuracy (reference behaviour, quirks kept).

    Iterates over the *predictions* (denominator = number of prediction lines); each is looked up by
    ``question_id``. The box is parsed by :func:`parse_box_legacy`; an unparsable box (empty prediction
    included) is skipped but stays in the denominator. Correct iff IoU **> 0.5** (0.5 exactly is wrong).
    """
    refs = index_references(references)
    per = []
    unparsed = 0
    for i, p in enumerate(predictions):
        qid = require_qid(p, f"prediction {i}")
        gt, max_wh = _truth(lookup(refs, qid, f"prediction {i}", "the references"), f"reference {qid!r}")
        box = parse_box_legacy(pred_text(p, f"prediction {i}"))
        unparsed += box is None
        per.append((qid, _hit(box, gt, max_wh)))
    return make_result(per, unparsed=unparsed)


def score_grounding_strict(
    predictions: list[dict], references: list[dict], annotations: dict | None = None
) -> ScoreResult:
    """Grounding over the *references* with :func:`parse_box_strict`; a missing or unparsable prediction is
    wrong; IoU > 0.5."""
    preds = index_predictions(predictions)
    per = []
    unparsed = 0
    for i, r in enumerate(references):
        qid = require_qid(r, f"reference row {i}")
        gt, max_wh = _truth(r, f"reference row {i}")
        box = parse_box_strict(preds[qid]) if qid in preds else None
        unparsed += box is None
        per.append((qid, _hit(box, gt, max_wh)))
    return make_result(per, unparsed=unparsed, missing=sum(1 for q, _ in per if q not in preds))

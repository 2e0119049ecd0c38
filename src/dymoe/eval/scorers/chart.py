"""Chart scorers of SMoE's Chart domain: ChartQA relaxed accuracy, Chart-to-Table RMS F1, Chart-to-Text BLEU-4.

* ``chartqa-relaxed``: pix2struct's ``relaxed_correctness`` (the ChartQA paper's rule): when both the answer and
  the prediction parse as numbers (``"12%"`` = 0.12) and the answer is non-zero, correct iff the relative error
  ``|pred - gold| / |gold| <= 5 %``; otherwise case-insensitive exact match. The prediction is stripped first (as
  InternVL's ChartQA evaluator does). A list of answers scores its best.
* ``chart-table-rms``: DePlot's RMS (google-research ``deplot/metrics.py`` ``table_datapoints_precision_recall``):
  both tables are read as ``{row header + column header: value}`` datapoints (rows ``" | "``-separated, an optional
  ``TITLE | ...`` first line); keys are matched by a minimum-cost assignment (scipy ``linear_sum_assignment``)
  on ``1 - ANLS`` (threshold 0.5); a matched pair scores key-ANLS x (1 - relative numeric error, capped at 1 beyond
  10 %) or the values' ANLS for text; precision/recall divide by the predicted/gold datapoint counts; the
  prediction is also read transposed and the better F1 counts. Headline = RMS F1; precision and recall are kept.
  Model outputs that write DePlot's ``<0x0A>`` newline token are read with real newlines.
* ``bleu4``: sacrebleu's corpus BLEU (13a tokenisation, ``lowercase=True``, as TinyChart's Chart-to-Text
  evaluation), one reference per chart.
"""

from __future__ import annotations

from dymoe.errors import DataError
from dymoe.eval.scorers.base import (
    ScoreResult,
    field_of,
    index_predictions,
    make_result,
    require_qid,
    with_headline,
)


def _to_float(text: str) -> float | None:
    try:
        if text.endswith("%"):
            return float(text.rstrip("%")) / 100.0
        return float(text)
    except ValueError:
        return None


def relaxed_correctness(target: str, prediction: str, max_relative_change: float = 0.05) -> bool:
    """pix2struct ``metrics.relaxed_correctness`` (target = the gold answer)."""
    prediction_float = _to_float(prediction)
    target_float = _to_float(target)
    if prediction_float is not None and target_float:
        return abs(prediction_float - target_float) / abs(target_float) <= max_relative_change
    return prediction.lower() == target.lower()


def _by_reference(predictions: list[dict], references: list[dict]):
    """``(qid, prediction or None, row)`` per reference row (a missing prediction scores 0)."""
    preds = index_predictions(predictions)
    for i, row in enumerate(references):
        qid = require_qid(row, f"reference row {i}")
        yield qid, preds.get(qid), row, f"reference row {i}"


def score_chartqa_relaxed(
    predictions: list[dict], references: list[dict], annotations: dict | None = None
) -> ScoreResult:
    """ChartQA relaxed accuracy (5 %) over the references; ``answer`` is a string or a list of strings."""
    per = []
    missing = 0
    for qid, pred, row, where in _by_reference(predictions, references):
        answers = field_of(row, "answer", where)
        answers = [answers] if not isinstance(answers, list) else answers
        missing += pred is None
        ok = pred is not None and any(relaxed_correctness(str(a).strip(), pred.strip()) for a in answers)
        per.append((qid, float(ok)))
    return make_result(per, missing=missing)


# ----------------------------------------------------------------------------------------------- DePlot RMS
def anls_metric(target: str, prediction: str, theta: float = 0.5) -> float:
    """pix2struct ``metrics.anls_metric`` (normalised Levenshtein similarity, 0 beyond ``theta``)."""
    import editdistance

    if not target and not prediction:  # the reference divides by zero here; two empty strings match
        return 1.0
    normalized_ld = editdistance.eval(target, prediction) / max(len(target), len(prediction))
    return 1.0 - normalized_ld if normalized_ld < theta else 0.0


def _relative_distance(target: float, prediction: float, theta: float = 1.0) -> float:
    if not target:
        return int(not prediction)
    distance = min(abs((target - prediction) / target), 1)
    return distance if distance < theta else 1


def table_datapoints(text: str, transposed: bool = False) -> dict[str, str]:
    """DePlot ``_get_table_datapoints``: ``{"row col": value}`` (lower-cased) plus ``title``."""
    datapoints: dict[str, str] = {}
    lines = text.lower().splitlines()
    if not lines:
        return datapoints
    offset = 0
    if lines[0].startswith("title |"):
        datapoints["title"] = lines[0][len("title |"):].strip()
        offset = 1
    if len(lines) < offset + 1:
        return datapoints
    headers = lines[offset].split(" | ")
    if len(headers) == 1:
        return datapoints
    for line in lines[offset + 1:]:
        parts = line.split(" | ")
        if len(parts) == 1:
            continue
        for header, part in zip(headers[1:], parts[1:]):
            key = f"{header.strip()} {parts[0].strip()}" if transposed else f"{parts[0].strip()} {header.strip()}"
            datapoints[key] = part.strip()
    return datapoints


def _datapoint_metric(target, prediction, text_theta=0.5, number_theta=0.1) -> float:
    key_metric = anls_metric(target[0], prediction[0], text_theta)
    pred_float = _to_float(prediction[1])
    target_float = _to_float(target[1])
    if pred_float is not None and target_float:
        return key_metric * (1 - _relative_distance(target_float, pred_float, number_theta))
    if target[1] == prediction[1]:
        return key_metric
    return key_metric * anls_metric(target[1], prediction[1], text_theta)


def table_precision_recall_f1(target: str, prediction: str, text_theta=0.5, number_theta=0.1, transposed=False):
    """DePlot ``_table_datapoints_precision_recall_f1`` for one (gold, predicted) table pair."""
    import numpy as np
    from scipy import optimize

    target_points = list(table_datapoints(target).items())
    prediction_points = list(table_datapoints(prediction, transposed=transposed).items())
    if not target_points and not prediction_points:
        return 1, 1, 1
    if not target_points:
        return 0, 1, 0
    if not prediction_points:
        return 1, 0, 0
    cost = np.array([[1 - anls_metric(t, p, text_theta) for p, _ in prediction_points] for t, _ in target_points])
    rows, cols = optimize.linear_sum_assignment(cost)
    score = 0
    for r, c in zip(rows, cols):
        score += _datapoint_metric(target_points[r], prediction_points[c], text_theta, number_theta)
    if score == 0:
        return 0, 0, 0
    precision = score / len(prediction_points)
    recall = score / len(target_points)
    return precision, recall, 2 * precision * recall / (precision + recall)


def rms(targets: list[str], prediction: str) -> tuple[float, float, float]:
    """Best (precision, recall, F1) over the gold tables and both readings of the predicted table."""
    prediction = prediction.replace("<0x0A>", "\n")
    scores = [table_precision_recall_f1(t, prediction, transposed=tr) for tr in (True, False) for t in targets]
    return max(scores, key=lambda x: x[-1])


def score_chart_table_rms(
    predictions: list[dict], references: list[dict], annotations: dict | None = None
) -> ScoreResult:
    """RMS F1 (headline), precision and recall x 100 over the references; ``table`` holds the gold table text
    (or a list of them). A missing prediction scores 0."""
    per, ps, rs = [], [], []
    for qid, pred, row, where in _by_reference(predictions, references):
        tables = field_of(row, "table", where)
        tables = [tables] if isinstance(tables, str) else tables
        if not isinstance(tables, list) or not all(isinstance(t, str) for t in tables):
            raise DataError(f"{where}: expected 'table' as a string or a list of strings")
        p, r, f = rms(tables, pred) if pred is not None else (0.0, 0.0, 0.0)
        per.append((qid, float(f)))
        ps.append(float(p))
        rs.append(float(r))
    res = make_result(per)
    n = len(per) or 1
    return with_headline(res, "RMS_F1", {"RMS_F1": res.accuracy, "RMS_precision": 100.0 * sum(ps) / n,
                                         "RMS_recall": 100.0 * sum(rs) / n})


def score_bleu4(predictions: list[dict], references: list[dict], annotations: dict | None = None) -> ScoreResult:
    """Corpus BLEU-4 (sacrebleu, lower-cased) over the references, ``answer`` = the reference text; a missing
    prediction is the empty string. ``per_sample`` holds sentence BLEU / 100 (for inspection only)."""
    import sacrebleu

    hyps, refs, qids = [], [], []
    for qid, pred, row, where in _by_reference(predictions, references):
        qids.append(qid)
        hyps.append(pred if pred is not None else "")
        refs.append(str(field_of(row, "answer", where)))
    if not hyps:
        return with_headline(make_result([]), "BLEU4", {"BLEU4": 0.0})
    score = sacrebleu.corpus_bleu(hyps, [refs], lowercase=True).score
    per = [(q, sacrebleu.sentence_bleu(h, [r], lowercase=True).score / 100.0) for q, h, r in zip(qids, hyps, refs)]
    res = make_result(per)
    return with_headline(res, "BLEU4", {"BLEU4": score}, value=score)

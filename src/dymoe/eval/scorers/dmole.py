"""The D-MoLE benchmark's VQA, multiple-choice and grounding scorers (gcd19/D-MoLE ``eval/``, InternVL's code).

* ``exact-match`` (OCR-VQA, KVQA; ``eval/vqa/evaluate_vqa.py`` ``evaluate_exact_match_accuracy``):
  ``pred.strip().lower() == answer.strip().lower()``, the best over the answers when ``answer`` is a list.
* ``choice-letter`` (IconQA, PMC-VQA; ``eval/vqa/evaluate_multi_choice.py`` ``post_process``): a one-character
  answer is taken as is; a longer one whose first character is an option letter gives that letter; otherwise the
  first option whose text occurs in the answer; correct iff equal to the gold letter.
* ``grounding-1000`` (SK-VG; ``eval/refcoco/evaluate_grounding.py``): the first ``[x1, y1, x2, y2]`` in the
  answer (``\\[*\\[(.*?),(.*?),(.*?),(.*?)\\]\\]*``), divided by 1000 when its coordinates sum to >= 4, scaled by the
  image width/height, correct iff IoU >= 0.5 with the pixel box; an unparsable answer is the box (0, 0, 0, 0).

All three iterate over the predictions (the reference scripts score every generated answer), look each up by
``question_id`` and divide by the number of predictions.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from dymoe.errors import DataError
from dymoe.eval.scorers.base import (
    ScoreResult,
    field_of,
    index_references,
    lookup,
    make_result,
    pred_text,
    require_qid,
)

LETTERS = ("A", "B", "C", "D", "E")
BOX_PATTERN = re.compile(r"\[*\[(.*?),(.*?),(.*?),(.*?)\]\]*")


def _scored(predictions: list[dict], references: list[dict], fn) -> ScoreResult:
    refs = index_references(references)
    per = []
    for i, p in enumerate(predictions):
        where = f"prediction {i}"
        qid = require_qid(p, where)
        row = lookup(refs, qid, where, "the references")
        per.append((qid, float(fn(pred_text(p, where), row, f"reference {qid!r}"))))
    return make_result(per)


def exact_match(prediction: str, answers: Any) -> bool:
    """D-MoLE / InternVL exact match: strip + lower-case on both sides; any of a list of answers."""
    answers = [answers] if isinstance(answers, str) else answers
    return any(prediction.strip().lower() == str(a).strip().lower() for a in answers)


def score_exact_match(predictions: list[dict], references: list[dict], annotations: dict | None = None) -> ScoreResult:
    """Case-insensitive exact match against ``answer`` (a string or a list of strings)."""
    return _scored(predictions, references, lambda t, row, w: exact_match(t, field_of(row, "answer", w)))


def choice_post_process(prediction: str, options: dict[str, str]) -> str:
    """InternVL's multiple-choice post-processing (see the module docstring); an empty answer stays empty."""
    pred = prediction.strip()
    if len(pred) == 1:
        return pred
    if pred and pred[0] in options:
        return pred[0]
    if pred:
        for letter, text in options.items():
            if text in pred:
                return letter
    return pred


def _options(row: dict, where: str) -> dict[str, str]:
    if isinstance(row.get("options"), dict):
        return {str(k): str(v) for k, v in row["options"].items()}
    choices = field_of(row, "choices", where)
    if not isinstance(choices, list) or len(choices) > len(LETTERS):
        raise DataError(f"{where}: expected 'choices' as a list of at most {len(LETTERS)} options")
    return {LETTERS[i]: str(c) for i, c in enumerate(choices)}


def gold_letter(row: dict, where: str) -> str:
    """The gold option letter: ``answer`` as a letter, or an integer index into the choices."""
    answer = field_of(row, "answer", where)
    if isinstance(answer, int) and not isinstance(answer, bool):
        if not 0 <= answer < len(LETTERS):
            raise DataError(f"{where}: answer index {answer} is out of range")
        return LETTERS[answer]
    return str(answer).strip()


def score_choice_letter(
    predictions: list[dict], references: list[dict], annotations: dict | None = None
) -> ScoreResult:
    """Multiple-choice accuracy with D-MoLE's letter post-processing.

    References carry ``answer`` (a letter, or the index of the right choice) and ``options`` (``{letter: text}``)
    or ``choices`` (a list). Deviation: the reference script post-processes every answer of a batch with the
    *first* sample's options (a batching bug); here each answer uses its own options.
    """
    def fn(text: str, row: dict, where: str) -> bool:
        return choice_post_process(text, _options(row, where)) == gold_letter(row, where)

    return _scored(predictions, references, fn)


def parse_box_1000(text: str) -> tuple[float, float, float, float]:
    """The first bracketed 4-tuple of ``text`` as floats, or (0, 0, 0, 0) when there is none or it does not parse."""
    found = BOX_PATTERN.findall(text)
    try:
        return tuple(float(v) for v in found[0])  # type: ignore[return-value]
    except (IndexError, ValueError):
        return (0.0, 0.0, 0.0, 0.0)


def box_iou_1000(prediction: str, box: list[float], width: float, height: float) -> float:
    """IoU of the predicted box (in [0, 1000] coordinates, rescaled to pixels) with the pixel ``box``.

    Computed in float32 as the reference does with torch / torchvision's ``box_area`` (no clamping of inverted
    boxes; a zero union gives NaN, which is not >= 0.5).
    """
    pred = torch.tensor(parse_box_1000(prediction), dtype=torch.float32).view(-1, 4)
    target = torch.tensor(box, dtype=torch.float32).view(-1, 4)
    if pred.sum() >= 4:
        pred = pred / 1000
    pred[:, 0::2] *= width
    pred[:, 1::2] *= height

    def area(b):
        return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])

    lt = torch.max(pred[:, None, :2], target[:, :2])
    rb = torch.min(pred[:, None, 2:], target[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, :, 0] * wh[:, :, 1]
    union = area(pred)[:, None] + area(target) - inter
    return float((inter / union).item())


def score_grounding_1000(
    predictions: list[dict], references: list[dict], annotations: dict | None = None
) -> ScoreResult:
    """Grounding accuracy (IoU >= 0.5) with boxes predicted in [0, 1000] coordinates.

    References carry ``bbox`` ([x1, y1, x2, y2] in pixels), ``width`` and ``height``.
    """
    def fn(text: str, row: dict, where: str) -> bool:
        box = field_of(row, "bbox", where)
        if not isinstance(box, list) or len(box) != 4:
            raise DataError(f"{where}: expected 'bbox' as [x1, y1, x2, y2], got {box!r}")
        iou = box_iou_1000(text, [float(v) for v in box], float(field_of(row, "width", where)),
                           float(field_of(row, "height", where)))
        return iou >= 0.5

    return _scored(predictions, references, fn)

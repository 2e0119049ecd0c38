"""ScienceQA: parse an option letter from the prediction (CoIN ``eval_science_qa.py``).

Ground truth, in order of precedence:

1. side files ``problems`` (``problems.json``: ``{pid: {"choices": [...], "answer": int}}``) and ``pid_splits``
   (``{"test": [pid, ...]}``): exactly the reference script; the denominator is ``pid_splits["test"]``;
2. the ``annotation`` entry merged into each reference row by :func:`dymoe.data.formats.load_test` (same shape as a
   ``problems`` entry); the denominator is the reference rows;
3. inline fields of the test row: ``answer`` (a letter ``"A"``..``"E"`` or an int index) and optional ``choices``
   (without ``choices`` all five letters A-E are accepted as valid options).
"""

from __future__ import annotations

import re
from typing import Any

from dymoe.errors import DataError
from dymoe.eval.scorers.base import ScoreResult, index_predictions, make_result, require_qid, side_entry

OPTIONS = ("A", "B", "C", "D", "E")
_SINGLE_CHAR_WORD = re.compile(r"\b(\w)\b")


def parse_letter(text: str) -> str:
    """The reference letter parser (quirks kept).

    1. ``text`` is exactly one of ``A``..``E``; else
    2. ``"X. ..."`` with ``X`` in ``A``..``E``; else
    3. the *first* single-character word ``\\b(\\w)\\b`` anywhere, upper-cased: "I think B" parses as ``I``
       (wrong), "a" as ``A``, "2" as ``2`` (invalid); else ``"FAILED"``.

    An empty prediction parses as ``FAILED`` and is counted wrong, like a missing one.
    """
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = _SINGLE_CHAR_WORD.findall(text)
    return found[0].upper() if found else "FAILED"


_STRICT_PATTERNS = (
    re.compile(r"^\(?([A-E])\)?(?:[.:)]|\s|$)"),  # "B", "B.", "(B)", "B) text", "B: text"
    re.compile(r"answer is:?\s*\(?([A-E])\b"),  # "The answer is (B)"
)


def parse_letter_strict(text: str, n_choices: int = 5) -> str:
    """Strict letter parser: leading letter (``B``, ``B.``, ``(B)``, ``B) ...``), "answer is B", or the only
    standalone capital letter among the valid options; otherwise ``"FAILED"`` (no guessing from "I" or "a")."""
    text = text.strip()
    valid = OPTIONS[:n_choices]
    for pat in _STRICT_PATTERNS:
        m = pat.search(text)
        if m and m.group(1) in valid:
            return m.group(1)
    found = {c for c in re.findall(r"\b([A-E])\b", text) if c in valid}
    return found.pop() if len(found) == 1 else "FAILED"


def _truth(row: dict[str, Any], where: str) -> tuple[int, int]:
    """``(answer index, number of choices)`` from an annotation entry or an inline test row."""
    answer = row.get("answer")
    n_choices = len(row["choices"]) if isinstance(row.get("choices"), list) else len(OPTIONS)
    if isinstance(answer, bool):
        answer = None
    if isinstance(answer, int):
        return answer, n_choices
    if isinstance(answer, str) and answer.strip().upper() in OPTIONS:
        return OPTIONS.index(answer.strip().upper()), n_choices
    raise DataError(f"{where}: expected 'answer' as an option letter A-E or an int index, got {answer!r}")


def _gold(references: list[dict[str, Any]], annotations: dict[str, Any] | None) -> list[tuple[str, int, int]]:
    """``[(question_id, answer index, n_choices)]`` in scoring order (see the module docstring)."""
    annotations = annotations or {}
    problems = annotations.get("problems")
    if problems is not None:
        splits = annotations.get("pid_splits")
        if splits is not None:
            if "test" not in splits:
                raise DataError("pid_splits: missing key 'test'")
            ids = [str(p) for p in splits["test"]]
        else:
            ids = [require_qid(r, f"reference row {i}") for i, r in enumerate(references)]
        out = []
        for pid in ids:
            if pid not in problems:
                raise DataError(f"problems: no entry for question_id {pid!r}")
            out.append((pid, *_truth(problems[pid], f"problems[{pid!r}]")))
        return out
    out = []
    for i, r in enumerate(references):
        qid = require_qid(r, f"reference row {i}")
        entry = side_entry(r, None) or r
        out.append((qid, *_truth(entry, f"reference row {i}")))
    return out


def score_sqa(predictions: list[dict], references: list[dict], annotations: dict | None = None) -> ScoreResult:
    """CoIN ScienceQA accuracy (reference behaviour).

    Predictions are matched by ``question_id`` (a repeated id keeps the last one, as the reference's dict does);
    a missing prediction is ``FAILED`` and counts as wrong. The letter is parsed by :func:`parse_letter` and must
    fall within ``options[:len(choices)]``. Denominator: the gold set (see the module docstring).
    """
    preds = index_predictions(predictions)
    per = []
    missing = 0
    for qid, answer, n_choices in _gold(references, annotations):
        if qid not in preds:
            missing += 1
        letter = parse_letter(preds.get(qid, "FAILED"))
        idx = OPTIONS.index(letter) if letter in OPTIONS[:n_choices] else -1
        per.append((qid, float(idx == answer)))
    return make_result(per, missing=missing)


def score_sqa_strict(predictions: list[dict], references: list[dict], annotations: dict | None = None) -> ScoreResult:
    """ScienceQA with :func:`parse_letter_strict` (no first-single-character-word guess); otherwise as
    :func:`score_sqa` (match by ``question_id``, missing = wrong)."""
    preds = index_predictions(predictions)
    per = []
    missing = 0
    for qid, answer, n_choices in _gold(references, annotations):
        if qid not in preds:
            missing += 1
        letter = parse_letter_strict(preds.get(qid, ""), n_choices)
        per.append((qid, float(letter != "FAILED" and OPTIONS.index(letter) == answer)))
    return make_result(per, missing=missing)

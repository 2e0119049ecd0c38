"""Shared types and helpers of the CoIN scorers.

A scorer is a pure function ``score(predictions, references, annotations=None) -> ScoreResult`` where
``predictions`` are the dicts of a ``merge.jsonl`` (``question_id``, ``text``), ``references`` the raw rows of a CoIN
test file (possibly with the side-file entry merged in under ``"annotation"`` by :func:`dymoe.data.formats.load_test`)
and ``annotations`` the *loaded* side files keyed by name (``problems``, ``pid_splits``, ``annotations``,
``questions``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dymoe.errors import DataError


@dataclass
class ScoreResult:
    """The outcome of one scorer.

    Attributes:
        accuracy: the *headline* number, the one an accuracy-matrix cell holds: percent ``100 * correct / n``
            (0.0 when ``n == 0``) for the CoIN scorers; for scorers with several numbers it is the one named by
            ``headline`` (e.g. CIDEr x 100, which may exceed 100).
        n: the denominator the scorer used (documented per scorer: predictions or references).
        correct: the (possibly fractional, e.g. TextVQA soft) number of correct samples.
        details: scorer-specific extras, always with ``per_sample`` = ``{question_id: score}`` (in [0, 1] unless the
            scorer says otherwise, e.g. raw CIDEr).
        metrics: further named numbers of the same score (e.g. Medicine's ``closed_accuracy`` and ``open_recall``,
            math's per-dataset accuracies); empty for the CoIN scorers.
        headline: the name of the number in ``accuracy`` (``"accuracy"`` for the CoIN scorers).
    """

    accuracy: float
    n: int
    correct: float
    details: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    headline: str = "accuracy"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``accuracy``, ``n``, ``correct`` and the details; ``headline`` and ``metrics`` only
        for scorers that report several numbers, so the CoIN scorers' output is unchanged)."""
        out = {"accuracy": self.accuracy, "n": self.n, "correct": self.correct, **self.details}
        if self.metrics or self.headline != "accuracy":
            out["headline"] = self.headline
            out["metrics"] = dict(self.metrics)
        return out


def make_result(per_sample: list[tuple[Any, float]], n: int | None = None, **details: Any) -> ScoreResult:
    """Build a :class:`ScoreResult` from ``(question_id, score)`` pairs; ``n`` defaults to their number."""
    n = len(per_sample) if n is None else n
    correct = float(sum(s for _, s in per_sample))
    accuracy = 100.0 * correct / n if n else 0.0
    per = {str(qid): float(s) for qid, s in per_sample}
    return ScoreResult(accuracy=accuracy, n=n, correct=correct, details={**details, "per_sample": per})


def with_headline(result: ScoreResult, headline: str, metrics: dict[str, float], value: float | None = None) -> ScoreResult:
    """Name the headline number of ``result`` and attach its other numbers; ``value`` replaces ``accuracy``."""
    result.headline = headline
    result.metrics = {k: float(v) for k, v in metrics.items()}
    if value is not None:
        result.accuracy = float(value)
    return result


def qid_key(qid: Any) -> str:
    """Question ids are compared as strings (JSON files mix ``17`` and ``"17"``)."""
    return str(qid)


def pred_text(pred: dict[str, Any], where: str) -> str:
    """The ``text`` of a prediction, with a clear error if it is missing or not a string."""
    text = pred.get("text")
    if not isinstance(text, str):
        raise DataError(f"{where}: expected a string field 'text', got {text!r}")
    return text


def require_qid(row: dict[str, Any], where: str) -> str:
    """The ``question_id`` of a prediction or reference row as a string key."""
    if "question_id" not in row:
        raise DataError(f"{where}: missing field 'question_id'")
    return qid_key(row["question_id"])


def index_references(references: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{question_id: row}``; later rows win, as the reference scripts' dict comprehensions do."""
    return {require_qid(r, f"reference row {i}"): r for i, r in enumerate(references)}


def index_predictions(predictions: Iterable[dict[str, Any]]) -> dict[str, str]:
    """``{question_id: text}``; a repeated id keeps the last prediction (strict scorers)."""
    out: dict[str, str] = {}
    for i, p in enumerate(predictions):
        out[require_qid(p, f"prediction {i}")] = pred_text(p, f"prediction {i}")
    return out


def lookup(index: dict[str, dict[str, Any]], qid: str, where: str, source: str) -> dict[str, Any]:
    """``index[qid]`` or a :class:`DataError` (the reference scripts crash with ``KeyError`` here)."""
    try:
        return index[qid]
    except KeyError:
        raise DataError(f"{where}: question_id {qid!r} is not in {source}") from None


def field_of(row: dict[str, Any], key: str, where: str) -> Any:
    """``row[key]`` or a :class:`DataError` naming the row and the key."""
    if key not in row:
        raise DataError(f"{where}: missing field {key!r}")
    return row[key]


def side_entry(row: dict[str, Any], side: dict[str, Any] | None) -> dict[str, Any] | None:
    """The side-file entry of a reference row: from the loaded side file, else the merged ``annotation``."""
    if side is not None:
        return side.get(qid_key(row.get("question_id")))
    ann = row.get("annotation")
    return ann if isinstance(ann, dict) else None


def soft_normalise(text: str) -> str:
    """Strict scorers' answer normalisation: strip, drop trailing periods, lower-case, squeeze spaces."""
    return re.sub(r"\s+", " ", text.strip().rstrip(".").strip().lower())

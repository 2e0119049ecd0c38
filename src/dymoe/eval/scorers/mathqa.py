"""Math accuracy of SMoE's Math domain (MWP & GPS: IconQA, CLEVR-Math, TabMWP, Geometry3K, GeoQA+, UniGeo, GEOS).

SMoE reports one accuracy column ("MWP&GPS") and states neither the pooling nor the answer extraction
(smoe-dsal.md §6, A12). Proposed here and documented:

* answer extraction: the text after the last ``answer is`` / ``answer:`` (case-insensitive) if present, else the
  whole prediction; surrounding whitespace, a trailing period and ``$``/``\\boxed{}`` wrappers are dropped;
* the gold is ``answer`` (a string); a multiple-choice question (``options``: ``{letter: text}`` or ``choices``)
  accepts the gold letter or the gold option's text;
* equality: numeric when both sides parse as numbers (commas dropped, relative tolerance 1e-6), otherwise
  case-insensitive with internal whitespace squeezed.

The headline is the pooled (micro) accuracy over all questions; ``metrics`` also holds the macro mean and each
dataset's accuracy (the reference row's ``dataset`` field). A missing prediction is wrong.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

from dymoe.eval.scorers.base import (
    ScoreResult,
    field_of,
    index_predictions,
    make_result,
    require_qid,
    with_headline,
)

LETTERS = "ABCDEFGH"
_ANSWER_IS = re.compile(r"answer(?:\s+is|\s*:)\s*", re.IGNORECASE)


def extract_answer(text: str) -> str:
    """The final answer of a (possibly reasoned) prediction, see the module docstring."""
    parts = _ANSWER_IS.split(text)
    ans = parts[-1] if len(parts) > 1 else text
    ans = ans.strip()
    m = re.fullmatch(r"\\boxed\{(.*)\}", ans)
    ans = m.group(1) if m else ans
    return ans.strip().strip("$").strip().rstrip(".").strip()


def _number(text: str) -> float | None:
    try:
        value = float(text.replace(",", ""))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def same_answer(prediction: str, gold: str) -> bool:
    """Numeric equality (rel. tol. 1e-6) when both parse, else case-insensitive whitespace-squeezed equality."""
    a, b = _number(prediction), _number(gold)
    if a is not None and b is not None:
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    return " ".join(prediction.lower().split()) == " ".join(gold.lower().split())


def _options(row: dict) -> dict[str, str]:
    if isinstance(row.get("options"), dict):
        return {str(k).upper(): str(v) for k, v in row["options"].items()}
    if isinstance(row.get("choices"), list):
        return {LETTERS[i]: str(c) for i, c in enumerate(row["choices"][: len(LETTERS)])}
    return {}


def math_correct(prediction: str, row: dict, where: str) -> bool:
    """Whether ``prediction`` answers the question of reference ``row``."""
    gold = str(field_of(row, "answer", where)).strip()
    pred = extract_answer(prediction)
    if same_answer(pred, gold):
        return True
    options = _options(row)
    if not options:
        return False
    gold_letter = gold.upper() if gold.upper() in options else next(
        (k for k, v in options.items() if same_answer(v, gold)), None)
    if gold_letter is None:
        return False
    letter = pred.strip("()").upper()
    return letter == gold_letter or same_answer(pred, options[gold_letter])


def score_math(predictions: list[dict], references: list[dict], annotations: dict | None = None) -> ScoreResult:
    """Pooled math accuracy over the references (headline) with per-dataset and macro accuracies in ``metrics``."""
    preds = index_predictions(predictions)
    per = []
    by_ds: dict[str, list[float]] = defaultdict(list)
    for i, row in enumerate(references):
        where = f"reference row {i}"
        qid = require_qid(row, where)
        ok = qid in preds and math_correct(preds[qid], row, where)
        per.append((qid, float(ok)))
        by_ds[str(row.get("dataset", "all"))].append(float(ok))
    res = make_result(per, missing=sum(1 for q, _ in per if q not in preds))
    per_ds = {f"acc/{k}": 100.0 * sum(v) / len(v) for k, v in sorted(by_ds.items())}
    macro = sum(per_ds.values()) / len(per_ds) if per_ds else 0.0
    return with_headline(res, "pooled_accuracy", {"pooled_accuracy": res.accuracy, "macro_accuracy": macro, **per_ds})

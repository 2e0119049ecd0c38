"""Capped evaluation keeps CoIN's ScienceQA rule (missing = wrong) on the evaluated subset only."""

from dymoe.eval.scorers import SCORERS
from dymoe.runner.continual import restrict_to_evaluated


def test_sqa_reference_scorer_on_a_subset():
    problems = {str(i): {"choices": ["x", "y"], "answer": i % 2} for i in range(10)}
    ann = {"problems": problems, "pid_splits": {"test": [str(i) for i in range(10)]}}
    refs = [{"question_id": str(i), "text": "Q"} for i in (2, 5, 7)]
    preds = [{"question_id": str(i), "text": "AB"[i % 2]} for i in (2, 5, 7)]  # all right
    full = SCORERS.get("sqa")(preds, refs, ann)
    assert full.accuracy == 30.0  # 3 of 10: the seven unevaluated questions count as wrong
    sub = SCORERS.get("sqa")(preds, refs, restrict_to_evaluated(ann, [2, 5, 7]))
    assert (sub.accuracy, sub.n) == (100.0, 3)
    assert restrict_to_evaluated({"annotations": 1}, [1]) == {"annotations": 1}

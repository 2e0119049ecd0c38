"""Format vs knowledge forgetting on constructed predictions (hand-computed shares)."""

from dymoe.eval.forgetting import (
    core_answer,
    drift_matrices,
    format_forgetting,
    score_cell,
    surface_forms,
    variants,
)


def test_core_answer_removes_the_form_only():
    assert core_answer("The answer is Cat.") == "Cat"
    assert core_answer("  Answer: \"blue\"  \nmore text") == "blue"
    assert core_answer("the correct answer is: 42!") == "42"
    assert core_answer("B") == "B" and core_answer("") == ""
    assert surface_forms("The answer is Cat.")[:4] == ["The answer is Cat.", "Cat", "cat", "CAT"]


def test_variants_only_for_scorers_with_a_strict_twin():
    assert variants("vqav2") == ("vqav2", "vqav2-strict") and variants("sqa-strict") == ("sqa", "sqa-strict")
    assert variants("cider") is None


REFS_A = [{"question_id": i, "answer": a} for i, a in enumerate(["cat", "dog", "red", "two"])]
REFS_B = [{"question_id": i, "answer": a} for i, a in enumerate(["Yes", "No"])]


def _preds(texts):
    return [{"question_id": i, "text": t} for i, t in enumerate(texts)]


def test_drift_share_on_a_constructed_prediction_file():
    # task A (VQAv2 scorer: upper-cased exact match) after task 1: all right; after task 2: one right answer in a
    # sentence ("The answer is Cat.": wrong for the reference scorer), one truly wrong ("blue")
    a1 = score_cell("vqav2", _preds(["cat", "dog", "red", "two"]), REFS_A)
    a2 = score_cell("vqav2", _preds(["The answer is Cat.", "dog", "blue", "two"]), REFS_A)
    assert a1 == {"reference": 100.0, "strict": 100.0, "knowledge": 100.0}
    assert a2["reference"] == 50.0 and a2["knowledge"] == 75.0
    # the strict variant (normalised exact match) does not forgive "The answer is" either
    assert a2["strict"] == 50.0
    b2 = score_cell("vqav2", _preds(["yes", "No."]), REFS_B)
    assert b2["reference"] == 50.0 and b2["strict"] == 100.0 and b2["knowledge"] == 100.0
    data = format_forgetting(["A", "B"], {(0, 0): a1, (1, 0): a2, (1, 1): b2})
    assert data["reference"] == [[100.0], [50.0, 50.0]] and data["knowledge"] == [[100.0], [75.0, 100.0]]
    # F = 100 - 50 = 50 measured, G = 100 - 75 = 25 knowledge: half of the drop is format drift
    assert data["forgetting"][1][0] == 50.0 and data["knowledge_forgetting"][1][0] == 25.0
    assert data["format_drift"][1][0] == 25.0 and data["drift_share"][1][0] == 0.5
    assert data["drift_share"][0] == [None] and data["drift_share"][1][1] is None  # diagonal
    assert data["summary"] == {"forgetting": 50.0, "knowledge_forgetting": 25.0, "drift_share": 0.5}


def test_no_forgetting_has_no_share_and_unanalysed_cells_stay_empty():
    m = drift_matrices([[80.0], [90.0, 10.0]], [[80.0], [90.0, 10.0]])
    assert m["forgetting"][1][0] == -10.0 and m["drift_share"][1][0] is None
    data = format_forgetting(["A", "B"], {(0, 0): None, (1, 0): None, (1, 1): None})
    assert data["reference"] == [[None], [None, None]] and data["summary"]["drift_share"] is None


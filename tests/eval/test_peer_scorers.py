"""The peers' scorers on worked cases (hand calculations) and on a CIDEr fixture made with the real pycocoevalcap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dymoe.errors import DataError
from dymoe.eval.scorers import SCORERS
from dymoe.eval.scorers.dmole import box_iou_1000, choice_post_process, parse_box_1000
from dymoe.eval.scorers.mathqa import extract_answer
from dymoe.eval.scorers.medvqa import normalize_word

FIX = Path(__file__).resolve().parents[1] / "fixtures"


def P(qid, text):
    return {"question_id": qid, "text": text}


# ------------------------------------------------------------------------------------------------------ CIDEr
def test_cider_equals_pycocoevalcap_with_the_java_tokenizer():
    fx = json.loads((FIX / "cider" / "cider_fixture.json").read_text())
    res = SCORERS.get("cider")(fx["predictions"], fx["references"])
    assert res.accuracy == pytest.approx(100 * fx["cider"], abs=1e-9)
    assert res.headline == "CIDEr" and res.metrics["CIDEr"] == pytest.approx(100 * fx["cider"], abs=1e-9)
    got = [res.details["per_sample"][r["question_id"]] for r in fx["references"]]
    assert got == pytest.approx(fx["per_sample"], abs=1e-12)
    assert res.n == len(fx["predictions"])


def test_cider_rejects_unknown_and_repeated_ids():
    refs = [{"question_id": 1, "captions": ["a dog"]}]
    with pytest.raises(DataError, match="not in the references"):
        SCORERS.get("cider")([P(2, "a dog")], refs)
    with pytest.raises(DataError, match="second prediction"):
        SCORERS.get("cider")([P(1, "a dog"), P(1, "a cat")], refs)


# ---------------------------------------------------------------------------------------------- grounding-1000
def test_box_parsing_and_scaling():
    assert parse_box_1000("The box is [[100, 200, 500, 600]].") == (100.0, 200.0, 500.0, 600.0)
    assert parse_box_1000("no box here") == (0.0, 0.0, 0.0, 0.0)
    assert parse_box_1000("[a, b, c, d]") == (0.0, 0.0, 0.0, 0.0)
    # [0, 1000] coordinates on a 1000 x 500 image -> (100, 100, 500, 300) pixels
    assert box_iou_1000("[100, 200, 500, 600]", [100, 100, 500, 300], 1000, 500) == pytest.approx(1.0)
    # coordinates summing to < 4 are taken as [0, 1] fractions: the same box
    assert box_iou_1000("[0.1, 0.2, 0.5, 0.6]", [100, 100, 500, 300], 1000, 500) == pytest.approx(1.0)
    # overlap 200 x 200 of two 400 x 200 boxes: 40000 / 120000
    assert box_iou_1000("[100, 200, 500, 600]", [300, 100, 700, 300], 1000, 500) == pytest.approx(1 / 3)


def test_grounding_1000_counts_iou_of_exactly_half():
    refs = [
        {"question_id": "a", "bbox": [0, 0, 100, 50], "width": 1000, "height": 1000},  # IoU 0.5: correct (>=)
        {"question_id": "b", "bbox": [300, 100, 700, 300], "width": 1000, "height": 500},  # IoU 1/3
        {"question_id": "c", "bbox": [0, 0, 10, 10], "width": 10, "height": 10},  # unparsable answer
    ]
    preds = [P("a", "[0, 0, 100, 100]"), P("b", "[100, 200, 500, 600]"), P("c", "I do not know")]
    res = SCORERS.get("grounding-1000")(preds, refs)
    assert res.details["per_sample"] == {"a": 1.0, "b": 0.0, "c": 0.0}
    assert res.accuracy == pytest.approx(100 / 3)


# ------------------------------------------------------------------------------------------- choice / exact match
@pytest.mark.parametrize(
    "pred, expected",
    [("B", "B"), ("B. dog", "B"), ("the answer is dog", "B"), ("b", "b"), ("", ""), ("  C ", "C"),
     ("It is a cat or a dog", "A")],  # the first option whose text occurs wins
)
def test_choice_post_process(pred, expected):
    assert choice_post_process(pred, {"A": "cat", "B": "dog"}) == expected


def test_choice_letter_score_with_index_and_letter_answers():
    refs = [{"question_id": 1, "choices": ["cat", "dog"], "answer": 1},
            {"question_id": 2, "options": {"A": "red", "B": "blue"}, "answer": "A"},
            {"question_id": 3, "choices": ["cat", "dog"], "answer": 0}]
    res = SCORERS.get("choice-letter")([P(1, "dog"), P(2, "a"), P(3, "A. cat")], refs)
    assert res.details["per_sample"] == {"1": 1.0, "2": 0.0, "3": 1.0}  # one-character "a" is kept as is


def test_exact_match_strips_and_lowercases_and_takes_the_best_answer():
    refs = [{"question_id": 1, "answer": "Harry Potter"}, {"question_id": 2, "answer": ["Paris", "paris, france"]},
            {"question_id": 3, "answer": "Rome"}]
    res = SCORERS.get("exact-match")([P(1, "  harry potter "), P(2, "Paris, France"), P(3, "Rome.")], refs)
    assert res.details["per_sample"] == {"1": 1.0, "2": 1.0, "3": 0.0}


def test_vqa_soft_is_the_ten_answer_soft_accuracy():
    refs = [{"question_id": 1, "answers": ["red"] * 2 + ["blue"] * 8}]
    # "red" matches 2 of the 9 others in 8 leave-one-out subsets (2/3) and 1 of 9 in 2 subsets (1/3): 18/30
    assert SCORERS.get("vqa-soft")([P(1, "Red")], refs).accuracy == pytest.approx(60.0)


# ------------------------------------------------------------------------------------------------------ medicine
MED_REFS = [
    {"question_id": 1, "answer": "yes"},  # closed (inferred)
    {"question_id": 2, "answer": "no", "answer_type": "CLOSED"},
    {"question_id": 3, "answer": "yes"},
    {"question_id": 4, "answer": "the left lung", "answer_type": "OPEN"},
    {"question_id": 5, "answer": "liver"},  # open (inferred)
]
MED_PREDS = [P(1, "No, it is not"), P(2, "normal"), P(3, "maybe"), P(4, "Left lung."), P(5, "kidney")]


def test_llavamed_normalisation():
    assert normalize_word("The Left-Lung, two!") == "left lung 2"


def test_medvqa_llavamed_keeps_the_substring_and_denominator_quirks():
    res = SCORERS.get("medvqa-llavamed")(MED_PREDS, MED_REFS)
    # q1: "no" occurs, "yes" does not -> dropped from the denominator; q2: "no" in "normal" -> a hit; q3: 0
    assert res.metrics["closed_accuracy"] == pytest.approx(50.0)
    assert res.details["closed_dropped"] == 1
    # open recall: q4 1 (articles dropped), q5 0
    assert res.metrics["open_recall"] == pytest.approx(50.0)
    assert res.accuracy == pytest.approx(50.0) and res.headline == "mean_closed_open"


def test_medvqa_clean_counts_every_closed_question_and_matches_words():
    res = SCORERS.get("medvqa")(MED_PREDS, MED_REFS)
    assert res.metrics["closed_accuracy"] == 0.0  # q1 says "no", q2 "normal" is not "no", q3 no answer
    assert res.metrics["open_recall"] == pytest.approx(50.0)
    assert res.accuracy == pytest.approx(25.0)
    good = [P(1, "Yes."), P(2, "No"), P(3, "yes, it is"), P(4, "left lung"), P(5, "the liver and left lung")]
    res = SCORERS.get("medvqa")(good, MED_REFS)
    assert res.metrics == {"closed_accuracy": 100.0, "open_recall": 100.0}


def test_medvqa_llavamed_open_recall_counts_repeated_prediction_words():
    refs = [{"question_id": 1, "answer": "a c", "answer_type": "OPEN"}]  # "a" is an article: gold = ["c"]
    refs = [{"question_id": 1, "answer": "x c", "answer_type": "OPEN"}]
    # tp counts the prediction's occurrences: "x x" -> tp 2, fn 1 ("c") -> 2/3 (true recall is 1/2)
    assert SCORERS.get("medvqa-llavamed")([P(1, "x x")], refs).metrics["open_recall"] == pytest.approx(200 / 3)
    assert SCORERS.get("medvqa")([P(1, "x x")], refs).metrics["open_recall"] == pytest.approx(50.0)


# --------------------------------------------------------------------------------------------------------- chart
@pytest.mark.parametrize(
    "gold, pred, ok",
    [("12", "12.5", True), ("12", "13", False), ("Yes", "yes", True), ("20%", "0.205", True),
     ("0", "0", True), ("0", "0.01", False), ("Asia", " Asia ", True)],
)
def test_chartqa_relaxed(gold, pred, ok):
    res = SCORERS.get("chartqa-relaxed")([P(1, pred)], [{"question_id": 1, "answer": gold}])
    assert res.accuracy == (100.0 if ok else 0.0)


GOLD_TABLE = "country | value\nusa | 10\nuk | 20"


@pytest.mark.parametrize(
    "pred, p, r",
    [
        (GOLD_TABLE, 1.0, 1.0),
        ("country | value\nusa | 10\nuk | 30", 0.5, 0.5),  # 50 % off -> beyond the 10 % cap -> 0
        ("country | value\nusa | 10\nuk | 21", 0.975, 0.975),  # 5 % off -> 0.95
        ("country | value\nusa | 10", 1.0, 0.5),  # one datapoint predicted, matched exactly
        ("country | value<0x0A>usa | 10<0x0A>uk | 20", 1.0, 1.0),  # DePlot's newline token
        ("nothing", 1.0, 0.0),  # no datapoints predicted: (1, 0, 0)
    ],
)
def test_chart_table_rms(pred, p, r):
    res = SCORERS.get("chart-table-rms")([P(1, pred)], [{"question_id": 1, "table": GOLD_TABLE}])
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    assert res.accuracy == pytest.approx(100 * f1)
    assert res.metrics["RMS_precision"] == pytest.approx(100 * p) or f1 == 0
    assert res.metrics["RMS_recall"] == pytest.approx(100 * r) or f1 == 0


def test_bleu4_is_lowercased_corpus_bleu():
    refs = [{"question_id": 1, "answer": "The chart shows the share of adults who use the internet."},
            {"question_id": 2, "answer": "Most people in the survey say they are very satisfied with it."}]
    same = [P(1, refs[0]["answer"].upper()), P(2, refs[1]["answer"])]
    assert SCORERS.get("bleu4")(same, refs).accuracy == pytest.approx(100.0)
    half = SCORERS.get("bleu4")([same[0]], refs)  # the second prediction missing: empty hypothesis
    assert 0.0 < half.accuracy < 100.0 and half.headline == "BLEU4"


# ---------------------------------------------------------------------------------------------------------- math
def test_math_answer_extraction():
    assert extract_answer("Step 1 ... The answer is 12.") == "12"
    assert extract_answer("Answer: \\boxed{3/4}") == "3/4"
    assert extract_answer(" 7 ") == "7"


def test_math_pooled_and_per_dataset():
    refs = [
        {"question_id": 1, "answer": "12", "dataset": "TabMWP"},
        {"question_id": 2, "answer": "1200", "dataset": "TabMWP"},
        {"question_id": 3, "answer": "4", "choices": ["3", "4"], "dataset": "GeoQA+"},
        {"question_id": 4, "answer": "B", "options": {"A": "30", "B": "60"}, "dataset": "GeoQA+"},
        {"question_id": 5, "answer": "square", "dataset": "IconQA"},
    ]
    preds = [P(1, "The answer is 12.0"), P(2, "1,200"), P(3, "(B)"), P(4, "60"), P(5, "circle")]
    res = SCORERS.get("math")(preds, refs)
    assert res.accuracy == pytest.approx(80.0) and res.headline == "pooled_accuracy"
    assert res.metrics["acc/TabMWP"] == 100.0 and res.metrics["acc/GeoQA+"] == 100.0
    assert res.metrics["acc/IconQA"] == 0.0
    assert res.metrics["macro_accuracy"] == pytest.approx(200 / 3)


def test_coin_scorer_output_is_unchanged_by_the_new_fields():
    res = SCORERS.get("vqav2")([P(1, "yes")], [{"question_id": 1, "answer": "yes"}])
    assert set(res.to_dict()) == {"accuracy", "n", "correct", "per_sample"}
    assert "metrics" in SCORERS.get("math")([P(1, "1")], [{"question_id": 1, "answer": "1"}]).to_dict()

"""Table-driven tests of the CoIN scorers: every reference quirk with a worked case, and its strict variant."""

from __future__ import annotations

import pytest

from dymoe.errors import DataError
from dymoe.eval.scorers import SCORERS
from dymoe.eval.scorers.evalai import answer_scores, normalize_answer, soft_accuracy
from dymoe.eval.scorers.grounding import iou, parse_box_legacy, parse_box_strict
from dymoe.eval.scorers.sqa import parse_letter, parse_letter_strict


def P(qid, text):
    return {"question_id": qid, "text": text}


def test_registry_has_the_sixteen_coin_names_and_the_peer_scorers():
    base = ["sqa", "textvqa", "imagenet", "gqa", "vizwiz", "grounding", "vqav2", "ocrvqa"]
    peers = ["cider", "grounding-1000", "choice-letter", "exact-match", "vqa-soft", "medvqa", "medvqa-llavamed",
             "chartqa-relaxed", "chart-table-rms", "bleu4", "math"]
    assert SCORERS.names() == sorted(base + [f"{b}-strict" for b in base] + peers)


# ------------------------------------------------------------------------------------------- EvalAI normalisation
@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two dogs!", "2 dogs"),  # number word, "!" → space, then split/join
        ("The cat.", "cat"),  # article dropped, period not followed by a digit stripped
        ("2.5", "2.5"),  # period followed by a digit kept
        ("a.b", "ab"),  # PERIOD_STRIP is a look-ahead only: "." before a letter goes too
        ("dont", "don't"),  # contraction
        ("1,000", "1000"),  # comma between digits
        ("yes, sir", "yes sir"),  # "," removed by word_tokenize
        ("black-and-white", "black and white"),  # "-" not next to a space → replaced by a space
        ("x - y", "x y"),  # " -" next to a space → removed
        ("Coca Cola's", "coca cola 's"),
        ("." * 33, "."),  # re.UNICODE passed as count=32: the 33rd period survives
    ],
)
def test_evalai_normalisation(raw, expected):
    assert normalize_answer(raw) == expected


def test_textvqa_soft_scores_leave_one_out():
    # 'cat' x3, 'dog' x7: leaving out a cat (3 of 10 subsets) leaves 2 matches → 2/3, else 1 → 0.9
    scores = answer_scores(["cat"] * 3 + ["dog"] * 7)
    assert scores["cat"] == pytest.approx(0.9)
    assert scores["dog"] == pytest.approx(1.0)
    assert soft_accuracy("Cat.", ["cat"] + ["dog"] * 9) == pytest.approx(0.3)  # 9/10 * 1/3
    assert soft_accuracy("the cat", ["cat"] * 2 + ["dog"] * 8) == pytest.approx(0.6)  # (2/3*8 + 1/3*2)/10
    assert soft_accuracy("bird", ["cat"] * 10) == 0.0


# ------------------------------------------------------------------------------------------------------ ScienceQA
@pytest.mark.parametrize(
    "text, ref_letter, strict_letter",
    [
        ("B", "B", "B"),
        ("C. blue", "C", "C"),
        ("(A)", "A", "A"),
        ("I think B", "I", "B"),  # quirk: first single-character word is "I"
        ("the answer is b", "B", "FAILED"),  # quirk: lower-case single char upper-cased; strict wants a capital
        ("The answer is (C).", "C", "C"),
        ("", "FAILED", "FAILED"),
        ("B or C", "B", "B"),
        ("blue", "FAILED", "FAILED"),
    ],
)
def test_sqa_letter_parsers(text, ref_letter, strict_letter):
    assert parse_letter(text) == ref_letter
    assert parse_letter_strict(text) == strict_letter


SQA_REFS = [
    {"question_id": "1", "text": "q", "answer": "B"},
    {"question_id": "2", "text": "q", "answer": "A", "choices": ["x", "y"]},
    {"question_id": "3", "text": "q", "answer": 2},
    {"question_id": "4", "text": "q", "answer": "C"},
]


def test_sqa_reference_and_strict_inline_answers():
    preds = [P("1", "B"), P("2", "I think A"), P("3", "C. 7"), P("4", "the answer is c")]
    ref = SCORERS.get("sqa")(preds, SQA_REFS)
    # 1 ok; 2 parses "I" (wrong); 3 ok (index 2); 4 parses "c"→"C" (ok)
    assert (ref.correct, ref.n, ref.accuracy) == (3.0, 4, 75.0)
    strict = SCORERS.get("sqa-strict")(preds, SQA_REFS)
    # strict: 1 ok, 2 ok ("A" is the only capital option letter), 3 ok, 4 fails (no capital letter)
    assert (strict.correct, strict.n) == (3.0, 4)
    assert strict.details["per_sample"] == {"1": 1.0, "2": 1.0, "3": 1.0, "4": 0.0}


def test_sqa_missing_prediction_is_failed_and_letter_outside_choices_is_wrong():
    res = SCORERS.get("sqa")([P("1", "B"), P("2", "C")], SQA_REFS)
    # "C" is outside options[:2] for question 2; 3 and 4 are missing (FAILED) but counted
    assert (res.correct, res.n, res.details["missing"]) == (1.0, 4, 2)


def test_sqa_side_files_use_pid_splits_as_denominator():
    problems = {"1": {"choices": ["a", "b"], "answer": 1}, "2": {"choices": ["a", "b"], "answer": 0},
                "9": {"choices": ["a", "b"], "answer": 0}}
    ann = {"problems": problems, "pid_splits": {"test": ["1", "2", "9"]}}
    res = SCORERS.get("sqa")([P("1", "B"), P("2", "A")], [], ann)
    assert (res.correct, res.n) == (2.0, 3)  # "9" has no prediction: FAILED, in the denominator


def test_sqa_merged_annotation_entry_is_used():
    refs = [{"question_id": 5, "text": "q", "annotation": {"choices": ["a", "b", "c"], "answer": 2}}]
    assert SCORERS.get("sqa")([P(5, "C")], refs).accuracy == 100.0


# -------------------------------------------------------------------------------------------------------- TextVQA
TV_REFS = [
    {"question_id": 1, "text": "q", "answers": ["cat"] * 3 + ["dog"] * 7},
    {"question_id": 2, "text": "q", "answers": ["two"] * 10},
    {"question_id": 3, "text": "q", "answers": ["x"] * 10},
]


def test_textvqa_reference_iterates_predictions():
    preds = [P(1, "Cat"), P(2, "2"), P(2, "2")]  # question 3 has no prediction; 2 is duplicated
    res = SCORERS.get("textvqa")(preds, TV_REFS)
    assert res.n == 3  # the prediction lines
    assert res.correct == pytest.approx(0.9 + 1 + 1)
    strict = SCORERS.get("textvqa-strict")(preds, TV_REFS)
    assert strict.n == 3 and strict.correct == pytest.approx(0.9 + 1 + 0)  # per reference, missing = 0


def test_textvqa_side_file_and_ten_answer_assert():
    ann = {"annotations": {"data": [{"question_id": 1, "answers": ["a"] * 10}]}}
    assert SCORERS.get("textvqa")([P(1, "a")], [], ann).accuracy == 100.0
    with pytest.raises(DataError, match="expected 10 answers"):
        SCORERS.get("textvqa")([P(1, "a")], [{"question_id": 1, "answers": ["a"] * 3}])
    # strict accepts 3 answers: each leave-one-out subset keeps 2 matches → 2/3
    strict = SCORERS.get("textvqa-strict")([P(1, "a")], [{"question_id": 1, "answers": ["a"] * 3}])
    assert strict.accuracy == pytest.approx(200 / 3)
    with pytest.raises(DataError, match="not in the TextVQA annotations"):
        SCORERS.get("textvqa")([P(2, "a")], [], ann)


# -------------------------------------------------------------------------------------------------------- ImageNet
IMNET_REFS = [
    {"question_id": "a", "answer": "golden retriever"},
    {"question_id": "b", "answer": "tabby cat"},
    {"question_id": "c", "answer": "hot dog"},
    {"question_id": "d", "answer": "Goldfish"},
]


def test_imagenet_bidirectional_substring_by_position():
    preds = [P("a", "a golden retriever dog"), P("b", ""), P("c", "dog"), P("d", "goldfish")]
    res = SCORERS.get("imagenet")(preds, IMNET_REFS)
    # a: gt in pred; b: empty prediction is correct ("" in gt); c: "dog" in "hot dog"; d: case-sensitive → wrong
    assert res.details["per_sample"] == {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.0}
    strict = SCORERS.get("imagenet-strict")(preds, IMNET_REFS)
    assert strict.details["per_sample"] == {"a": 0.0, "b": 0.0, "c": 0.0, "d": 1.0}


def test_imagenet_aligns_by_list_position_not_question_id():
    preds = [P("b", "golden retriever"), P("a", "tabby cat")]  # ids swapped, texts in test-file order
    assert SCORERS.get("imagenet")(preds, IMNET_REFS).correct == 2.0
    assert SCORERS.get("imagenet-strict")(preds, IMNET_REFS).correct == 0.0
    with pytest.raises(DataError, match="aligns by position"):
        SCORERS.get("imagenet")(preds * 3, IMNET_REFS)


# ------------------------------------------------------------------------------------------------------------ GQA
GQA_REFS = [
    {"question_id": "1", "answer": "yes"},
    {"question_id": "2", "answer": "left"},
    {"question_id": "3", "answer": "two"},
    {"question_id": "4", "answer": "red"},
]


def test_gqa_reference_conversion_and_denominator():
    preds = [P("1", "Yes."), P("2", " left"), P("3", "  two")]  # 4 has no prediction
    res = SCORERS.get("gqa")(preds, GQA_REFS)
    # 1: rstrip('.') + lower; 2: one leading space dropped; 3: only one of two spaces dropped → wrong
    assert res.details["per_sample"] == {"1": 1.0, "2": 1.0, "3": 0.0}
    assert res.n == 3  # questions without a prediction are not counted
    strict = SCORERS.get("gqa-strict")(preds, GQA_REFS)
    assert (strict.correct, strict.n) == (3.0, 4)


def test_gqa_side_file_balanced_only():
    questions = {"1": {"answer": "yes", "isBalanced": True}, "2": {"answer": "no", "isBalanced": False}}
    res = SCORERS.get("gqa")([P("1", "yes"), P("2", "yes")], [], {"questions": questions})
    assert (res.correct, res.n, res.details["unbalanced"]) == (1.0, 1, 1)
    with pytest.raises(DataError, match="not in the GQA questions"):
        SCORERS.get("gqa")([P("7", "yes")], [], {"questions": questions})


# --------------------------------------------------------------------------------------------- VizWiz and VQAv2
@pytest.mark.parametrize("name", ["vizwiz", "vqav2"])
def test_vqa_upper_exact_match(name):
    refs = [{"question_id": 1, "answer": "yes"}, {"question_id": 2, "answer": "unanswerable"},
            {"question_id": 3, "answer": "blue"}, {"question_id": 4, "answer": "two"}]
    preds = [P(1, "YES"), P(2, "unanswerable."), P(3, "blue ")]
    res = SCORERS.get(name)(preds, refs)
    # exact after upper(): no strip, no period removal; 4 has no prediction and is not counted
    assert res.details["per_sample"] == {"1": 1.0, "2": 0.0, "3": 0.0}
    assert res.n == 3
    strict = SCORERS.get(f"{name}-strict")(preds, refs)
    assert strict.details["per_sample"] == {"1": 1.0, "2": 1.0, "3": 1.0, "4": 0.0}


def test_vqa_strict_uses_soft_accuracy_with_human_answers():
    refs = [{"question_id": 1, "answer": "cat", "answers": ["cat"] * 2 + ["dog"] * 8}]
    assert SCORERS.get("vqav2")([P(1, "cat")], refs).accuracy == 100.0
    assert SCORERS.get("vqav2-strict")([P(1, "cat")], refs).accuracy == pytest.approx(60.0)


def test_vqa_unknown_question_id_is_an_error():
    with pytest.raises(DataError, match="prediction 0: question_id '9' is not in the references"):
        SCORERS.get("vizwiz")([P(9, "x")], [{"question_id": 1, "answer": "x"}])


# ------------------------------------------------------------------------------------------------------ Grounding
@pytest.mark.parametrize(
    "text, legacy, strict",
    [
        ("[0.12, 0.34, 0.56, 0.78]", [0.12, 0.34, 0.56, 0.7], [0.12, 0.34, 0.56, 0.78]),  # last digit lost
        (" [0.1, 0.2, 0.3, 0.4]", [0.1, 0.2, 0.3, 0.0], [0.1, 0.2, 0.3, 0.4]),  # leading space dropped first
        ("0.1, 0.2, 0.3, 0.4", [0.1, 0.2, 0.3, 0.0], [0.1, 0.2, 0.3, 0.4]),
        ("The box is [0.1, 0.2, 0.3, 0.4].", None, [0.1, 0.2, 0.3, 0.4]),
        ("[0.1, 0.2, 0.3]", None, None),
        ("", None, None),
    ],
)
def test_box_parsers(text, legacy, strict):
    assert parse_box_legacy(text) == (pytest.approx(legacy) if legacy else None)
    assert parse_box_strict(text) == (pytest.approx(strict) if strict else None)


def test_iou_hand_values():
    assert iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)
    assert iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0
    assert iou([0, 0, 1, 1], [0, 0, 1, 1]) == 1.0


def test_grounding_reference_and_strict():
    refs = [
        {"question_id": 1, "answer_bbox": "[0.1, 0.1, 0.5, 0.5]", "size": [100, 50]},
        {"question_id": 2, "answer_bbox": "[0.1, 0.1, 0.5, 0.5]", "size": [100, 50]},
        {"question_id": 3, "answer_bbox": "[0.0, 0.0, 0.5, 0.5]", "size": [64, 64]},
        {"question_id": 4, "answer_bbox": "[0.1, 0.1, 0.5, 0.5]", "size": [10, 20]},
        {"question_id": 5, "answer_bbox": "[0.1, 0.1, 0.5, 0.5]", "size": [10, 20]},
    ]
    preds = [
        P(1, "[0.10, 0.10, 0.50, 0.50]"),  # trailing 0 lost harmlessly → IoU 1
        P(2, "[0.1, 0.1, 0.5, 0.5]"),  # legacy parses y2 = 0.0 → IoU 0
        P(3, "[0.00, 0.00, 0.50, 0.250]"),  # IoU exactly 0.5 → not > 0.5
        P(4, "no idea"),  # unparsable: wrong, still counted
        P(5, " [0.12, 0.12, 0.52, 0.52]"),  # legacy → [.12, .12, .52, .5]: IoU .1444/.1676 = .862
    ]
    res = SCORERS.get("grounding")(preds, refs)
    assert res.details["per_sample"] == {"1": 1.0, "2": 0.0, "3": 0.0, "4": 0.0, "5": 1.0}
    assert (res.n, res.details["unparsed"]) == (5, 1)
    strict = SCORERS.get("grounding-strict")(preds[:4], refs)
    # strict parses 2 correctly; 5 is missing → wrong; IoU 0.5 is still not > 0.5
    assert strict.details["per_sample"] == {"1": 1.0, "2": 1.0, "3": 0.0, "4": 0.0, "5": 0.0}


def test_grounding_bad_reference_box():
    with pytest.raises(DataError, match="answer_bbox"):
        SCORERS.get("grounding")([P(1, "[0,0,1,1]")], [{"question_id": 1, "answer_bbox": "[1, 2]", "size": [1, 1]}])


# ------------------------------------------------------------------------------------------------------- OCR-VQA
def test_ocrvqa_lower_match_and_unanswerable_skip():
    refs = [{"question_id": "a", "answer": "Harry Potter"}, {"question_id": "b", "answer": "Unanswerable"},
            {"question_id": "c", "answer": "Emma"}, {"question_id": "d", "answer": "Fiction"}]
    preds = [P("a", "harry potter"), P("b", "Unanswerable"), P("c", "Emma ")]
    res = SCORERS.get("ocrvqa")(preds, refs)
    # b contains "Unanswerable": skipped but counted (wrong even though it matches); c: no stripping
    assert res.details["per_sample"] == {"a": 1.0, "b": 0.0, "c": 0.0}
    assert (res.n, res.details["unanswerable"]) == (3, 1)
    strict = SCORERS.get("ocrvqa-strict")(preds, refs)
    assert strict.details["per_sample"] == {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.0}


# ------------------------------------------------------------------------------------------ empty / bad predictions
@pytest.mark.parametrize(
    "name, ref, expected",
    [
        ("sqa", {"question_id": 1, "answer": "A"}, 0.0),
        ("textvqa", {"question_id": 1, "answers": ["b"] * 10}, 0.0),
        ("imagenet", {"question_id": 1, "answer": "cat"}, 100.0),  # "" in "cat"
        ("gqa", {"question_id": 1, "answer": "no"}, 0.0),
        ("vizwiz", {"question_id": 1, "answer": "no"}, 0.0),
        ("vqav2", {"question_id": 1, "answer": "no"}, 0.0),
        ("grounding", {"question_id": 1, "answer_bbox": "[0,0,1,1]", "size": [2, 2]}, 0.0),
        ("ocrvqa", {"question_id": 1, "answer": "Emma"}, 0.0),
    ],
)
def test_empty_prediction_counts_as_the_reference_counts_it(name, ref, expected):
    res = SCORERS.get(name)([P(1, "")], [ref])
    assert (res.accuracy, res.n) == (expected, 1)
    assert SCORERS.get(f"{name}-strict")([P(1, "")], [ref]).accuracy == 0.0


@pytest.mark.parametrize("name", SCORERS.names())
def test_prediction_without_text_is_a_data_error(name):
    ref = {"question_id": 1, "answer": "A", "answers": ["a"] * 10, "answer_bbox": "[0,0,1,1]", "size": [1, 1],
           "captions": ["a"], "bbox": [0, 0, 1, 1], "width": 1, "height": 1, "choices": ["a"], "table": "a | b"}
    with pytest.raises(DataError, match="'text'"):
        SCORERS.get(name)([{"question_id": 1}], [ref])

"""Loaders on the CoIN-layout fixture: train conversations, test questions with side files, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dymoe.data.coin import TestSample as CoinTestSample  # aliased: pytest would try to collect Test*
from dymoe.data.coin import TrainSample, load_train
from dymoe.data.formats import load_test
from dymoe.data.tasks import load_benchmark
from dymoe.errors import DataError
from dymoe.eval.scorers import SCORERS

SQA_I = "Answer with the option's letter from the given choices directly."
SHORT = "Answer the question using a single word or phrase."


def bench(root: Path, **kw):
    return load_benchmark(root / "benchmark.yaml", **kw)


def test_fixture_benchmark_paths(coin_root):
    b = bench(coin_root)
    assert b.data_root == coin_root
    assert [t.name for t in b.tasks] == ["ScienceQA", "TextVQA", "GQA", "Grounding", "OCRVQA"]


def test_load_train_sqa_with_text_only_row(coin_root):
    task = bench(coin_root).task("ScienceQA")
    samples = load_train(task)
    assert samples == [
        TrainSample("sqa-1", coin_root / "cl_dataset/ScienceQA/images/train/1.png",
                    [("Which color is the sky?\nA. blue\nB. green\n" + SQA_I, "A")]),
        TrainSample("sqa-2", None, [("Which is a mammal?\nA. frog\nB. whale\nC. trout\n" + SQA_I, "B")]),
    ]
    assert samples.skipped == []


def test_load_train_multi_turn(coin_root):
    (s,) = load_train(bench(coin_root).task("TextVQA"))
    assert s.turns == [("What brand is this?\n" + SHORT, "nike"), ("What colour is the logo?", "white")]


def test_load_train_diverse_rewrites_every_origin_turn(coin_root):
    (s,) = load_train(bench(coin_root).task("TextVQA"), instruction_type="diverse")
    assert s.turns[0][0] == "What brand is this?\nCapture the essence of your response in a single word or a concise phrase."
    assert s.turns[1][0] == "What colour is the logo?"  # no Origin sentence → unchanged


def test_load_test_merges_side_files(coin_root):
    b = bench(coin_root)
    sqa = load_test(b.task("ScienceQA"))
    assert isinstance(sqa[0], CoinTestSample)
    assert sqa[0].question_id == "101" and sqa[0].image == coin_root / "cl_dataset/ScienceQA/images/test/101.png"
    assert sqa[0].prompt == "Which is warmer?\nA. ice\nB. fire\n" + SQA_I
    assert sqa[0].reference["annotation"] == {"question": "Which is warmer?", "choices": ["ice", "fire"], "answer": 1}
    assert sqa[1].image is None  # text-only test question
    tv = load_test(b.task("TextVQA"))
    assert tv[0].reference["annotation"]["answers"] == ["12"] * 7 + ["twelve"] * 3
    gqa = load_test(b.task("GQA"))
    assert gqa[1].reference["annotation"] == {"question": "Which side is the cup on?", "answer": "left",
                                              "isBalanced": True}


def test_side_file_absent_falls_back_to_inline_answers(coin_root):
    b = bench(coin_root)
    for name in ("ScienceQA", "TextVQA", "GQA"):
        for path in b.task(name).annotations.values():
            path.unlink()
    sqa = load_test(b.task("ScienceQA"))
    assert "annotation" not in sqa[0].reference
    preds = [{"question_id": "101", "text": "B"}, {"question_id": "102", "text": "B"}]
    # inline answers "B" and "A": same score as with problems.json
    assert SCORERS.get("sqa")(preds, [s.reference for s in sqa]).accuracy == 50.0
    gqa = load_test(b.task("GQA"))
    assert SCORERS.get("gqa")([{"question_id": "20240872", "text": "Left."}], [s.reference for s in gqa]).accuracy == 100


def test_scores_agree_with_and_without_side_files(coin_root):
    b = bench(coin_root)
    refs = [s.reference for s in load_test(b.task("TextVQA"))]
    preds = [{"question_id": 34602, "text": "twelve"}]
    # 3 of 10 annotators wrote "twelve" (EvalAI maps number words only up to "ten") → soft score 0.9,
    # whether the side file comes merged into the references or passed explicitly
    assert SCORERS.get("textvqa")(preds, refs).accuracy == pytest.approx(90.0)
    ann = {"annotations": json.loads(b.task("TextVQA").annotations["annotations"].read_text())}
    assert SCORERS.get("textvqa")(preds, [], ann).accuracy == pytest.approx(90.0)
    assert SCORERS.get("textvqa")([{"question_id": 34602, "text": "12"}], refs).accuracy == 100.0


def test_10type_is_reproducible(coin_root):
    task = bench(coin_root).task("GQA")
    a = [s.prompt for s in load_test(task, instruction_type="10type", seed=1)]
    b = [s.prompt for s in load_test(task, instruction_type="10type", seed=1)]
    assert a == b and all(not p.endswith(SHORT) or p.endswith("one word or a short phrase.") for p in a)


# ----------------------------------------------------------------------------------------------------- bad input
def _rewrite(path: Path, mutate) -> None:
    rows = json.loads(path.read_text())
    mutate(rows)
    path.write_text(json.dumps(rows))


BAD_TRAIN = [
    ("missing conversations", lambda r: r[1].pop("conversations"), "row 1: missing or empty 'conversations'"),
    ("odd messages", lambda r: r[0]["conversations"].pop(), "row 0: 'conversations' has 1 messages"),
    ("wrong role", lambda r: r[0]["conversations"][1].update({"from": "human"}), "conversations\\[1\\] must be"),
    ("image missing", lambda r: r[0].update({"image": "ScienceQA/nope.png"}), "row 0: image .*nope.png does not exist"),
    ("escape ..", lambda r: r[0].update({"image": "../../etc/passwd"}), "row 0: image path '../../etc/passwd' escapes"),
    ("absolute", lambda r: r[1].update({"image": "/etc/passwd"}), "row 1: image path '/etc/passwd' is absolute"),
    ("token without image", lambda r: r[1]["conversations"][0].update({"value": "<image>\nQ"}), "has no 'image'"),
]


@pytest.mark.parametrize("case, mutate, match", BAD_TRAIN, ids=[c[0] for c in BAD_TRAIN])
def test_bad_train_rows_raise_and_can_be_skipped(coin_root, case, mutate, match):
    task = bench(coin_root).task("ScienceQA")
    _rewrite(task.train, mutate)
    with pytest.raises(DataError, match=match) as err:
        load_train(task)
    assert str(task.train) in str(err.value)
    samples = load_train(task, skip_invalid=True)
    assert len(samples) == 1 and len(samples.skipped) == 1
    bad_index = samples.skipped[0].index
    assert samples[0].id == ["sqa-1", "sqa-2"][1 - bad_index]
    assert f"row {bad_index}" in samples.skipped[0].reason


def test_malformed_json_names_file_and_line(coin_root):
    task = bench(coin_root).task("GQA")
    task.train.write_text('[{"id": 1,\n  "image": ]')
    with pytest.raises(DataError, match=r"GQA/train.json: malformed JSON at line 2"):
        load_train(task, skip_invalid=True)  # a broken file cannot be skipped row by row
    task.test.write_text('{"question_id": 1}')
    with pytest.raises(DataError, match="expected a JSON list of rows"):
        load_test(task)


BAD_TEST = [
    ("no question_id", lambda r: r[0].pop("question_id"), "row 0: missing field 'question_id'"),
    ("no text", lambda r: r[0].pop("text"), "row 0: missing field 'text'"),
    ("no answer", lambda r: r[0].pop("answer"), "row 0: missing field 'answer'"),
    ("escape", lambda r: r[0].update({"image": "../x.jpg"}), "row 0: image path '../x.jpg' escapes"),
    ("missing image", lambda r: r[0].update({"image": "OCR-VQA/none.jpg"}), "row 0: image .* does not exist"),
]


@pytest.mark.parametrize("case, mutate, match", BAD_TEST, ids=[c[0] for c in BAD_TEST])
def test_bad_test_rows(coin_root, case, mutate, match):
    task = bench(coin_root).task("OCRVQA")
    _rewrite(task.test, mutate)
    with pytest.raises(DataError, match=match):
        load_test(task)


def test_question_missing_from_side_file(coin_root):
    task = bench(coin_root).task("GQA")
    _rewrite(task.test, lambda r: r[0].update({"question_id": "999"}))
    with pytest.raises(DataError, match="row 0: question_id '999' is not in the side file"):
        load_test(task)


def test_undecodable_train_image(coin_root):
    task = bench(coin_root).task("ScienceQA")
    (coin_root / "cl_dataset/ScienceQA/images/train/1.png").write_bytes(b"\x89PNG but truncated")
    assert len(load_train(task)) == 2  # existence only by default
    with pytest.raises(DataError, match=r"ScienceQA/train.json row 0: image .*1.png does not decode"):
        load_train(task, decode_images=True)
    kept = load_train(task, decode_images=True, skip_invalid=True)
    assert [s.id for s in kept] == ["sqa-2"] and kept.skipped[0].index == 0 and kept.skipped[0].id == "sqa-1"

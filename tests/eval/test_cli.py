"""``dymoe score`` and ``dymoe metrics`` end to end through the CLI entry point."""

from __future__ import annotations

import json

import pytest

from dymoe.cli.main import main


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_score_json(tmp_path, capsys):
    refs = _write(tmp_path / "test.json", [{"question_id": 1, "text": "q", "answer": "Yes"},
                                          {"question_id": 2, "text": "q", "answer": "no"}])
    preds = _jsonl(tmp_path / "merge.jsonl", [{"question_id": 1, "text": "yes"}, {"question_id": 2, "text": "x"}])
    assert main(["score", "--scorer", "vqav2", "--predictions", str(preds), "--references", str(refs), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["accuracy"], out["n"], out["scorer"]) == (50.0, 2, "vqav2")


def test_score_sqa_with_side_files(tmp_path, capsys):
    refs = _write(tmp_path / "test.json", [{"question_id": "1", "text": "q"}, {"question_id": "2", "text": "q"}])
    problems = _write(tmp_path / "problems.json", {"1": {"choices": ["a", "b"], "answer": 1},
                                                   "2": {"choices": ["a", "b"], "answer": 0}})
    splits = _write(tmp_path / "pid_splits.json", {"test": ["1", "2"]})
    preds = _jsonl(tmp_path / "merge.jsonl", [{"question_id": "1", "text": "B"}])
    argv = ["score", "--scorer", "sqa", "--predictions", str(preds), "--references", str(refs),
            "--annotations", str(problems), "--annotations", f"pid_splits={splits}", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["accuracy"], out["n"]) == (50.0, 2)  # "2" has no prediction: FAILED


@pytest.mark.parametrize(
    "pred_lines, refs, scorer, match",
    [
        ('{"question_id": 1, "text": "a"}\n{broken\n', [], "vqav2", "merge.jsonl line 2: malformed JSON"),
        ('{"question_id": 1, "text": "a"}\n', "{", "vqav2", "test.json: malformed JSON"),
        ('{"question_id": 1, "text": "a"}\n', [{"question_id": 1}], "vqav2", "missing field 'answer'"),
        ('{"question_id": 1, "text": "a"}\n', [], "nope", "unknown scorer 'nope'"),
    ],
)
def test_score_bad_input_exits_2(tmp_path, capsys, pred_lines, refs, scorer, match):
    (tmp_path / "merge.jsonl").write_text(pred_lines)
    (tmp_path / "test.json").write_text(refs if isinstance(refs, str) else json.dumps(refs))
    argv = ["score", "--scorer", scorer, "--predictions", str(tmp_path / "merge.jsonl"),
            "--references", str(tmp_path / "test.json")]
    assert main(argv) == 2
    assert match in capsys.readouterr().err


def test_metrics_json_and_table(tmp_path, capsys):
    path = _write(tmp_path / "matrix.json", {"tasks": ["A", "B", "C"],
                                             "accuracy": [[80], [70, 90], [60, 85, 75]]})
    assert main(["metrics", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["MFN"] == pytest.approx(73.3333, abs=1e-4)
    assert out["BWT"] == pytest.approx(-12.5)
    assert set(out) >= {"MFT", "MFN", "MAA", "BWT"}
    assert main(["metrics", str(path)]) == 0
    table = capsys.readouterr().out
    assert "MAA        77.78" in table and "BWT        -12.50" in table


def test_metrics_rejects_non_triangular(tmp_path, capsys):
    path = _write(tmp_path / "matrix.json", {"tasks": ["A", "B"], "accuracy": [[80, 1], [70, 90]]})
    assert main(["metrics", str(path)]) == 2
    assert "row 0 has 2 cells, expected 1" in capsys.readouterr().err

"""Accuracy-matrix metrics against hand-computed values and an independent numpy formulation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dymoe.errors import DataError
from dymoe.eval.metrics import bwt, forgetting, load_matrix, maa, mfn, mft, save_matrix, summarize

M3 = [[80.0], [70.0, 90.0], [60.0, 85.0, 75.0]]


def test_3x3_by_hand():
    assert mft(M3) == pytest.approx((80 + 90 + 75) / 3)  # 81.667
    assert mfn(M3) == pytest.approx((60 + 85 + 75) / 3)  # 73.333
    assert maa(M3) == pytest.approx((80 + (70 + 90) / 2 + (60 + 85 + 75) / 3) / 3)  # 77.778
    assert bwt(M3) == pytest.approx(((60 - 80) + (85 - 90)) / 2)  # -12.5
    assert forgetting(M3) == pytest.approx(((80 - 60) + (90 - 85)) / 2)  # 12.5


def test_forgetting_uses_the_max_over_rows_not_the_diagonal():
    m = [[50.0], [70.0, 90.0], [60.0, 85.0, 75.0]]  # task 1 improved after task 2 (positive transfer)
    assert bwt(m) == pytest.approx(((60 - 50) + (85 - 90)) / 2)  # 2.5
    assert forgetting(m) == pytest.approx(((70 - 60) + (90 - 85)) / 2)  # 7.5


def test_8x8_by_hand():
    # a[j][i] = 80 - 2 (j - i): every task starts at 80 and loses 2 points per later task
    m = [[80.0 - 2 * (j - i) for i in range(j + 1)] for j in range(8)]
    s = summarize(m)
    assert s["MFT"] == pytest.approx(80.0)
    assert s["MFN"] == pytest.approx(73.0)  # mean of 66, 68, ..., 80
    assert s["MAA"] == pytest.approx(76.5)  # mean over j of (80 - j)
    assert s["BWT"] == pytest.approx(-8.0)  # -2 * mean(7, 6, ..., 1)
    assert s["forgetting"] == pytest.approx(8.0)
    assert s["T"] == 8


def test_random_8x8_against_numpy():
    rng = np.random.default_rng(0)
    full = rng.uniform(0, 100, size=(8, 8))
    m = [list(full[j, : j + 1]) for j in range(8)]
    tri = np.where(np.tril(np.ones((8, 8))) > 0, full, np.nan)
    assert mft(m) == pytest.approx(np.mean(np.diag(full)))
    assert mfn(m) == pytest.approx(np.mean(full[7]))
    assert maa(m) == pytest.approx(np.mean(np.nanmean(tri, axis=1)))
    assert bwt(m) == pytest.approx(np.mean(full[7, :7] - np.diag(full)[:7]))
    assert forgetting(m) == pytest.approx(np.mean(np.nanmax(tri, axis=0)[:7] - full[7, :7]))


def test_single_task_has_no_bwt():
    s = summarize([[42.0]])
    assert (s["MFT"], s["MFN"], s["MAA"], s["BWT"], s["forgetting"]) == (42.0, 42.0, 42.0, None, None)


def test_save_load_roundtrip(tmp_path):
    path = tmp_path / "sub" / "matrix.json"
    save_matrix(path, ["A", "B", "C"], M3)
    assert load_matrix(path) == (["A", "B", "C"], M3)
    assert [p.name for p in path.parent.iterdir()] == ["matrix.json"]  # no temp file left


@pytest.mark.parametrize(
    "payload, match",
    [
        ("{not json", "malformed JSON at line 1"),
        ({"tasks": ["A"]}, "keys 'tasks' and 'accuracy'"),
        ({"tasks": ["A", "B"], "accuracy": [[1.0, 2.0]]}, "row 0 has 2 cells, expected 1"),
        ({"tasks": ["A", "B"], "accuracy": [[1.0], [2.0]]}, "row 1 has 1 cells, expected 2"),
        ({"tasks": ["A", "B"], "accuracy": [[1.0], [2.0, "x"]]}, "row 1 column 1 is 'x', expected a number"),
        ({"tasks": ["A", "B"], "accuracy": [[1.0], [2.0, None]]}, "row 1 column 1 is None"),
        ({"tasks": ["A", "B"], "accuracy": [[1.0], [2.0, 101]]}, r"expected a percentage in \[0, 100\]"),
        ({"tasks": ["A"], "accuracy": [[1.0], [2.0, 3.0]]}, "2 rows but only 1 task names"),
        ({"tasks": ["A", "A"], "accuracy": [[1.0]]}, "repeated names"),
        ({"tasks": ["A", 3], "accuracy": [[1.0]]}, "list of non-empty task names"),
    ],
)
def test_load_matrix_rejects(tmp_path, payload, match):
    path = tmp_path / "m.json"
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    with pytest.raises(DataError, match=match):
        load_matrix(path)


def test_save_matrix_refuses_bad_matrix_and_writes_nothing(tmp_path):
    path = tmp_path / "m.json"
    with pytest.raises(DataError):
        save_matrix(path, ["A", "B"], [[1.0], [2.0]])
    assert list(tmp_path.iterdir()) == []

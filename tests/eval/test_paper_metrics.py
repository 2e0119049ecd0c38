"""The peers' metric definitions reproduce the papers' own aggregates from their per-task cells.

LLaVA-CMoE Table 1 (seed 002, lines 115-128) and Table 9 (lines 364-374); D-MoLE Table 2 (seed 003, lines 250-280).
"""

from __future__ import annotations

import pytest

from dymoe.errors import DataError
from dymoe.eval.metrics import (
    METRICS,
    cmoe_bwt,
    cmoe_summary,
    dmole_average,
    dmole_per_task,
    dmole_summary,
    load_matrix,
    save_matrix,
    summarize,
)

# ---------------------------------------------------------------------------------------------- LLaVA-CMoE
# Table 1: method -> (Immediate row, Last row, printed Mean Immediate, printed Mean Last, printed BWT)
CMOE_T1 = {
    "LoRA": ([75.01, 58.36, 96.08, 53.87, 56.54, 18.32, 63.23, 53.96],
             [68.50, 42.01, 34.65, 40.39, 40.87, 3.60, 55.29, 53.96], 59.42, 42.41, -17.01),
    "MoELoRA": ([78.97, 61.01, 97.01, 56.24, 56.30, 20.63, 66.10, 60.57],
                [67.06, 48.16, 36.22, 41.83, 41.00, 2.62, 56.48, 60.57], 62.10, 44.24, -17.86),
    "EWC": ([79.23, 61.26, 96.91, 56.43, 60.04, 19.21, 66.00, 60.44],
            [60.25, 47.92, 30.36, 41.33, 31.12, 4.53, 56.31, 60.44], 62.44, 41.53, -20.90),
    "LWF": ([78.83, 61.57, 97.07, 56.75, 53.48, 20.57, 65.27, 61.10],
            [65.15, 49.46, 32.52, 41.05, 37.88, 4.81, 56.20, 61.10], 61.83, 43.51, -18.31),
    "Ours": ([79.01, 59.94, 96.85, 56.43, 57.44, 25.63, 65.15, 62.01],
             [77.55, 58.17, 94.50, 48.91, 55.45, 23.40, 56.40, 59.44], 62.81, 59.23, -3.58),
}


@pytest.mark.parametrize("method", sorted(CMOE_T1))
def test_cmoe_bwt_and_means_reproduce_table1(method):
    imm, last, mean_imm, mean_last, bwt = CMOE_T1[method]
    # the paper prints 2 decimals (EWC's -20.9075 appears as -20.90, LWF's Last mean 43.5213 as 43.51)
    assert cmoe_bwt(imm, last) == pytest.approx(bwt, abs=0.011)
    assert sum(imm) / 8 == pytest.approx(mean_imm, abs=0.011)
    assert sum(last) / 8 == pytest.approx(mean_last, abs=0.012)  # LWF: 43.52125 printed as 43.51 (cmoe.md D2)


def test_cmoe_bwt_divides_by_n_not_n_minus_one():
    imm, last, *_ = CMOE_T1["Ours"]
    gem_style = sum(b - a for a, b in zip(imm[:-1], last[:-1])) / 7  # the GEM/CoIN form over N-1 tasks
    assert round(gem_style, 2) != -3.58
    assert round(sum(b - a for a, b in zip(imm, last)) / 8, 2) == -3.58


def test_cmoe_summary_from_the_sequential_matrix():
    # Table 9 (the matrix during training, oracle router for the newest task) with Table 1's Last row (PTL):
    t9 = [
        [79.01],
        [79.01, 59.94],
        [79.01, 59.71, 96.85],
        [79.00, 59.28, 96.31, 56.43],
        [78.21, 58.59, 95.13, 55.86, 57.44],
        [78.21, 58.58, 95.12, 54.40, 57.42, 25.63],
        [77.73, 58.31, 94.51, 49.86, 56.31, 24.02, 65.15],
        CMOE_T1["Ours"][1],
    ]
    s = cmoe_summary(t9, immediate=CMOE_T1["Ours"][0])
    assert round(s["BWT"], 2) == -3.58 and round(s["mean_last"], 2) == 59.23
    # the diagonal of Table 9 is the Immediate row except OCR-VQA (D1: 62.01 oracle vs 59.44 PTL in the last row)
    s_diag = cmoe_summary(t9)
    assert s_diag["immediate"][:7] == CMOE_T1["Ours"][0][:7] and s_diag["immediate"][7] == 59.44
    assert round(s_diag["BWT"], 2) == round((sum(t9[-1]) - sum(s_diag["immediate"])) / 8, 2) == -3.26


# --------------------------------------------------------------------------------------------------- D-MoLE
# Table 2 cells (VizWiz-Cap, SK-VG, TextCaps, IconQA, OCR-VQA, Flickr30k, VizWiz-VQA, KVQA, PMC-VQA) + Average
DMOLE_AVG = {
    "Seq-FT": [80.86, 25.42, 92.33, 69.06, 49.62, 67.37, 47.01, 40.74, 35.59, 56.45],
    "O-LoRA": [99.07, 35.25, 81.24, 69.26, 46.67, 71.76, 48.17, 40.56, 37.16, 58.79],
    "D-MoLE": [148.19, 57.29, 115.92, 78.62, 53.64, 77.73, 53.37, 40.87, 39.23, 73.87],
}
DMOLE_LAST = {
    "Seq-FT": [52.70, 21.76, 72.22, 62.26, 50.15, 77.24, 62.03, 49.95, 48.95, 55.25],
    "O-LoRA": [92.38, 31.30, 80.26, 71.69, 47.85, 78.46, 63.75, 47.90, 44.80, 62.04],
    "D-MoLE": [148.77, 61.60, 131.41, 93.05, 62.85, 78.32, 69.16, 46.05, 48.40, 82.18],
}
DMOLE_BWT = {
    "Seq-FT": [-79.89, -42.95, -49.41, -23.33, -10.84, -20.65, -8.45, -0.10, None, -29.45],
    "O-LoRA": [-59.41, -17.14, -56.26, -11.87, -10.68, -11.44, -2.91, -0.75, None, -21.31],
    "D-MoLE": [-0.06, 0.01, -2.64, -1.55, -2.23, -0.25, -3.48, -1.70, None, -1.49],
}
ZERO_SHOT = [50.54, 19.61, 61.25, 50.49, 44.17, 66.15, 47.38, 42.63, 37.40]


@pytest.mark.parametrize("method", sorted(DMOLE_AVG))
def test_dmole_average_columns_reproduce_table2(method):
    per_task = {"AVG": DMOLE_AVG[method][:9], "Last": DMOLE_LAST[method][:9], "BWT": DMOLE_BWT[method][:9]}
    avg = dmole_average(per_task)
    # dmole.md §13: every printed Average is the mean of its cells within 0.01 (Seq-FT AVG 56.444 prints 56.45)
    assert avg["AVG"] == pytest.approx(DMOLE_AVG[method][9], abs=0.0101)
    assert avg["Last"] == pytest.approx(DMOLE_LAST[method][9], abs=0.0101)
    assert avg["BWT"] == pytest.approx(DMOLE_BWT[method][9], abs=0.0101)  # over the 8 tasks that have a BWT
    if method == "D-MoLE":
        assert [round(avg[k], 2) for k in ("AVG", "Last", "BWT")] == [73.87, 82.18, -1.49]


def _matrix_with_table2_cells(method: str) -> list[list[float]]:
    """A full 9 x 9 matrix whose Eqs. 16-18 give the paper's per-task cells exactly.

    Column i: stages before i at z_i (the zero-shot score; free for the last two tasks, which have too few cells),
    the diagonal d_i, stages i+1..N-1 at m_i, the last stage at Last_i. Solving Eq. 16 and Eq. 18 for d_i, m_i:
      N * AVG_i = (i) z_i + d_i + k m_i + L_i       (k = N - i - 2 middle stages, i 0-based)
      (N - 1 - i) (BWT_i + d_i) = k m_i + L_i
    """
    n = 9
    avg, last, bwt = DMOLE_AVG[method], DMOLE_LAST[method], DMOLE_BWT[method]
    cols = []
    for i in range(n):
        k = n - i - 2
        if i == n - 1:  # no BWT: d = Last, z from AVG
            d = last[i]
            z = (n * avg[i] - d) / i
            cols.append([z] * i + [d])
            continue
        if k == 0:  # one later stage: d from BWT, z from AVG
            d = last[i] - bwt[i]
            z = (n * avg[i] - d - last[i]) / i
            cols.append([z] * i + [d, last[i]])
            continue
        z = ZERO_SHOT[i]
        # subtract the two equations: N AVG - i z - (N-1-i)(BWT + d) = d  ->  d
        d = (n * avg[i] - i * z - (n - 1 - i) * bwt[i]) / (n - i)
        m = ((n - 1 - i) * (bwt[i] + d) - last[i]) / k
        cols.append([z] * i + [d] + [m] * k + [last[i]])
    return [[cols[i][t] for i in range(n)] for t in range(n)]


@pytest.mark.parametrize("method", sorted(DMOLE_AVG))
def test_dmole_eqs_16_to_18_on_a_full_matrix(method):
    m = _matrix_with_table2_cells(method)
    per_task = dmole_per_task(m)
    assert per_task["AVG"] == pytest.approx(DMOLE_AVG[method][:9], abs=1e-9)
    assert per_task["Last"] == pytest.approx(DMOLE_LAST[method][:9], abs=1e-9)
    assert per_task["BWT"][:8] == pytest.approx(DMOLE_BWT[method][:8], abs=1e-9) and per_task["BWT"][8] is None
    if method == "D-MoLE":  # CIDEr cells above 100 are fine
        assert max(max(r) for r in m) > 100
        s = dmole_summary(m)
        assert (round(s["AVG"], 2), round(s["Last"], 2), round(s["BWT"], 2)) == (73.87, 82.18, -1.49)


def test_dmole_formulas_on_a_hand_matrix():
    m = [[10.0, 1.0, 2.0],
         [8.0, 20.0, 4.0],
         [6.0, 18.0, 30.0]]
    per = dmole_per_task(m)
    assert per["AVG"] == pytest.approx([8.0, 13.0, 12.0])
    assert per["Last"] == [6.0, 18.0, 30.0]
    # BWT_1 = ((8 - 10) + (6 - 10)) / 2 = -3; BWT_2 = (18 - 20) / 1 = -2; BWT_3 undefined
    assert per["BWT"] == [-3.0, -2.0, None]
    assert dmole_summary(m)["BWT"] == -2.5


def test_registry_and_full_matrix_files(tmp_path):
    assert METRICS.names() == ["cmoe", "coin", "dmole"]
    assert METRICS.get("coin") is summarize
    path = tmp_path / "m.json"
    m = [[110.0, 1.0], [105.0, 20.0]]
    save_matrix(path, ["A", "B"], m, full=True, max_cell=None)
    assert load_matrix(path) == (["A", "B"], m)
    with pytest.raises(DataError, match="row 1 has 1 cells, expected 2"):
        save_matrix(path, ["A", "B"], [[1.0, 2.0], [3.0]], full=True)
    with pytest.raises(DataError, match=r"expected a percentage in \[0, 100\]"):
        save_matrix(path, ["A", "B"], m, full=True)
    with pytest.raises(DataError, match="every row holds every task"):
        dmole_summary([[1.0], [2.0, 3.0]])

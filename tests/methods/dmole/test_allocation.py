"""D-MoLE's budget split and allocation (dmole.md §4, §5) against hand computations: B = 48 on 96 slots, Eqs. 13-15,
the vision floor, caps, deterministic ties, the equal / joint ablation splits and the cumulative architecture."""

from __future__ import annotations

import math

import pytest

from dymoe.methods.dmole.allocation import (
    allocate,
    extend_arch,
    modality_budgets,
    modality_ratios,
    modality_scores,
    round_half_up,
    top_slots,
    total_budget,
)


def _slots(n_llm: int, n_vis: int, llm_score, vis_score):
    scores, modality = {}, {}
    for i in range(n_llm):
        s = f"llm.{i:02d}"
        scores[s], modality[s] = float(llm_score(i)), "llm"
    for i in range(n_vis):
        s = f"vis.{i:02d}"
        scores[s], modality[s] = float(vis_score(i)), "vision"
    return scores, modality


def test_budget_48_of_96_slots_and_the_code_rounding():
    assert total_budget(96, 0.5) == 48
    assert round_half_up(2.5) == 3 and round(2.5) == 2  # the code's int(x + 0.5), not banker's rounding
    assert total_budget(12, 0.5) == 6 and total_budget(5, 0.5) == 3 and total_budget(7, 0.3) == 2


def test_eqs_13_to_15_on_hand_made_scores():
    # 48 LLM slots scoring 3.0, 48 vision slots scoring 1.0: Score_LLM = 144, Score_Vis = 48, r_vis = 0.25
    scores, modality = _slots(48, 48, lambda i: 3.0, lambda i: 1.0)
    mod = modality_scores(scores, modality)
    assert mod == {"llm": 144.0, "vision": 48.0}
    assert modality_ratios(mod) == {"llm": 0.75, "vision": 0.25}
    # B_vis = max(floor(0.25 * 48) = 12, round_half_up(0.25 * 48) = 12) = 12; B_llm = 36
    out = allocate(scores, modality)
    assert out["budget"] == 48 and out["budgets"] == {"llm": 36, "vision": 12}
    # the paper's formula: the norm of the concatenated gradient, sqrt(sum S^2)
    l2 = modality_scores(scores, modality, "l2_concat")
    assert l2["llm"] == pytest.approx(math.sqrt(48 * 9.0)) and l2["vision"] == pytest.approx(math.sqrt(48.0))


def test_the_vision_floor_and_its_removal():
    # vision gets r_vis = 10 / (10 + 390) = 2.5 %: round_half_up(1.2) = 1 < the floor floor(0.25 * 48) = 12
    scores, modality = _slots(48, 48, lambda i: 390 / 48, lambda i: 10 / 48)
    assert allocate(scores, modality)["budgets"] == {"llm": 36, "vision": 12}
    assert allocate(scores, modality, min_vision_frac=0.0)["budgets"] == {"llm": 47, "vision": 1}
    # a vision-heavy task: r_vis = 0.8 -> round_half_up(38.4) = 38
    scores, modality = _slots(48, 48, lambda i: 1.0, lambda i: 4.0)
    assert allocate(scores, modality)["budgets"] == {"llm": 10, "vision": 38}


def test_caps_at_the_available_slots():
    ratios = {"llm": 0.1, "vision": 0.9}
    # 4 vision slots only (the tiny backbone): B_vis capped at 4, the rest goes to the LLM
    assert modality_budgets(ratios, 10, {"llm": 16, "vision": 4}) == {"llm": 6, "vision": 4}
    # the LLM capped: what it cannot take goes back to the vision tower
    assert modality_budgets({"llm": 0.9, "vision": 0.1}, 10, {"llm": 5, "vision": 8}) == {"llm": 5, "vision": 5}
    # no vision slots at all: the floor does not apply
    assert modality_budgets(ratios, 6, {"llm": 8, "vision": 0}) == {"llm": 6, "vision": 0}
    # a budget above the slot count
    assert modality_budgets(ratios, 30, {"llm": 4, "vision": 4}) == {"llm": 4, "vision": 4}


def test_top_slots_with_ties_are_deterministic():
    scores = {"b": 1.0, "a": 1.0, "c": 2.0, "d": 1.0, "e": 0.5}
    assert top_slots(scores, 3) == ["c", "a", "b"]  # score desc, then name asc
    assert top_slots(scores, 0) == []
    # ties at the threshold inside allocate: 48 LLM slots all equal, the first names win
    scores, modality = _slots(48, 48, lambda i: 1.0, lambda i: 2.0 if i < 3 else 1.0)
    out = allocate(scores, modality)
    b = out["budgets"]
    assert out["chosen_by_modality"]["llm"] == [f"llm.{i:02d}" for i in range(b["llm"])]
    assert out["chosen_by_modality"]["vision"][:3] == ["vis.00", "vis.01", "vis.02"]
    assert out["chosen_by_modality"]["vision"][3:] == [f"vis.{i:02d}" for i in range(3, b["vision"])]
    assert len(out["chosen"]) == 48 and out["chosen"] == [s for s in scores if s in set(out["chosen"])]


def test_allocation_picks_the_top_scores_per_modality():
    scores, modality = _slots(8, 4, lambda i: float(i), lambda i: 10.0 - i)
    out = allocate(scores, modality)  # B = 6; r_vis = 34 / 62 -> round_half_up(3.29) = 3
    assert out["budgets"] == {"llm": 3, "vision": 3}
    assert out["chosen_by_modality"] == {"llm": ["llm.07", "llm.06", "llm.05"], "vision": ["vis.00", "vis.01", "vis.02"]}


def test_ablation_splits_and_modalities():
    scores, modality = _slots(8, 4, lambda i: float(i), lambda i: 0.1)
    assert allocate(scores, modality, split="equal")["budgets"] == {"llm": 3, "vision": 3}
    joint = allocate(scores, modality, split="joint")  # one ranking over all 12 slots: the 6 best LLM slots
    assert joint["budgets"] == {"llm": 6, "vision": 0}
    llm_only = allocate(scores, modality, modalities=["llm"])  # ablation v1: B = round(0.5 * 8) = 4
    assert llm_only["budget"] == 4 and llm_only["budgets"] == {"llm": 4, "vision": 0}


def test_cumulative_architecture():
    arch = extend_arch({}, ["a", "b"], 0)
    arch = extend_arch(arch, ["b", "c"], 1)
    assert arch == {"a": [0], "b": [0, 1], "c": [1]}
    assert extend_arch(arch, ["b"], 1) == arch  # idempotent

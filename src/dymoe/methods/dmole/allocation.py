"""D-MoLE's allocation as pure functions (dmole.md §4, §5, §15): slot scores → modality scores (Eq. 13) → ratios
(Eq. 14) → integer budgets (Eq. 15 with the code's rounding, vision floor and caps) → top-B_M slots per modality
(Eq. 4–5, deterministic ties) → the cumulative architecture.

A *slot* is one attention projection group of one layer: the q/k/v linears of a block (one fused ``qkv`` linear on
InternViT / InternLM2) or its output projection. Slot scores are plain floats keyed by slot name; modalities are
``"llm"`` and ``"vision"``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

MODALITIES = ("llm", "vision")
MODALITY_SCORES = ("sum", "l2_concat")
SPLITS = ("gradient", "equal", "joint")


def round_half_up(x: float) -> int:
    """``int(x + 0.5)`` for ``x >= 0``: the official code's rounding (Python's ``round`` rounds half to even)."""
    return int(math.floor(x + 0.5))


def total_budget(num_slots: int, rho: float) -> int:
    """``B = round_half_up(ρ · |C|)`` slots per task (dmole.md §2: 48 of 96 at ρ = 0.5)."""
    if not 0 < rho <= 1:
        raise ValueError(f"budget ratio rho must be in (0, 1], got {rho}")
    return round_half_up(rho * num_slots)


def modality_scores(scores: Mapping[str, float], modality_of: Mapping[str, str], mode: str = "sum") -> dict[str, float]:
    """``Score_M`` per modality (Eq. 13): ``sum`` = Σ of the per-slot norms (the code), ``l2_concat`` = the norm of
    the concatenated gradient, ``sqrt(Σ S_m²)`` (the paper's formula when each slot score is one gradient's norm).
    Every modality of :data:`MODALITIES` is present (0 when it has no slot)."""
    if mode not in MODALITY_SCORES:
        raise ValueError(f"modality score mode must be one of {MODALITY_SCORES}, got {mode!r}")
    out = dict.fromkeys(MODALITIES, 0.0)
    for slot, s in scores.items():
        out[modality_of[slot]] += float(s) if mode == "sum" else float(s) ** 2
    if mode == "l2_concat":
        out = {m: math.sqrt(v) for m, v in out.items()}
    return out


def modality_ratios(mod_scores: Mapping[str, float]) -> dict[str, float]:
    """``r_M = Score_M / Σ Score`` (Eq. 14); an all-zero score (no gradient anywhere) splits evenly."""
    total = sum(mod_scores.values())
    if total <= 0:
        return {m: 1.0 / len(mod_scores) for m in mod_scores}
    return {m: float(v) / total for m, v in mod_scores.items()}


def modality_budgets(ratios: Mapping[str, float], budget: int, available: Mapping[str, int], *,
                     min_vision_frac: float = 0.25, split: str = "gradient") -> dict[str, int]:
    """Integer budgets ``B_M`` (Eq. 15 and the code's rule, dmole.md §4):

    ``B_vis = max(floor(min_vision_frac · B), round_half_up(r_vis · B))``, ``B_llm = B − B_vis``; then each is capped
    at the modality's number of slots (``available``), the other taking what is left up to its own cap. ``split``
    ``equal`` gives each modality ``B/2`` (ablation v3, no inter-modal curriculum; the floor does not apply);
    ``joint`` is handled by :func:`allocate` (one ranking over every slot). A modality without slots gets 0.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    n_llm, n_vis = int(available.get("llm", 0)), int(available.get("vision", 0))
    budget = min(int(budget), n_llm + n_vis)
    if n_vis == 0 or n_llm == 0:
        return {"llm": min(budget, n_llm), "vision": min(budget, n_vis)}
    if split == "equal":
        b_vis = budget // 2
    else:
        b_vis = max(math.floor(min_vision_frac * budget), round_half_up(ratios["vision"] * budget))
    b_vis = min(b_vis, n_vis, budget)
    b_llm = min(budget - b_vis, n_llm)
    b_vis = min(budget - b_llm, n_vis)  # what the language model could not take goes back to the vision tower
    return {"llm": b_llm, "vision": b_vis}


def top_slots(scores: Mapping[str, float], k: int) -> list[str]:
    """The ``k`` best slots, by score descending, ties by name ascending (deterministic; the code samples ties)."""
    return sorted(scores, key=lambda s: (-float(scores[s]), s))[: max(int(k), 0)]


def allocate(scores: Mapping[str, float], modality_of: Mapping[str, str], *, rho: float = 0.5,
             min_vision_frac: float = 0.25, mode: str = "sum", split: str = "gradient",
             modalities: Sequence[str] = MODALITIES) -> dict:
    """One task's allocation: ``{"budget": B, "modality_scores", "ratios", "budgets": {M: B_M}, "chosen": [slot,
    ...] (in ``scores`` order), "chosen_by_modality": {M: [slot, ...] best first}}``.

    ``modalities``: where experts may go (ablations v1 = ``[llm]``, v2 = ``[vision]``): the other modality's slots
    are not candidates. ``B`` counts the candidate slots (ρ · |C|).
    """
    cand = {s: float(v) for s, v in scores.items() if modality_of[s] in modalities}
    budget = total_budget(len(cand), rho)
    mod = modality_scores(cand, modality_of, mode)
    ratios = modality_ratios(mod)
    available = {m: sum(1 for s in cand if modality_of[s] == m) for m in MODALITIES}
    if split == "joint":
        picked = top_slots(cand, budget)
        by_mod = {m: [s for s in picked if modality_of[s] == m] for m in MODALITIES}
        budgets = {m: len(v) for m, v in by_mod.items()}
    else:
        budgets = modality_budgets(ratios, budget, available, min_vision_frac=min_vision_frac, split=split)
        by_mod = {m: top_slots({s: v for s, v in cand.items() if modality_of[s] == m}, budgets[m])
                  for m in MODALITIES}
    chosen_set = {s for v in by_mod.values() for s in v}
    return {"budget": budget, "modality_scores": mod, "ratios": ratios, "budgets": budgets,
            "chosen": [s for s in scores if s in chosen_set], "chosen_by_modality": by_mod}


def extend_arch(arch: Mapping[str, Sequence[int]], chosen: Sequence[str], task: int) -> dict[str, list[int]]:
    """The cumulative architecture after task ``task``: ``{slot: [task ids that have an expert there]}`` (the
    official ``*_arch.json`` format), ``chosen`` slots receiving ``task``."""
    out = {s: list(v) for s, v in arch.items()}
    for s in chosen:
        if task not in out.setdefault(s, []):
            out[s].append(task)
    return out

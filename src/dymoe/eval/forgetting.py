"""Format forgetting vs knowledge forgetting: how much of a measured drop is a right answer in the wrong form.

Every cell of a run's accuracy matrix is scored three ways from the predictions already on disk:

- ``reference``: CoIN's scorer (the published protocol, quirks kept);
- ``strict``: its ``-strict`` variant (:mod:`dymoe.eval.scorers`);
- ``knowledge``: per question, the best score of either scorer over a few *surface forms* of the prediction
  (:func:`surface_forms`: as generated; with "The answer is", "Answer:" and a trailing period / quotes removed
  and only the first line kept; that core lower-, upper-, capitalised- and title-cased). A question counts as
  known when some form of the answer is right; the denominator is the reference scorer's.

Index convention (as :mod:`dymoe.eval.metrics`): ``M[k][i]`` is task ``i`` evaluated after training task ``k``
(0-based, ``i <= k``). Per cell ``k > i``:

- measured forgetting ``F = R[i][i] − R[k][i]`` (reference scorer), knowledge forgetting ``G = K[i][i] − K[k][i]``;
- format drift ``D = F − G``: the part of the measured drop that disappears once the form is forgiven;
- share ``D / F`` when ``F > 0`` (else ``None``: nothing was forgotten to explain). A share of 1 means the whole
  drop is format; 0 means the answers themselves were lost; it can leave [0, 1] when forms change in both ways.

Only scorers with a ``-strict`` variant (the CoIN ones) are analysed; other cells are ``None``. The forms do not
extract a word from a free sentence ("It is a cat"), so drift of that kind is counted as knowledge forgetting:
the share is a lower bound on format drift.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from dymoe.eval.scorers import SCORERS, base_name

FILE = "format_forgetting.json"
ANSWER_PHRASE = re.compile(r"^\s*(?:the\s+)?(?:correct\s+|final\s+)?answer\s*(?:is|:)?\s*:?\s*", re.IGNORECASE)
TRAILING = re.compile(r"[\s.!?。]+$")
QUOTES = "\"'“”‘’`"

Matrix = list[list[float | None]]


def core_answer(text: str) -> str:
    """The answer with its form removed: first non-empty line, no "The answer is" / "Answer:", no quotes or
    trailing period (case unchanged)."""
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    out = lines[0] if lines else ""
    out = ANSWER_PHRASE.sub("", out, count=1)
    out = TRAILING.sub("", out.strip()).strip().strip(QUOTES).strip()
    return TRAILING.sub("", out)


FORMS: tuple[Callable[[str], str], ...] = (
    lambda t: t,
    core_answer,
    lambda t: core_answer(t).lower(),
    lambda t: core_answer(t).upper(),
    lambda t: core_answer(t).capitalize(),
    lambda t: core_answer(t).title(),
)


def surface_forms(text: str) -> list[str]:
    """Every form :data:`FORMS` gives for ``text`` (duplicates kept, so form ``j`` is always the same function)."""
    return [f(text) for f in FORMS]


def variants(scorer: str) -> tuple[str, str] | None:
    """``(reference, strict)`` scorer names for a configured scorer, or None when it has no ``-strict`` variant."""
    ref = base_name(scorer)
    strict = f"{ref}-strict"
    return (ref, strict) if ref in SCORERS and strict in SCORERS else None


def score_cell(scorer: str, predictions: list[dict], references: list[dict],
               annotations: dict | None = None) -> dict[str, float] | None:
    """``{"reference", "strict", "knowledge"}`` accuracies (percent) of one cell, or None if not analysable."""
    names = variants(scorer)
    if names is None:
        return None
    ref_name, strict_name = names
    ref = SCORERS.get(ref_name)(predictions, references, annotations)
    strict = SCORERS.get(strict_name)(predictions, references, annotations)
    best = {q: 0.0 for q in ref.details["per_sample"]}
    for j in range(len(FORMS)):
        rewritten = [{**p, "text": FORMS[j](str(p.get("text", "")))} for p in predictions]
        for name in names:
            per = SCORERS.get(name)(rewritten, references, annotations).details["per_sample"]
            for q in best:
                best[q] = max(best[q], float(per.get(q, 0.0)))
    knowledge = 100.0 * sum(best.values()) / ref.n if ref.n else 0.0
    return {"reference": float(ref.accuracy), "strict": float(strict.accuracy), "knowledge": knowledge}


def drift_matrices(reference: Matrix, knowledge: Matrix) -> dict[str, Matrix]:
    """Per cell ``k > i``: measured forgetting ``F``, knowledge forgetting ``G``, drift ``F − G`` and its share
    of ``F`` (see the module docstring); diagonal cells and unanalysed ones are ``None``."""
    out: dict[str, Matrix] = {"forgetting": [], "knowledge_forgetting": [], "format_drift": [], "drift_share": []}
    for k, row in enumerate(reference):
        rows = {key: [] for key in out}
        for i in range(len(row)):
            r_ii, r_ki, k_ii, k_ki = reference[i][i], reference[k][i], knowledge[i][i], knowledge[k][i]
            if k == i or None in (r_ii, r_ki, k_ii, k_ki):
                for key in rows:
                    rows[key].append(None)
                continue
            f, g = r_ii - r_ki, k_ii - k_ki
            rows["forgetting"].append(round(f, 4))
            rows["knowledge_forgetting"].append(round(g, 4))
            rows["format_drift"].append(round(f - g, 4))
            rows["drift_share"].append(round((f - g) / f, 4) if f > 0 else None)
        for key in out:
            out[key].append(rows[key])
    return out


def format_forgetting(tasks: Sequence[str], cells: dict[tuple[int, int], dict[str, float] | None]) -> dict[str, Any]:
    """The ``format_forgetting.json`` content from scored cells ``{(k, i): score_cell(...)}`` (0-based).

    Returns ``{"tasks", "reference", "strict", "knowledge", "forgetting", "knowledge_forgetting", "format_drift",
    "drift_share", "summary"}``; ``summary`` has the mean measured and knowledge forgetting over the last row's
    earlier tasks and the share of the summed measured forgetting that is format drift (None when nothing was
    forgotten).
    """
    rows = 1 + max((k for k, _ in cells), default=-1)
    mats: dict[str, Matrix] = {}
    for key in ("reference", "strict", "knowledge"):
        mats[key] = [[None if cells.get((k, i)) is None else round(cells[(k, i)][key], 4) for i in range(k + 1)]
                     for k in range(rows)]
    drift = drift_matrices(mats["reference"], mats["knowledge"])
    last_f = [v for v in (drift["forgetting"][-1] if rows else []) if v is not None]
    last_g = [v for v in (drift["knowledge_forgetting"][-1] if rows else []) if v is not None]
    total_f = sum(last_f)
    summary = {
        "forgetting": sum(last_f) / len(last_f) if last_f else None,
        "knowledge_forgetting": sum(last_g) / len(last_g) if last_g else None,
        "drift_share": round((total_f - sum(last_g)) / total_f, 4) if last_f and total_f > 0 else None,
    }
    return {"tasks": list(tasks[:rows]), **mats, **drift, "summary": summary}


def render(data: dict[str, Any]) -> list[str]:
    """Markdown lines for ``report.md``: the reference and strict matrices and the drift share per cell."""
    tasks = data["tasks"]
    if not tasks:
        return []

    def table(m: Matrix, fmt: Callable[[float], str]) -> list[str]:
        lines = ["| after \\ on | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
        for k, row in enumerate(m):
            cells = ["n/a" if v is None else fmt(v) for v in row] + [""] * (len(tasks) - len(row))
            lines.append(f"| {tasks[k]} | " + " | ".join(cells) + " |")
        return lines

    s = data["summary"]
    def pct(v):
        return ("n/a" if v is None else f"{v:.2f}")
    share = "n/a" if s["drift_share"] is None else f"{s['drift_share']:.0%}"
    lines = ["## Format vs knowledge forgetting", "",
             "Every cell scored with the reference scorer, its `-strict` variant, and *knowledge* (a question counts "
             "when some surface form of the answer is right: case, punctuation, \"The answer is X\"); see "
             "[format_forgetting.json](format_forgetting.json).", "",
             f"Final row: measured forgetting {pct(s['forgetting'])}, knowledge forgetting "
             f"{pct(s['knowledge_forgetting'])}, share that is format drift "
             f"{share}.", "",
             "### Reference scorers (%)", "", *table(data["reference"], lambda v: f"{v:.2f}"), "",
             "### Strict scorers (%)", "", *table(data["strict"], lambda v: f"{v:.2f}"), "",
             "### Knowledge (any form, %)", "", *table(data["knowledge"], lambda v: f"{v:.2f}"), "",
             "### Share of the measured forgetting that is format drift", "",
             *table(data["drift_share"], lambda v: f"{v:.0%}"), ""]
    return lines

"""Continual-learning metrics over the accuracy matrix, and the registry of the papers' metric definitions.

Index convention (0-based in code, as in Avalanche's ``evaluation/functional.py``): ``matrix[j][i]`` is the accuracy
(percent) on task ``i`` after training task ``j``, defined for ``i <= j``; row ``j`` has ``j + 1`` cells. ``T`` is
the number of rows (tasks trained so far). With 1-based ``a_{j,i}`` as in coin-protocol.md §5:

* MFT = (1/T) Σ_i a_{i,i}                         (mean fine-tune accuracy: each task right after learning it)
* MFN = (1/T) Σ_i a_{T,i}                         (mean final accuracy)
* MAA = (1/T) Σ_j (1/j) Σ_{i≤j} a_{j,i}           (mean over steps of the average accuracy on seen tasks)
* BWT = (1/(T−1)) Σ_{i<T} (a_{T,i} − a_{i,i})     (GEM backward transfer; negative = forgetting)
* forgetting = (1/(T−1)) Σ_{i<T} (max_j a_{j,i} − a_{T,i})  (mammoth ``utils/metrics.py``: the max runs over
  every row that holds task i, the last included, so each term is ≥ 0)

BWT and forgetting need T ≥ 2 and are ``None`` for T = 1.

The peers define their own aggregates (:data:`METRICS` lists every definition, ``dymoe metrics --definition``):

* ``cmoe`` (LLaVA-CMoE, cmoe.md §7): Immediate_i = a_{i,i}, Last_i = a_{N,i}, Mean = their means over the N tasks,
  BWT = (1/N) Σ_{i=1..N} (Last_i − Immediate_i) — averaged over all N tasks, the last one (whose term is 0 unless
  Immediate comes from another evaluation variant, e.g. the oracle router) included.
* ``dmole`` (D-MoLE Eqs. 16–18, dmole.md §9) over the *full* N × N matrix ``A[t][i]`` (every task evaluated after
  every stage, unseen ones included; cells may exceed 100, e.g. CIDEr): AVG_i = (1/N) Σ_t A[t][i],
  Last_i = A[N][i], BWT_i = (1/(N−i)) Σ_{t>i} (A[t][i] − A[i][i]) for i < N; the "Average" columns are the means
  over the N tasks (AVG, Last) and over the N − 1 tasks that have a BWT.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dymoe.errors import DataError
from dymoe.io import atomic_write_json, read_json
from dymoe.registry import Registry

Matrix = list[list[float]]


def mft(matrix: Matrix) -> float:
    """Mean fine-tune accuracy: mean of the diagonal ``matrix[i][i]``."""
    return sum(matrix[i][i] for i in range(len(matrix))) / len(matrix)


def mfn(matrix: Matrix) -> float:
    """Mean final accuracy: mean of the last row ``matrix[T-1]``."""
    return sum(matrix[-1]) / len(matrix[-1])


def maa(matrix: Matrix) -> float:
    """Mean average accuracy: mean over rows ``j`` of the mean of ``matrix[j][0..j]``."""
    return sum(sum(row) / len(row) for row in matrix) / len(matrix)


def bwt(matrix: Matrix) -> float | None:
    """Backward transfer: mean over ``i < T-1`` of ``matrix[T-1][i] - matrix[i][i]``; ``None`` if T < 2."""
    t = len(matrix)
    if t < 2:
        return None
    return sum(matrix[-1][i] - matrix[i][i] for i in range(t - 1)) / (t - 1)


def forgetting(matrix: Matrix) -> float | None:
    """mammoth forgetting: mean over ``i < T-1`` of ``max_{j≥i} matrix[j][i] - matrix[T-1][i]``; ``None`` if T < 2."""
    t = len(matrix)
    if t < 2:
        return None
    return sum(max(matrix[j][i] for j in range(i, t)) - matrix[-1][i] for i in range(t - 1)) / (t - 1)


def summarize(matrix: Matrix) -> dict[str, float | None]:
    """``{"MFT", "MFN", "MAA", "BWT", "forgetting", "T"}`` of a validated lower-triangular matrix (cells >= 0; no
    upper bound, so CIDEr-like scores above 100 are accepted)."""
    validate_matrix(matrix, max_cell=None)
    return {
        "MFT": mft(matrix),
        "MFN": mfn(matrix),
        "MAA": maa(matrix),
        "BWT": bwt(matrix),
        "forgetting": forgetting(matrix),
        "T": len(matrix),
    }


def validate_matrix(
    matrix: Any,
    tasks: list[str] | None = None,
    where: str = "accuracy matrix",
    *,
    full: bool = False,
    max_cell: float | None = 100.0,
) -> Matrix:
    """Check the shape and cells of a matrix; returns it as floats or raises :class:`DataError` saying where.

    Row ``j`` must have exactly ``j + 1`` numeric cells (``full``: every row has one cell per task, i.e. ``len(tasks)``
    or, without ``tasks``, as many as the matrix has rows), each in [0, ``max_cell``] (``None``: no upper bound,
    for CIDEr-like scores); with ``tasks`` there may not be more rows than tasks (fewer rows = a run in progress).
    """
    if not isinstance(matrix, list) or not matrix:
        raise DataError(f"{where}: expected a non-empty list of rows")
    if tasks is not None and len(matrix) > len(tasks):
        raise DataError(f"{where}: {len(matrix)} rows but only {len(tasks)} task names")
    out: Matrix = []
    for j, row in enumerate(matrix):
        if not isinstance(row, list):
            raise DataError(f"{where}: row {j} is not a list")
        width = (len(tasks) if tasks is not None else len(matrix)) if full else j + 1
        if len(row) != width:
            shape = "full: every row holds every task" if full else "lower-triangular: row j holds tasks 1..j"
            raise DataError(f"{where}: row {j} has {len(row)} cells, expected {width} ({shape})")
        for i, cell in enumerate(row):
            if isinstance(cell, bool) or not isinstance(cell, (int, float)) or not math.isfinite(cell):
                raise DataError(f"{where}: row {j} column {i} is {cell!r}, expected a number")
            if cell < 0.0 or (max_cell is not None and cell > max_cell):
                bound = f"[0, {max_cell:g}]" if max_cell is not None else ">= 0"
                what = "a percentage in [0, 100]" if max_cell == 100.0 else f"a score {bound}"
                raise DataError(f"{where}: row {j} column {i} is {cell}, expected {what}")
        out.append([float(c) for c in row])
    return out


def load_matrix(path: str | Path) -> tuple[list[str], Matrix]:
    """Read ``{"tasks": [...], "accuracy": [[a11], [a21, a22], ...]}``; returns ``(tasks, matrix)``.

    Optional keys: ``"full": true`` (every row holds every task, D-MoLE's protocol) and ``"max_cell": null``
    (cells above 100 allowed, e.g. CIDEr); :func:`save_matrix` writes them only when they differ from the defaults.

    Raises :class:`DataError` naming the file and the row/column for malformed JSON, missing keys, task names that
    are not unique strings, more rows than tasks, a row of the wrong length or a non-numeric cell.
    """
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or "tasks" not in data or "accuracy" not in data:
        raise DataError(f"{path}: expected an object with keys 'tasks' and 'accuracy'")
    tasks = data["tasks"]
    if not isinstance(tasks, list) or not all(isinstance(t, str) and t for t in tasks):
        raise DataError(f"{path}: 'tasks' must be a list of non-empty task names")
    if len(set(tasks)) != len(tasks):
        raise DataError(f"{path}: 'tasks' has repeated names: {tasks}")
    full, max_cell = bool(data.get("full", False)), data.get("max_cell", 100.0)
    if max_cell is not None and (isinstance(max_cell, bool) or not isinstance(max_cell, (int, float))):
        raise DataError(f"{path}: 'max_cell' must be a number or null, got {max_cell!r}")
    return tasks, validate_matrix(data["accuracy"], tasks, where=str(path), full=full, max_cell=max_cell)


def save_matrix(
    path: str | Path, tasks: list[str], matrix: Matrix, *, full: bool = False, max_cell: float | None = 100.0
) -> None:
    """Write the matrix JSON atomically (temp file in the same directory, then ``os.replace``); ``full`` and
    ``max_cell`` as in :func:`validate_matrix` (stored in the file when not the defaults)."""
    path = Path(path)
    matrix = validate_matrix(matrix, tasks, where=str(path), full=full, max_cell=max_cell)
    extra: dict[str, Any] = {}
    if full:
        extra["full"] = True
    if max_cell != 100.0:
        extra["max_cell"] = max_cell
    atomic_write_json(path, {"tasks": list(tasks), "accuracy": matrix, **extra}, indent=2)


# ------------------------------------------------------------------------------------------ the peers' definitions
def cmoe_bwt(immediate: list[float], last: list[float]) -> float:
    """LLaVA-CMoE's BWT: ``(1/N) Σ_i (last[i] − immediate[i])`` over all N tasks (0-based lists of equal length)."""
    if len(immediate) != len(last) or not last:
        raise DataError(f"cmoe_bwt: {len(immediate)} Immediate and {len(last)} Last values; expected N >= 1 of each")
    return sum(b - a for a, b in zip(immediate, last)) / len(last)


def cmoe_summary(matrix: Matrix, immediate: list[float] | None = None) -> dict[str, Any]:
    """LLaVA-CMoE's Immediate / Last / Mean / BWT of a lower-triangular matrix (``matrix[j][i]``, 0-based).

    ``immediate`` replaces the diagonal (e.g. the oracle-router evaluation variant the paper reports as
    "Immediate"); Last is the final row ``matrix[N-1]``.
    """
    validate_matrix(matrix, max_cell=None)
    n = len(matrix)
    imm = list(immediate) if immediate is not None else [matrix[i][i] for i in range(n)]
    last = list(matrix[-1])
    return {
        "immediate": imm,
        "last": last,
        "mean_immediate": sum(imm) / len(imm),
        "mean_last": sum(last) / len(last),
        "BWT": cmoe_bwt(imm, last),
        "T": n,
    }


def dmole_per_task(matrix: Matrix) -> dict[str, list[float | None]]:
    """D-MoLE's Eqs. 16–18 per task from the full N × N matrix ``A[t][i]`` (0-based ``matrix[t][i]``).

    Returns ``{"AVG": [...], "Last": [...], "BWT": [...]}`` with one value per task ``i``; ``BWT[N-1]`` is ``None``
    (undefined for the last task, printed "-" in the paper).
    """
    n = len(matrix)
    avg = [sum(matrix[t][i] for t in range(n)) / n for i in range(n)]
    last = [matrix[n - 1][i] for i in range(n)]
    bwt: list[float | None] = [
        sum(matrix[t][i] - matrix[i][i] for t in range(i + 1, n)) / (n - 1 - i) for i in range(n - 1)
    ]
    return {"AVG": avg, "Last": last, "BWT": bwt + [None]}


def dmole_average(per_task: dict[str, list[float | None]]) -> dict[str, float | None]:
    """The "Average" column of D-MoLE's Table 2: mean of AVG_i and Last_i over N tasks, of BWT_i over N − 1."""
    out: dict[str, float | None] = {}
    for key, values in per_task.items():
        defined = [v for v in values if v is not None]
        out[key] = sum(defined) / len(defined) if defined else None
    return out


def dmole_summary(matrix: Matrix) -> dict[str, Any]:
    """D-MoLE's per-task AVG/Last/BWT and their averages (``AVG``, ``Last``, ``BWT``) of a full N × N matrix."""
    validate_matrix(matrix, full=True, max_cell=None)
    per_task = dmole_per_task(matrix)
    return {**dmole_average(per_task), "per_task": per_task, "T": len(matrix)}


# name → pure function of the matrix; the default ("coin") is what metrics.json holds today
METRICS: Registry = Registry("metric definition")
METRICS.add("coin", summarize)
METRICS.add("cmoe", cmoe_summary)
METRICS.add("dmole", dmole_summary)

"""Continual-learning metrics over the lower-triangular accuracy matrix.

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
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from dymoe.errors import DataError

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
    """``{"MFT", "MFN", "MAA", "BWT", "forgetting", "T"}`` of a validated lower-triangular matrix."""
    validate_matrix(matrix)
    return {
        "MFT": mft(matrix),
        "MFN": mfn(matrix),
        "MAA": maa(matrix),
        "BWT": bwt(matrix),
        "forgetting": forgetting(matrix),
        "T": len(matrix),
    }


def validate_matrix(matrix: Any, tasks: list[str] | None = None, where: str = "accuracy matrix") -> Matrix:
    """Check the shape and cells of a matrix; returns it as floats or raises :class:`DataError` saying where.

    Row ``j`` must have exactly ``j + 1`` numeric cells in [0, 100]; with ``tasks`` there may not be more rows
    than tasks (fewer rows = a run in progress).
    """
    if not isinstance(matrix, list) or not matrix:
        raise DataError(f"{where}: expected a non-empty list of rows")
    if tasks is not None and len(matrix) > len(tasks):
        raise DataError(f"{where}: {len(matrix)} rows but only {len(tasks)} task names")
    out: Matrix = []
    for j, row in enumerate(matrix):
        if not isinstance(row, list):
            raise DataError(f"{where}: row {j} is not a list")
        if len(row) != j + 1:
            raise DataError(
                f"{where}: row {j} has {len(row)} cells, expected {j + 1} (lower-triangular: row j holds tasks 1..j)"
            )
        for i, cell in enumerate(row):
            if isinstance(cell, bool) or not isinstance(cell, (int, float)) or not math.isfinite(cell):
                raise DataError(f"{where}: row {j} column {i} is {cell!r}, expected a number")
            if not 0.0 <= cell <= 100.0:
                raise DataError(f"{where}: row {j} column {i} is {cell}, expected a percentage in [0, 100]")
        out.append([float(c) for c in row])
    return out


def load_matrix(path: str | Path) -> tuple[list[str], Matrix]:
    """Read ``{"tasks": [...], "accuracy": [[a11], [a21, a22], ...]}``; returns ``(tasks, matrix)``.

    Raises :class:`DataError` naming the file and the row/column for malformed JSON, missing keys, task names that
    are not unique strings, more rows than tasks, a row of the wrong length or a non-numeric cell.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    if not isinstance(data, dict) or "tasks" not in data or "accuracy" not in data:
        raise DataError(f"{path}: expected an object with keys 'tasks' and 'accuracy'")
    tasks = data["tasks"]
    if not isinstance(tasks, list) or not all(isinstance(t, str) and t for t in tasks):
        raise DataError(f"{path}: 'tasks' must be a list of non-empty task names")
    if len(set(tasks)) != len(tasks):
        raise DataError(f"{path}: 'tasks' has repeated names: {tasks}")
    return tasks, validate_matrix(data["accuracy"], tasks, where=str(path))


def save_matrix(path: str | Path, tasks: list[str], matrix: Matrix) -> None:
    """Write the matrix JSON atomically (temp file in the same directory, then ``os.replace``)."""
    path = Path(path)
    matrix = validate_matrix(matrix, tasks, where=str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"tasks": list(tasks), "accuracy": matrix}, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise

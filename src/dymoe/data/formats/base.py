"""The evaluation-set format protocol: rows in, :class:`TestSample` out, every problem listed for verify-data."""

from __future__ import annotations

from typing import Any

from dymoe.errors import DataError


class EvalFormat:
    """A format reads ``eval_set.path`` into raw rows (:meth:`rows`) and makes one test sample per row
    (:meth:`sample`); :meth:`load` stops at the first bad row, :meth:`check` lists them all."""

    def rows(self, task, eval_set) -> list[dict]:
        """The raw rows of the file, side-file data merged in (raises DataError for a bad file)."""
        raise NotImplementedError

    def sample(self, row: dict, index: int, task, eval_set, ctx: dict[str, Any]):
        """The TestSample of one row (raises DataError naming the file and row)."""
        raise NotImplementedError

    def context(self, task, eval_set, *, instruction_type: str, seed: int) -> dict[str, Any]:
        """Per-load state shared by the rows (e.g. an RNG for instruction rewriting)."""
        return {}

    def load(self, task, eval_set, *, instruction_type: str = "origin", seed: int = 0) -> list:
        ctx = self.context(task, eval_set, instruction_type=instruction_type, seed=seed)
        return [self.sample(row, i, task, eval_set, ctx) for i, row in enumerate(self.rows(task, eval_set))]

    def check(self, task, eval_set) -> list[tuple[int | None, str]]:
        """Every problem as ``(row index or None for the file, reason)``; images are checked for existence."""
        try:
            rows = self.rows(task, eval_set)
        except DataError as err:
            return [(None, str(err))]
        ctx = self.context(task, eval_set, instruction_type="origin", seed=0)
        out: list[tuple[int | None, str]] = []
        for i, row in enumerate(rows):
            try:
                self.sample(row, i, task, eval_set, ctx)
            except DataError as err:
                out.append((i, str(err)))
        return out

"""Evaluation-set formats: how a test file is read into :class:`~dymoe.data.coin.TestSample` rows.

A format turns the rows of an :class:`~dymoe.data.tasks.EvalSet` file (plus its side files) into prompts and the
reference rows its scorer reads. One line per format; each lives in its own module:

* ``coin``: CoIN's test rows (``question_id``, ``image``, ``text``, inline answers or scorer side files).
* ``dmole-vqa``, ``dmole-choice``, ``dmole-grounding``, ``coco-caption``: the files of D-MoLE's official data
  layout, with the prompts its evaluation scripts build (``dymoe.data.formats.dmole``).

A format object has ``load(task, eval_set, *, instruction_type, seed) -> list[TestSample]`` (raising
:class:`~dymoe.errors.DataError` naming the file and row) and ``check(task, eval_set) -> list[(row, reason)]``
(every row problem, for ``verify-data``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dymoe.data.formats.base import EvalFormat
from dymoe.data.formats.coin import CoinFormat
from dymoe.data.formats.dmole import (
    CocoCaptionFormat,
    DmoleChoiceFormat,
    DmoleGroundingFormat,
    DmoleVqaFormat,
)
from dymoe.data.tasks import EVAL_FORMATS
from dymoe.registry import Registry

if TYPE_CHECKING:
    from dymoe.data.coin import TestSample
    from dymoe.data.tasks import EvalSet, TaskSpec

FORMATS: Registry[EvalFormat] = Registry("eval-set format")
FORMATS.add("coin", CoinFormat())
FORMATS.add("dmole-vqa", DmoleVqaFormat())
FORMATS.add("dmole-choice", DmoleChoiceFormat())
FORMATS.add("dmole-grounding", DmoleGroundingFormat())
FORMATS.add("coco-caption", CocoCaptionFormat())
if sorted(FORMATS.names()) != sorted(EVAL_FORMATS):  # the names the task model validates against
    raise RuntimeError(f"dymoe.data.tasks.EVAL_FORMATS {sorted(EVAL_FORMATS)} != registered {FORMATS.names()}")


def load_eval_set(
    task: TaskSpec, eval_set: EvalSet, *, instruction_type: str = "origin", seed: int = 0
) -> list[TestSample]:
    """Load one evaluation set of ``task`` through its format."""
    return FORMATS.get(eval_set.format).load(task, eval_set, instruction_type=instruction_type, seed=seed)


def load_test(task: TaskSpec, *, instruction_type: str = "origin", seed: int = 0) -> list[TestSample]:
    """Load a task's test questions with their references: its *first* evaluation set (the only one of a CoIN
    task; :func:`load_eval_set` reads any of them). See :mod:`dymoe.data.coin` for side files."""
    return load_eval_set(task, task.eval_sets[0], instruction_type=instruction_type, seed=seed)

__all__ = ["FORMATS", "EvalFormat", "load_eval_set", "load_test"]

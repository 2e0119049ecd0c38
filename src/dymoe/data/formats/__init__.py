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

from dymoe.data.formats.base import EvalFormat
from dymoe.data.formats.coin import CoinFormat
from dymoe.data.formats.dmole import (
    CocoCaptionFormat,
    DmoleChoiceFormat,
    DmoleGroundingFormat,
    DmoleVqaFormat,
)
from dymoe.registry import Registry

FORMATS: Registry[EvalFormat] = Registry("eval-set format")
FORMATS.add("coin", CoinFormat())
FORMATS.add("dmole-vqa", DmoleVqaFormat())
FORMATS.add("dmole-choice", DmoleChoiceFormat())
FORMATS.add("dmole-grounding", DmoleGroundingFormat())
FORMATS.add("coco-caption", CocoCaptionFormat())

__all__ = ["FORMATS", "EvalFormat"]

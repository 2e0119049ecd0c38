"""The scorer registry: the eight CoIN scorers (reference behaviour, quirks included) with their ``-strict``
variants, and the peers' scorers (D-MoLE's nine tasks, SMoE's Medicine / Chart / Math domains).

Every scorer is a pure function ``score(predictions, references, annotations=None) -> ScoreResult``; see
:mod:`dymoe.eval.scorers.base` for the argument conventions. Side-file names per scorer are in
:data:`ANNOTATION_KEYS`; :func:`load_annotations` reads them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from dymoe import io
from dymoe.errors import DataError
from dymoe.eval.scorers.base import ScoreResult
from dymoe.eval.scorers.caption import score_cider
from dymoe.eval.scorers.chart import score_bleu4, score_chart_table_rms, score_chartqa_relaxed
from dymoe.eval.scorers.dmole import score_choice_letter, score_exact_match, score_grounding_1000
from dymoe.eval.scorers.gqa import score_gqa, score_gqa_strict
from dymoe.eval.scorers.grounding import score_grounding, score_grounding_strict
from dymoe.eval.scorers.imagenet import score_imagenet, score_imagenet_strict
from dymoe.eval.scorers.mathqa import score_math
from dymoe.eval.scorers.medvqa import score_medvqa, score_medvqa_llavamed
from dymoe.eval.scorers.ocrvqa import score_ocrvqa, score_ocrvqa_strict
from dymoe.eval.scorers.sqa import score_sqa, score_sqa_strict
from dymoe.eval.scorers.textvqa import score_textvqa, score_textvqa_strict
from dymoe.eval.scorers.vqa import score_exact_upper, score_vqa_strict
from dymoe.registry import Registry


class Scorer(Protocol):
    """``score(predictions, references, annotations=None) -> ScoreResult``."""

    def __call__(
        self, predictions: list[dict], references: list[dict], annotations: dict | None = None
    ) -> ScoreResult: ...


SCORERS: Registry[Scorer] = Registry("scorer")
SCORERS.add("sqa", score_sqa)
SCORERS.add("sqa-strict", score_sqa_strict)
SCORERS.add("textvqa", score_textvqa)
SCORERS.add("textvqa-strict", score_textvqa_strict)
SCORERS.add("imagenet", score_imagenet)
SCORERS.add("imagenet-strict", score_imagenet_strict)
SCORERS.add("gqa", score_gqa)
SCORERS.add("gqa-strict", score_gqa_strict)
SCORERS.add("vizwiz", score_exact_upper)
SCORERS.add("vizwiz-strict", score_vqa_strict)
SCORERS.add("grounding", score_grounding)
SCORERS.add("grounding-strict", score_grounding_strict)
SCORERS.add("vqav2", score_exact_upper)
SCORERS.add("vqav2-strict", score_vqa_strict)
SCORERS.add("ocrvqa", score_ocrvqa)
SCORERS.add("ocrvqa-strict", score_ocrvqa_strict)
# D-MoLE's benchmark (gcd19/D-MoLE eval/, see dymoe.eval.scorers.dmole and .caption)
SCORERS.add("cider", score_cider)
SCORERS.add("grounding-1000", score_grounding_1000)
SCORERS.add("choice-letter", score_choice_letter)
SCORERS.add("exact-match", score_exact_match)
SCORERS.add("vqa-soft", score_textvqa)  # VQA soft accuracy over 10 inline answers (m4c evaluator; VizWiz-VQA)
# SMoE's domains (see dymoe.eval.scorers.medvqa, .chart, .mathqa)
SCORERS.add("medvqa", score_medvqa)
SCORERS.add("medvqa-llavamed", score_medvqa_llavamed)
SCORERS.add("chartqa-relaxed", score_chartqa_relaxed)
SCORERS.add("chart-table-rms", score_chart_table_rms)
SCORERS.add("bleu4", score_bleu4)
SCORERS.add("math", score_math)

# side files each scorer family reads (``annotations:`` keys in a benchmark YAML); the first is the default
# key of a bare ``--annotations FILE``
ANNOTATION_KEYS: dict[str, tuple[str, ...]] = {
    "sqa": ("problems", "pid_splits"),
    "textvqa": ("annotations",),
    "gqa": ("questions",),
}


def base_name(scorer: str) -> str:
    """``"sqa-strict"`` → ``"sqa"``."""
    return scorer.removesuffix("-strict")


def read_json(path: Path) -> Any:
    """Parse a JSON file; a missing, unreadable, non-UTF-8 or malformed file (or a directory) raises
    :class:`DataError` naming it."""
    return io.read_json(path)


def load_annotations(scorer: str, files: dict[str, Path]) -> dict[str, Any]:
    """Load the side files of ``scorer`` (keys as in :data:`ANNOTATION_KEYS`); unknown keys are an error."""
    allowed = ANNOTATION_KEYS.get(base_name(scorer), ())
    out = {}
    for key, path in files.items():
        if key not in allowed:
            raise DataError(
                f"annotation {key!r} is not read by scorer {scorer!r}; expected one of {list(allowed) or 'none'}"
            )
        out[key] = read_json(Path(path))
    return out


__all__ = ["ANNOTATION_KEYS", "SCORERS", "ScoreResult", "Scorer", "base_name", "load_annotations", "read_json"]

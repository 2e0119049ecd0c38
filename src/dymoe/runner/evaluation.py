"""The evaluation after each task: every evaluation set of the evaluated tasks, per evaluation variant.

Row ``k`` of a run (after training task ``k``, 1-based) is evaluated by :func:`evaluate_row`:

* **which tasks**: ``evaluation.tasks: seen`` (the default, CoIN's protocol) evaluates tasks ``1..k``, so the matrix
  is lower-triangular; ``all`` evaluates every task of the sequence after every stage, the unseen ones included
  (D-MoLE's protocol), so each row has ``N`` cells (``matrix.json`` says ``"full": true``);
* **every evaluation set** of a task is generated (with the set's own ``max_new_tokens`` / ``min_new_tokens``, else
  ``evaluation.max_new_tokens``) and scored by its own scorer; the task's **matrix cell is the mean of its sets'
  headline numbers** (:data:`COMBINE_RULE`; a task with one set keeps that set's number exactly). Every set's
  headline and further numbers (``ScoreResult.metrics``) are kept per row;
* **variants**: the main evaluation (variant ``""``, the method's evaluation routing) writes ``matrix.json``;
  each variant a method declares (:attr:`~dymoe.methods.base.Method.evaluation_variants`, e.g. CMoE's oracle
  router) is evaluated the same way into ``variants/<name>/matrix.json``; ``evaluation.variants`` narrows them;
* **task locators**: a method whose :meth:`~dymoe.methods.base.Method.batch_routing` returns ``predicted_task``
  gets it written beside each prediction (``routed_task``) and scored against the true task per variant: accuracy
  per task and the confusion matrix (:func:`dymoe.runner.routing.locator_report`).

Predictions: ``predictions/<task>/after_<k>.jsonl`` for a task with one set (as before), ``predictions/<task>/<set>/
after_<k>.jsonl`` for each set of a task with several; a variant's under ``variants/<name>/``. Each row's scores
are written to ``scores/after_<k>.json`` (atomically, before the matrix row), which ``metrics.json`` and the report
are assembled from; like the predictions they are read back on resume instead of recomputed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dymoe.errors import ConfigError, DataError, DymoeError
from dymoe.eval.generate import generate_predictions
from dymoe.eval.scorers import SCORERS
from dymoe.io import atomic_write_json, atomic_write_jsonl, read_jsonl
from dymoe.runner.routing import EvalRouting, locator_report
from dymoe.runner.rundir import RunDir, _safe

#: how a task's matrix cell combines its evaluation sets' headline numbers
COMBINE_RULE = "mean of the evaluation sets' headline numbers"


@dataclass
class VariantRow:
    """One variant's row: ``cells`` (one per evaluated task), ``sets`` ``{task: {set: scores}}``, ``locator``."""

    cells: list[float]
    sets: dict[str, dict[str, dict]] = field(default_factory=dict)
    locator: dict | None = None
    method_eval: dict | None = None

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"cells": self.cells, "sets": self.sets}
        if self.locator is not None:
            out["locator"] = self.locator
        if self.method_eval:
            out["method_eval"] = self.method_eval
        return out


def variants_of(method: Any, wanted: list[str] | None) -> list[str]:
    """The variants a run evaluates: ``""`` (main) then the method's declared ones (``wanted`` narrows them).

    Raises:
        ConfigError: ``wanted`` names a variant the method does not declare.
    """
    declared = list(getattr(method, "evaluation_variants", ()) or ())
    if wanted is None:
        return ["", *declared]
    unknown = sorted(set(wanted) - set(declared))
    if unknown:
        raise ConfigError(f"evaluation.variants: {unknown} are not variants of method {method.name!r} "
                          f"(it declares {declared or 'none'})")
    return ["", *[v for v in declared if v in wanted]]


def variant_dir(out: RunDir, variant: str) -> RunDir:
    """Where a variant's matrix and predictions live (the run directory itself for the main evaluation)."""
    return out if not variant else RunDir(out.root / "variants" / _safe(variant))


def prediction_path(out: RunDir, task: Any, eval_set: Any, after: int, variant: str = "") -> Path:
    """``predictions/<task>/after_<k>.jsonl`` (one set) or ``predictions/<task>/<set>/after_<k>.jsonl``."""
    base = variant_dir(out, variant)
    if len(task.eval_sets) == 1:
        return base.predictions(task.name, after)
    return base.root / "predictions" / _safe(task.name) / _safe(eval_set.name) / f"after_{after}.jsonl"


def scores_path(out: RunDir, after: int) -> Path:
    return out.root / "scores" / f"after_{after}.json"


def evaluated_tasks(run: Any, k: int) -> list[int]:
    """Indices of the tasks evaluated in row ``k`` (0-based stage): seen ones, or all with ``evaluation.tasks``."""
    return list(range(len(run.tasks))) if run.cfg.evaluation.tasks == "all" else list(range(k + 1))


def combine(scores: list[float]) -> float:
    """A task's matrix cell from its sets' headline numbers (:data:`COMBINE_RULE`), rounded to 4 decimals."""
    return round(float(sum(scores) / len(scores)) if len(scores) > 1 else float(scores[0]), 4)


def evaluate_row(run: Any, k: int, *, regenerate: bool = False) -> dict[str, VariantRow]:
    """Row ``k`` (0-based: after training task ``k + 1``) of every variant; see the module docstring.

    ``run`` is the :class:`~dymoe.runner.continual.ContinualRun` (its model, method, adapter, accelerator, test
    sets, scorers and output directory). Predictions on disk are read back (``regenerate``: deleted first).
    """
    ev, acc = run.cfg.evaluation, run.acc
    names = run.names
    result: dict[str, VariantRow] = {}
    variants = variants_of(run.method, ev.variants)
    if regenerate:
        if run.main:
            for variant in variants:
                for j in evaluated_tasks(run, k):
                    for es in run.tasks[j].eval_sets:
                        prediction_path(run.out, run.tasks[j], es, k + 1, variant).unlink(missing_ok=True)
        acc.wait_for_everyone()
    for variant in variants:
        row = VariantRow(cells=[])
        true_tasks: list[int] = []
        routed: list[int] = []
        with EvalRouting(run.method, run.adapter.context) as hook:
            for j in evaluated_tasks(run, k):
                task = run.tasks[j]
                if not variant and hasattr(run.method, "begin_evaluation"):
                    # a method's own evaluation measurements (DyMoE's task router, issue 14): main variant only
                    run.method.begin_evaluation(j, task.name)
                headlines = []
                for es in task.eval_sets:
                    samples = run.test_set(task, es)
                    path = prediction_path(run.out, task, es, k + 1, variant)
                    if path.is_file():
                        predictions = run.stored_predictions(path, samples)
                    else:
                        hook.begin(task_index=j, task=task.name, eval_set=es.name, variant=variant, stage=k + 1)
                        label = f"{task.name}" if len(task.eval_sets) == 1 else f"{task.name}/{es.name}"
                        with torch.no_grad():
                            predictions = generate_predictions(
                                run.model, run.processor, samples, batch_size=ev.batch_size,
                                max_new_tokens=es.max_new_tokens or ev.max_new_tokens,
                                min_new_tokens=es.min_new_tokens, accelerator=acc, max_length=ev.max_length,
                                desc=f"eval {label} after {k + 1}{f' ({variant})' if variant else ''}",
                                batch_hook=hook,
                            )
                        if run.main:
                            atomic_write_jsonl(path, predictions)
                    scorer = run.scorer_name(task, es)
                    res = SCORERS.get(scorer)(predictions, [s.reference for s in samples],
                                              run.annotations(task, scorer, es))
                    headlines.append(float(res.accuracy))
                    row.sets.setdefault(task.name, {})[es.name] = {
                        "scorer": scorer, "headline": res.headline, "score": round(float(res.accuracy), 4),
                        "n": res.n, **({"metrics": res.metrics} if res.metrics else {}),
                    }
                    for p in predictions:
                        if "routed_task" in p:
                            true_tasks.append(j)
                            routed.append(int(p["routed_task"]))
                cell = combine(headlines)
                row.cells.append(cell)
                tag = f"eval/{task.name}" if not variant else f"eval_{variant}/{task.name}"
                acc.log({tag: cell}, step=k + 1)
        if routed:
            row.locator = locator_report(true_tasks, routed, names)
        if hasattr(run.method, "evaluation_metrics"):
            # every process calls it (it may all-reduce), after every variant: what a variant's passes measured
            # (SMoE-DSAL's Ours+ module counts) is that variant's, not left for the next row's main evaluation
            row.method_eval = run.method.evaluation_metrics()
        result[variant] = row
    return result


def save_scores(run: Any, k: int, rows: dict[str, VariantRow]) -> None:
    """Write row ``k``'s scores (every variant) to ``scores/after_<k+1>.json`` (main process)."""
    if run.main:
        atomic_write_json(scores_path(run.out, k + 1), {
            "after_task": k + 1, "tasks": [run.names[j] for j in evaluated_tasks(run, k)],
            "variants": {v: r.to_dict() for v, r in rows.items()},
        })


def load_scores(out: RunDir, after: int) -> dict | None:
    """``scores/after_<after>.json`` or None (a run evaluated before this file existed)."""
    path = scores_path(out, after)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: malformed JSON ({err.msg}); delete it to re-score the row from its predictions") from None


def read_predictions(path: Path, samples: list) -> list[dict]:
    """Predictions written by an earlier (killed) process, checked against the questions they answer."""
    fix = "; delete it and rerun to generate it again"
    try:
        predictions = read_jsonl(path)
    except DymoeError as err:
        raise DataError(f"{err}{fix}") from None
    got = [str(p.get("question_id")) for p in predictions]
    if got != [str(s.question_id) for s in samples] or not all(isinstance(p.get("text"), str) for p in predictions):
        raise DataError(f"{path}: holds {len(predictions)} predictions that do not answer this run's "
                        f"{len(samples)} test questions in order{fix}")
    return predictions

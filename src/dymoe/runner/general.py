"""The general-ability check after the last task (``evaluation.general``; D-MoLE's Table 3: MME, MMMU, POPE).

A continual run measures its own tasks; a paper also asks whether the model kept what the pretrained model could
do. This check evaluates extra benchmarks that are never trained on, on two models:

* ``final``: the model after the last task, with the method's evaluation routing (its task router, D-MoLE's
  autoencoders: whatever ``dymoe run`` evaluates the tasks with; the true task is unknown, ``task_index = -1``);
* ``pretrained`` (``evaluation.general.pretrained``, on by default): the untouched backbone, evaluated with every
  wrapped module computing its frozen base linear (:func:`~dymoe.runner.cost.adapter_bypassed`) **before task 1
  trains**, so that nothing a method changes in the base (a trained projector) reaches it.

Each entry of ``evaluation.general.benchmarks`` (:class:`~dymoe.config.GeneralBenchmark`) is a benchmark YAML
(evaluation sets with their scorers; ``train`` may be left out) or one test file with its scorer. A task's score is
the mean of its sets' headline numbers (as in the matrix); a benchmark's is the ``mean`` or ``sum`` of its tasks'.
Everything is checked when the run starts (before anything trains or is written): files, rows, scorers.

Files (in the run directory): predictions ``general/<model>/<benchmark>/<task>[/<set>].jsonl`` (read back on resume,
like the matrix's) and the scores ``general/<model>.json``; ``metrics.json`` gets ``general`` = ``{model: scores}``
and ``report.md`` a table (pretrained, final, difference). Unset, the runner does exactly what it did before.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dymoe.config import GeneralBenchmark
from dymoe.data.coin import check_scorable
from dymoe.data.formats import load_eval_set
from dymoe.data.tasks import EvalSet, TaskSpec, load_benchmark
from dymoe.errors import ConfigError, DataError, DymoeError
from dymoe.eval.generate import generate_predictions
from dymoe.eval.scorers import SCORERS, load_annotations
from dymoe.io import atomic_write_json, atomic_write_jsonl
from dymoe.runner.evaluation import COMBINE_RULE, combine, read_predictions
from dymoe.runner.rundir import _safe

__all__ = ["GENERAL_DIR", "MODELS", "GeneralCheck", "general_table", "read_general"]

GENERAL_DIR = "general"
#: the evaluated models, in report order
MODELS = ("pretrained", "final")


@dataclass
class _Set:
    """One evaluation set of the check: its benchmark, task, the set, its scorer and questions."""

    bench: str
    task: TaskSpec
    es: EvalSet
    scorer: str
    samples: list
    annotations: dict

    def rel(self) -> Path:
        """``<benchmark>/<task>[/<set>]`` (the predictions file's path without the model and suffix)."""
        base = Path(_safe(self.bench)) / _safe(self.task.name)
        return base / _safe(self.es.name) if len(self.task.eval_sets) > 1 else base


def _tasks_of(entry: GeneralBenchmark, where: str) -> list[TaskSpec]:
    """The tasks of one entry: a benchmark YAML's (every task, listed order) or one test file as one task."""
    path = Path(entry.file)
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            bench = load_benchmark(path, eval_only=True)
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        tasks = bench.tasks
        if entry.scorer is not None:
            for t in tasks:
                t.eval_sets = [EvalSet(**{**vars(es), "scorer": entry.scorer}) for es in t.eval_sets]
        return tasks
    name = entry.name or path.stem
    root = Path(entry.image_root) if entry.image_root else path.parent
    es = EvalSet(name, path, root, str(entry.scorer), entry.format, {}, entry.max_new_tokens)
    return [TaskSpec(name=name, train=path, test=path, image_root=root, scorer=str(entry.scorer), eval_sets=[es])]


class GeneralCheck:
    """The check of one run (``run``: the :class:`~dymoe.runner.continual.ContinualRun`); built in its setup, which
    reads and checks every set here (a bad file is a :class:`ConfigError` / :class:`DataError` naming it before
    anything trains)."""

    def __init__(self, run: Any):
        self.run = run
        self.cfg = run.cfg.evaluation.general
        self.aggregates: dict[str, str] = {}
        self.sets: list[_Set] = []
        for i, entry in enumerate(self.cfg.benchmarks):
            where = f"evaluation.general.benchmarks[{i}] ({entry.file})"
            label = entry.name or Path(entry.file).stem
            self.aggregates[label] = entry.aggregate
            for task in _tasks_of(entry, where):
                for es in task.eval_sets:
                    samples = load_eval_set(task, es, instruction_type="origin", seed=0)
                    if not samples:
                        raise DataError(f"{es.path}: no test questions ({where}); an empty set would score 0")
                    samples = run._text_only(samples, task, "test")
                    if entry.max_samples is not None and entry.max_samples < len(samples):
                        keep = sorted(random.Random(0).sample(range(len(samples)), entry.max_samples))
                        samples = [samples[j] for j in keep]
                    ann = load_annotations(es.scorer, es.scorer_annotations)
                    check_scorable(es.path, samples, es.scorer, ann)
                    self.sets.append(_Set(label, task, es, es.scorer, samples, ann))
        seen: dict[str, str] = {}
        for s in self.sets:
            key = str(s.rel()).lower()
            if seen.setdefault(key, s.es.path.as_posix()) != s.es.path.as_posix():
                raise ConfigError(f"evaluation.general: two sets map to one folder {s.rel()} ({seen[key]} and "
                                  f"{s.es.path}); give the entries distinct names")

    # ------------------------------------------------------------------ files
    def scores_file(self, model: str) -> Path:
        return self.run.out.root / GENERAL_DIR / f"{model}.json"

    def predictions_file(self, model: str, s: _Set) -> Path:
        return self.run.out.root / GENERAL_DIR / model / s.rel().with_suffix(".jsonl")

    def done(self, model: str) -> bool:
        return self.scores_file(model).is_file()

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model: str, *, when: str) -> dict:
        """Evaluate every set on ``model`` (``final``: the run's model with the method's evaluation routing;
        ``pretrained``: every wrapped module bypassed), write ``general/<model>.json`` and return it. ``when`` is
        recorded (e.g. ``"before task 1"``). Stored predictions are read back, not regenerated."""
        from dymoe.runner.cost import adapter_bypassed
        from dymoe.runner.routing import EvalRouting

        run, ev, acc = self.run, self.run.cfg.evaluation, self.run.acc
        sets_out: dict[str, dict[str, dict]] = {}
        for s in self.sets:
            path = self.predictions_file(model, s)
            if path.is_file():
                predictions = read_predictions(path, s.samples)
            else:
                label = f"{s.bench}/{s.task.name}" + (f"/{s.es.name}" if len(s.task.eval_sets) > 1 else "")
                with torch.no_grad(), EvalRouting(run.method, run.adapter.context) as hook:
                    hook.begin(task_index=-1, task=s.task.name, eval_set=None, variant="", stage=len(run.tasks))
                    kwargs = dict(batch_size=ev.batch_size, max_new_tokens=s.es.max_new_tokens or ev.max_new_tokens,
                                  min_new_tokens=s.es.min_new_tokens, accelerator=acc, max_length=ev.max_length,
                                  desc=f"general {label} ({model})")
                    if model == "pretrained":
                        with adapter_bypassed(run.adapter):
                            predictions = generate_predictions(run.model, run.processor, s.samples, **kwargs)
                    else:
                        predictions = generate_predictions(run.model, run.processor, s.samples, batch_hook=hook,
                                                           **kwargs)
                if run.main:
                    atomic_write_jsonl(path, predictions)
            res = SCORERS.get(s.scorer)(predictions, [x.reference for x in s.samples], s.annotations)
            entry = {"scorer": s.scorer, "headline": res.headline, "score": round(float(res.accuracy), 4),
                     "n": res.n, "file": str(s.es.path), **({"metrics": res.metrics} if res.metrics else {})}
            routed = [int(p["routed_task"]) for p in predictions if "routed_task" in p]
            if routed:  # a task locator's choice per question (-1: none, the pretrained model)
                names = [*run.names, "none"]
                entry["routed"] = {names[r] if 0 <= r < len(run.names) else "none": routed.count(r)
                                   for r in sorted(set(routed))}
            sets_out.setdefault(s.bench, {}).setdefault(s.task.name, {})[s.es.name] = entry
        benchmarks = {}
        for bench, tasks in sets_out.items():
            cells = {t: combine([v["score"] for v in by_set.values()]) for t, by_set in tasks.items()}
            agg = self.aggregates[bench]
            value = sum(cells.values()) if agg == "sum" else sum(cells.values()) / len(cells)
            benchmarks[bench] = {"score": round(float(value), 4), "aggregate": agg, "tasks": cells, "sets": tasks}
        result = {"model": model, "when": when, "combine": COMBINE_RULE, "benchmarks": benchmarks}
        if run.main:
            atomic_write_json(self.scores_file(model), result)
        acc.wait_for_everyone()
        return result


def read_general(root: str | Path) -> dict:
    """``{model: scores}`` of the check's score files in a run's results directory (``{}`` when it has none)."""
    out = {}
    for model in MODELS:
        path = Path(root) / GENERAL_DIR / f"{model}.json"
        if path.is_file():
            try:
                out[model] = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as err:
                raise DymoeError(f"{path}: malformed JSON ({err.msg}); delete it to re-score the general-ability "
                                 "check from its predictions") from None
    return out


def general_table(run_dirs: list[Path]) -> str:
    """Markdown for ``dymoe reproduce``: each label's general-ability scores per benchmark (pretrained, final and
    their difference; mean ± std over the label's runs), from ``metrics.json`` ``general``; empty when no run has
    the check."""
    import statistics

    per: dict[tuple[str, str], dict[str, list[float]]] = {}
    for d in run_dirs:
        m = json.loads((Path(d) / "metrics.json").read_text())
        label = m.get("label") or m.get("method")
        for model, g in (m.get("general") or {}).items():
            for bench, b in g.get("benchmarks", {}).items():
                per.setdefault((label, bench), {}).setdefault(model, []).append(float(b["score"]))
    if not per:
        return ""

    def cell(vals: list[float]) -> str:
        if not vals:
            return "n/a"
        return f"{vals[0]:.2f}" if len(vals) == 1 else f"{statistics.fmean(vals):.2f} ± {statistics.stdev(vals):.2f}"

    lines = ["General ability after the last task (evaluation.general; a benchmark's mean or sum over its tasks)", "",
             "| Method | benchmark | n | pretrained | final | final − pretrained |", "|---|---|---:|---:|---:|---:|"]
    for (label, bench), models in per.items():
        pre, fin = models.get("pretrained", []), models.get("final", [])
        diff = [f - p for f, p in zip(fin, pre)] if len(pre) == len(fin) else []
        lines.append(f"| {label} | {bench} | {len(fin)} | {cell(pre)} | {cell(fin)} | {cell(diff)} |")
    return "\n".join(lines) + "\n"

"""Human-readable outputs of run directories: one run's ``report.md`` + plots, and a side-by-side comparison.

A run directory (written by the continual runner) holds ``matrix.json`` (``{"tasks", "accuracy"}``, percent, row
``j`` = after task ``j``), ``metrics.json`` (method, label, seed, parameter counts, metrics), ``config.yaml`` (the
resolved config) and ``env.json``. Only ``matrix.json`` is required here; the metrics are always recomputed from
the matrix with :func:`dymoe.eval.metrics.summarize` (the matrix is the source of truth, and a run in progress
may have a newer matrix than its ``metrics.json``), the other files add names, settings and parameter counts.

* :func:`write_report` writes ``RUN/plots/{accuracy_matrix,task_curves,radar}.png`` and ``RUN/report.md``.
* :func:`compare_runs` renders the paper's main table (one row per method, per-task final accuracy, MFN, MAA,
  BWT) as Markdown and CSV, aggregating seeds as ``mean ± std`` (sample std, ddof = 1).
"""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dymoe.analysis.plots import plot_accuracy_matrix, plot_radar, plot_task_curves
from dymoe.errors import ConfigError, DataError, DymoeError
from dymoe.eval.metrics import load_matrix, summarize
from dymoe.io import atomic_write_text, read_yaml_mapping

__all__ = [
    "COMPARE_METRICS",
    "MixedProtocols",
    "check_protocols",
    "compare_costs",
    "RunSummary",
    "compare_runs",
    "load_run",
    "mean_final_accuracy",
    "render_report",
    "write_report",
    "write_text_atomic",
]

# metrics columns of the comparison table, after the per-task columns (the DyMoE / MCITlib main-table layout)
COMPARE_METRICS: tuple[str, ...] = ("MFN", "MAA", "BWT")
_REFERENCE_KEYS = {"MFT", "MFN", "MAA", "BWT", "forgetting"}

# config.yaml keys shown in a report (dotted; missing ones are left out); every ``method.*`` option is shown too
KEY_SETTINGS: tuple[str, ...] = (
    "backbone.path", "backbone.dtype",
    "benchmark.file", "benchmark.order", "benchmark.instruction_type",
    "benchmark.max_train_samples", "benchmark.max_eval_samples",
    "adapter.experts_per_group", "adapter.expert_rank", "adapter.alpha", "adapter.top_k", "adapter.router",
    "adapter.temperature", "adapter.targets",
    "training.epochs", "training.global_batch_size", "training.batch_size", "training.grad_accum", "training.lr",
    "training.schedule",
    "training.warmup_ratio", "training.max_length", "training.seed",
    "evaluation.scorer_variant", "evaluation.max_new_tokens", "evaluation.tasks", "evaluation.metric",
    "evaluation.variants",
    "replay.samples_per_task", "mixed_precision",
)  # fmt: skip


@dataclass
class RunSummary:
    """What a report or a comparison needs from one run directory.

    Attributes:
        tasks: the trained tasks, in training order (one per matrix row).
        planned: every task of the run's sequence (longer than ``tasks`` for a run in progress).
        matrix: the lower-triangular accuracy matrix (percent): the seen-tasks part of a full matrix.
        full_matrix: every task after every stage (``evaluation.tasks: all``), or None.
        metrics: :func:`dymoe.eval.metrics.summarize` of ``matrix``.
        info: ``metrics.json`` as written by the runner (``{}`` if absent).
        config: ``config.yaml`` as a plain mapping (``{}`` if absent).
        env: ``env.json`` (``{}`` if absent).
    """

    run_dir: Path
    tasks: list[str]
    planned: list[str]
    matrix: list[list[float]]
    metrics: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    env: dict[str, Any] = field(default_factory=dict)
    full_matrix: list[list[float]] | None = None

    @property
    def method(self) -> str:
        """``metrics.json`` method, else ``config.yaml`` ``method.name``, else ``"unknown"``."""
        method = self.info.get("method") or (self.config.get("method") or {}).get("name")
        return str(method) if method else "unknown"

    @property
    def label(self) -> str:
        """``metrics.json`` label, else ``config.yaml`` label, else the method name."""
        return str(self.info.get("label") or self.config.get("label") or self.method)

    @property
    def partial(self) -> bool:
        """True while fewer tasks are trained than the sequence has (or metrics.json says ``"complete": false``)."""
        return len(self.tasks) < len(self.planned) or self.info.get("complete") is False

    @property
    def final(self) -> dict[str, float]:
        """``{task: accuracy}`` of the last matrix row."""
        return dict(zip(self.tasks, self.matrix[-1]))


# ---------------------------------------------------------------------------------------------- loading


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: malformed JSON at line {err.lineno} column {err.colno}: {err.msg}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _read_yaml(path: Path) -> dict[str, Any]:
    """A run directory's ``config.yaml`` as a mapping; ``{}`` when there is none (errors name the file)."""
    return read_yaml_mapping(path, "run config") if path.is_file() else {}


def _sequence_from_config(config: Mapping[str, Any]) -> list[str] | None:
    """The run's full task order from its config, when it can be known without the data (else ``None``)."""
    bench = config.get("benchmark") or {}
    order = bench.get("order")
    if isinstance(order, list):
        return [str(t) for t in order]
    file = bench.get("file")
    try:
        if file == "minicoin":
            from dymoe.data.minicoin import TASK_NAMES
            from dymoe.data.tasks import default_orders

            return default_orders(list(TASK_NAMES)).get(order or "origin")
        if isinstance(file, str) and Path(file).is_file():
            from dymoe.data.tasks import load_benchmark

            # only the names are needed: any data_root will do (nothing is read from it)
            bench_obj = load_benchmark(file, data_root=bench.get("data_root") or ".", order=order)
            return [t.name for t in bench_obj.tasks]
    except DymoeError:
        return None
    return None


def load_run(run_dir: str | os.PathLike) -> RunSummary:
    """Read a run directory (``matrix.json`` required; ``metrics.json``, ``config.yaml``, ``env.json`` optional).

    Raises:
        DataError: the directory or its ``matrix.json`` is missing, or a file is malformed (naming the file).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DataError(f"run directory {run_dir} does not exist")
    all_tasks, matrix = load_matrix(run_dir / "matrix.json")
    tasks = all_tasks[: len(matrix)]
    full = None
    if matrix and len(matrix[0]) > 1:  # every task after every stage (evaluation.tasks: all): the seen part
        full, matrix = matrix, [row[: j + 1] for j, row in enumerate(matrix)]
    config = _read_yaml(run_dir / "config.yaml")
    planned = list(all_tasks)
    if len(planned) == len(tasks):
        sequence = _sequence_from_config(config)
        if sequence and len(sequence) > len(tasks) and sequence[: len(tasks)] == tasks:
            planned = sequence
    return RunSummary(
        run_dir=run_dir,
        tasks=tasks,
        planned=planned,
        matrix=matrix,
        metrics=summarize(matrix),
        info=_read_json(run_dir / "metrics.json"),
        config=config,
        env=_read_json(run_dir / "env.json"),
        full_matrix=full,
    )


# ---------------------------------------------------------------------------------------------- report.md


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _cell(value: Any) -> str:
    """A Markdown-safe table cell (``None`` is shown as YAML's ``null``)."""
    if value is None:
        return "null"
    text = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _dotted(config: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _settings_rows(config: Mapping[str, Any]) -> list[tuple[str, Any]]:
    method = dict(config.get("method") or {})
    rows = [("method.name", method.pop("name"))] if "name" in method else []
    rows += [("method." + k, v) for k, v in method.items()]
    for key in KEY_SETTINGS:
        found, value = _dotted(config, key)
        if found:
            if key == "adapter.alpha" and value is None:
                value = _tied_alpha(config.get("adapter") or {})
            rows.append((key, value))
    return rows


def _tied_alpha(adapter: Mapping[str, Any]) -> str:
    """How an unset ``adapter.alpha`` resolves: 2 × the bank rank (``injection.AdapterConfig.effective_alpha``)."""
    bank = adapter.get("bank_rank")
    if bank is None and isinstance(adapter.get("experts_per_group"), int) and isinstance(
            adapter.get("expert_rank"), int):
        bank = adapter["experts_per_group"] * adapter["expert_rank"]
    return f"2 × bank rank = {2 * bank:g}" if isinstance(bank, int | float) else "2 × bank rank"


def _matrix_table(tasks: Sequence[str], matrix: Sequence[Sequence[float]]) -> list[str]:
    lines = ["| after \\ on | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for j, row in enumerate(matrix):
        cells = [_fmt(v) for v in row] + [""] * (len(tasks) - len(row))
        lines.append(f"| {tasks[j]} | " + " | ".join(cells) + " |")
    return lines


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` atomically (:func:`dymoe.io.atomic_write_text`); creates the folder."""
    return atomic_write_text(path, text)


PLOT_FILES: dict[str, str] = {
    "accuracy matrix": "plots/accuracy_matrix.png",
    "per-task accuracy across the sequence": "plots/task_curves.png",
    "per-task final accuracy (radar)": "plots/radar.png",
}


def _summary_cells(summary: Mapping[str, Any]) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k not in ("T",)]


def _evaluation_sections(run: RunSummary) -> list[str]:
    """The sections a run has beyond CoIN's: the full matrix, the metric definition, evaluation sets, variants and
    the task locator (from ``metrics.json``; see :mod:`dymoe.runner.evaluation`)."""
    info, lines = run.info, []
    if run.full_matrix is not None:
        lines += ["", "## Every task after every stage (%)", "",
                  "Row *j*: after training task *j*; columns: every task, unseen ones included.", ""]
        lines += _matrix_table(run.planned, run.full_matrix)
    metric = info.get("metric") or {}
    if metric and metric.get("definition", "coin") != "coin":
        cells = _summary_cells(metric)
        lines += ["", f"## Metrics ({metric['definition']} definition)", ""]
        if metric.get("immediate_from"):
            lines += [f"Immediate from: {metric['immediate_from']}.", ""]
        lines += ["| " + " | ".join(k for k, _ in cells) + " |", "|" + "---:|" * len(cells),
                  "| " + " | ".join(_fmt(v) for _, v in cells) + " |"]
        if metric.get("note"):
            lines += ["", str(metric["note"])]
    sets = info.get("eval_sets") or {}
    rows = sorted((int(k.rsplit("_", 1)[1]), v) for k, v in sets.items() if k.startswith("after_task_"))
    if rows:
        after, per_task = rows[-1]
        lines += ["", f"## Evaluation sets (after task {after})", "",
                  f"A task's matrix cell is the {sets.get('combine', 'mean of its sets')}.", "",
                  "| task | set | scorer | headline | score | n | other numbers |", "|---|---|---|---|---:|---:|---|"]
        for task, by_set in per_task.items():
            for name, sc in by_set.items():
                other = ", ".join(f"{k} {_fmt(v) if isinstance(v, (int, float)) else v}"
                                  for k, v in (sc.get("metrics") or {}).items())
                lines.append(f"| {_cell(task)} | {_cell(name)} | {sc.get('scorer', '')} | {sc.get('headline', '')} "
                             f"| {_fmt(sc.get('score'))} | {sc.get('n', '')} | {_cell(other)} |")
    for variant, v in (info.get("variants") or {}).items():
        lines += ["", f"## Variant: {variant} (%)", ""]
        lines += _matrix_table(run.planned if len(v["matrix"][0]) > 1 else run.tasks, v["matrix"])
        cells = [(k, v.get(k)) for k in ("MFT", "MFN", "MAA", "BWT", "forgetting")]
        lines += ["", "| " + " | ".join(k for k, _ in cells) + " |", "|" + "---:|" * len(cells),
                  "| " + " | ".join(_fmt(x) for _, x in cells) + " |"]
    params = [(t, (info.get("train") or {}).get(t, {}).get("parameters")) for t in run.tasks]
    params = [(t, p) for t, p in params if p]
    if params:
        streams = sorted({s for _, p in params for s in p.get("by_stream", {})})
        lines += ["", "## Parameters per task", "",
                  "Adapter parameters after each task: total, added by the task, per stream, and activated per "
                  "token (nominal: each router's top-K).", "",
                  "| after task | total | added | " + " | ".join(streams) + " | activated/token |",
                  "|---|---:|---:|" + "---:|" * len(streams) + "---:|"]
        for t, p in params:
            lines.append(f"| {t} | {p.get('total', 0):,} | {p.get('added', 0):,} | "
                         + " | ".join(f"{p.get('by_stream', {}).get(s, 0):,}" for s in streams)
                         + f" | {p.get('activated_per_token', 0):,.0f} |")
    locator = info.get("locator") or {}
    for variant, by_row in locator.items():
        if variant == "name" or not isinstance(by_row, Mapping) or not by_row:
            continue
        after = max(int(k.rsplit("_", 1)[1]) for k in by_row)
        rep = by_row[f"after_task_{after}"]
        cols = rep.get("tasks", [])
        lines += ["", f"## Task locator {locator.get('name', '')} ({variant}, after task {after})", "",
                  "Share of each test set routed to its own task; confusion: rows = true task, columns = the task "
                  "the locator chose.", "",
                  "| task | samples | accuracy | " + " | ".join(cols) + " |", "|---|---:|---:|" + "---:|" * len(cols)]
        for t, row in zip(rep.get("accuracy", {}), rep.get("confusion", [])):
            lines.append(f"| {t} | {rep['samples'].get(t, '')} | {_fmt(rep['accuracy'][t])} | "
                         + " | ".join(str(c) for c in row) + " |")
        lines.append(f"| mean | | {_fmt(rep.get('mean'))} |" + " |" * len(cols))
    return lines


def _general_section(general: Mapping[str, Any]) -> list[str]:
    """The general-ability check after the last task (``metrics.json`` ``general``, :mod:`dymoe.runner.general`):
    per benchmark and task the pretrained model's score, the final model's and the difference."""
    if not general:
        return []
    models = [m for m in ("pretrained", "final") if m in general]
    lines = ["", "## General ability (benchmarks never trained on)", ""]
    lines += [f"- {m}: {general[m].get('when', '')}" for m in models]
    lines += ["", "A task's score is the mean of its sets' headline numbers; a benchmark's the mean or sum of its "
              "tasks' (its aggregate).", "",
              "| benchmark | task | " + " | ".join(models) + (" | final − pretrained |" if len(models) == 2 else " |"),
              "|---|---|" + "---:|" * (len(models) + (len(models) == 2))]
    first = general[models[0]].get("benchmarks", {})
    for bench, b in first.items():
        rows = [(task, [general[m]["benchmarks"].get(bench, {}).get("tasks", {}).get(task) for m in models])
                for task in b.get("tasks", {})]
        rows.append((f"**{b.get('aggregate', 'mean')}**",
                     [general[m]["benchmarks"].get(bench, {}).get("score") for m in models]))
        for task, vals in rows:
            diff = ([_fmt(vals[1] - vals[0]) if None not in vals else "n/a"] if len(vals) == 2 else [])
            lines.append(f"| {_cell(bench)} | {_cell(task)} | " + " | ".join(_fmt(v) for v in vals + [])
                         + "".join(f" | {d}" for d in diff) + " |")
    routed = [(bench, task, name, sc["routed"]) for bench, b in general.get("final", {}).get("benchmarks", {}).items()
              for task, by_set in b.get("sets", {}).items() for name, sc in by_set.items() if sc.get("routed")]
    if routed:
        lines += ["", "Questions per routed task (the final model's task locator; none = the pretrained model):", ""]
        lines += [f"- {bench}/{task}" + (f"/{name}" if name != task else "") + ": "
                  + ", ".join(f"{t} {n}" for t, n in counts.items()) for bench, task, name, counts in routed]
    return lines


def _dmole_section(method_eval: Mapping[str, Any], tasks: list[str]) -> list[str]:
    """D-MoLE's cumulative architecture (its Fig. 6): the slots each task received, per modality, and how many
    evaluated samples ran with 0 (the pretrained model), 1 or 2 tasks' experts (``method_eval`` ``dmole``)."""
    rows = [(int(k.rsplit("_", 1)[1]), v["dmole"]) for k, v in method_eval.items()
            if k.startswith("after_task_") and isinstance(v, Mapping) and "dmole" in v]
    if not rows:
        return []
    after, dm = max(rows, key=lambda r: r[0])
    slots = dm.get("slots", {})
    lines = ["", f"## D-MoLE architecture (after task {after})", "",
             f"Slots: {slots.get('llm', 0)} in the language model, {slots.get('vision', 0)} in the vision encoder "
             "(a slot = the q/k/v or the output projection of one layer). Each task's expert went to:", "",
             "| task | LLM slots | vision slots | τ | slots |", "|---|---:|---:|---:|---|"]
    taus = dm.get("taus", [])
    for k, alloc in enumerate(dm.get("allocation", [])):
        name = tasks[k] if k < len(tasks) else str(k + 1)
        chosen = ", ".join(s.split("layers.")[-1] + (" (V)" if m == "vision" else "")
                           for m in ("llm", "vision") for s in alloc.get(m, []))
        tau = _fmt(taus[k]) if k < len(taus) and abs(taus[k]) >= 0.01 else (f"{taus[k]:.2e}" if k < len(taus) else "")
        lines.append(f"| {_cell(name)} | {len(alloc.get('llm', []))} | {len(alloc.get('vision', []))} | {tau} | "
                     f"{_cell(chosen)} |")
    act = dm.get("active_tasks") or {}
    if act:
        lines += ["", f"Evaluated samples after task {after} with no task under its threshold (pretrained model): "
                  f"{act.get('none', 0)}; one task's experts: {act.get('one', 0)}; two: {act.get('two', 0)}."]
    return lines


def _task_router_section(method_eval: Mapping[str, Any]) -> list[str]:
    """The task router's per-task accuracy of the last evaluated row (``metrics.json`` ``method_eval``), if any."""
    rows = [(int(k.rsplit("_", 1)[1]), v["task_router"]) for k, v in method_eval.items()
            if k.startswith("after_task_") and isinstance(v, Mapping) and "task_router" in v]
    if not rows:
        return []
    after, tr = max(rows, key=lambda r: r[0])
    lines = ["", f"## Task router (after task {after})", "",
             "Share of each test set routed to its own task's prototype.", "",
             "| task | samples | accuracy |", "|---|---:|---:|"]
    lines += [f"| {t} | {tr.get('samples', {}).get(t, '')} | {_fmt(a)} |" for t, a in tr.get("accuracy", {}).items()]
    lines.append(f"| mean | | {_fmt(tr.get('mean'))} |")
    return lines


COST_PLOT = "plots/cost.png"


def _protocol_lines(run_dir: Path) -> list[str]:
    from dymoe.runner.protocol import card_summary, read_card

    card = read_card(run_dir)
    return card_summary(card) if card else []


def _cost_and_format_lines(run: RunSummary) -> list[str]:
    """The cost table (``metrics.json`` ``cost``) and the format-vs-knowledge matrices, when the run has them."""
    from dymoe.eval.forgetting import FILE, render
    from dymoe.runner.cost import cost_table

    lines: list[str] = []
    costs = run.info.get("cost")
    if costs:
        kinds = {c.get("peak_memory_kind") for c in costs.values()}
        lines += ["## Cost per task", "", *cost_table(costs), "",
                  "Tokens: answer tokens the loss covers. Peak memory: "
                  + ("the process's peak RSS so far (CPU)" if kinds == {"cpu_max_rss"} else "the task's CUDA peak")
                  + ". FLOPs: one greedy decode step per sequence on the probe batch (FlopCounterMode); overhead "
                  "against the frozen base. See metrics.json `cost`.", ""]
    fmt = _read_json(run.run_dir / FILE)
    if fmt.get("tasks"):
        lines += render(fmt)
    return lines


def render_report(run: RunSummary) -> str:
    """The Markdown text of ``report.md`` for a loaded run (see :func:`write_report`)."""
    m, info = run.metrics, run.info
    title = run.label if run.label == run.method else f"{run.label} ({run.method})"
    lines = [f"# {title}", ""]
    if run.partial and len(run.planned) > len(run.tasks):
        left = ", ".join(run.planned[len(run.tasks):])
        lines += [f"> **Partial run**: {len(run.tasks)} of {len(run.planned)} tasks trained; not yet: {left}.", ""]
    elif run.partial:
        lines += [f"> **Partial run**: {len(run.tasks)} task(s) trained so far; the run is not complete.", ""]
    facts = []
    if "seed" in info:
        facts.append(f"- seed: {info['seed']}")
    for key in ("trainable_params", "total_adapter_params"):
        if key in info:
            value = info[key]
            shown = f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)
            facts.append(f"- {key.replace('_', ' ')}: {shown}")
    for key in ("device", "git_commit", "torch", "transformers"):
        if key in run.env:
            facts.append(f"- {key.replace('_', ' ')}: {run.env[key]}")
    lines += [f"- tasks trained: {len(run.tasks)} ({', '.join(run.tasks)})", *facts, ""]
    lines += _protocol_lines(run.run_dir)

    lines += ["## Settings", ""]
    settings = _settings_rows(run.config)
    if settings:
        lines += ["| setting | value |", "|---|---|", *(f"| {k} | {_cell(v)} |" for k, v in settings)]
    else:
        lines.append("No config.yaml in the run directory.")
    lines += ["", "## Accuracy matrix (%)", "", "Row *j*: after training task *j*; column *i*: evaluated task.", ""]
    lines += _matrix_table(run.tasks, run.matrix)
    lines += ["", "## Metrics", "", "| MFT | MFN | MAA | BWT | forgetting |", "|---:|---:|---:|---:|---:|"]
    lines.append("| " + " | ".join(_fmt(m[k]) for k in ("MFT", "MFN", "MAA", "BWT", "forgetting")) + " |")
    if m["BWT"] is None:
        lines += ["", "BWT and forgetting need at least two tasks."]
    lines += ["", f"## Final accuracy per task (%, after {run.tasks[-1]})", "", "| task | accuracy |", "|---|---:|"]
    lines += [f"| {t} | {_fmt(a)} |" for t, a in run.final.items()]
    lines += _evaluation_sections(run)
    lines += _task_router_section(run.info.get("method_eval") or {})
    lines += _dmole_section(run.info.get("method_eval") or {}, run.tasks)
    lines += _general_section(run.info.get("general") or {})
    lines += ["", *_cost_and_format_lines(run)]
    lines += ["## Plots", ""]
    lines += [f"- [{name}]({rel})" for name, rel in PLOT_FILES.items()]
    if run.info.get("cost"):
        lines.append(f"- [parameters and training time per task]({COST_PLOT})")
    lines += ["", f"![accuracy matrix]({PLOT_FILES['accuracy matrix']})", ""]
    return "\n".join(lines)


def write_report(run_dir: str | os.PathLike) -> Path:
    """Rebuild ``RUN/plots/*.png`` and ``RUN/report.md`` from the run's files; returns the report's path.

    The report has the title (label + method), a partial-run notice when fewer tasks are trained than planned,
    the seed and adapter parameter counts, the key settings of ``config.yaml``, the accuracy matrix, MFT / MFN /
    MAA / BWT / forgetting, the final per-task accuracy and links to the plots. Every file is written atomically.

    Raises:
        DataError: no run directory, no or malformed ``matrix.json``, a malformed optional file.
    """
    run = load_run(run_dir)
    root = run.run_dir
    (root / "plots").mkdir(exist_ok=True)
    title = run.label
    plot_accuracy_matrix(run.planned, run.matrix, root / PLOT_FILES["accuracy matrix"], title=f"{title}: accuracy (%)")
    plot_task_curves(run.tasks, run.matrix, root / PLOT_FILES["per-task accuracy across the sequence"], title=title)
    plot_radar({run.label: run.final}, root / PLOT_FILES["per-task final accuracy (radar)"], title=title)
    if run.info.get("cost"):
        from dymoe.runner.cost import plot_cost

        plot_cost(run.info["cost"], root / COST_PLOT, title=title)
    path = root / "report.md"
    write_text_atomic(path, render_report(run))
    return path


# ---------------------------------------------------------------------------------------------- comparison


def _group(runs: Sequence[RunSummary], group_by: str, protocols: Sequence[int] | None = None
           ) -> dict[str, list[RunSummary]]:
    """Runs by label (or method); with ``protocols`` (one index per run, several protocols) also by protocol,
    the row named ``"<label> [P<n>]"``."""
    if group_by not in ("label", "method"):
        raise ConfigError(f"group_by must be 'label' or 'method', got {group_by!r}")
    groups: dict[str, list[RunSummary]] = {}
    for j, run in enumerate(runs):
        name = run.label if group_by == "label" else run.method
        if protocols is not None:
            name = f"{name} [P{protocols[j] + 1}]"
        groups.setdefault(name, []).append(run)
    return groups


class MixedProtocols(DymoeError):
    """Runs made under different protocols were to be put in one table (``--allow-mixed`` accepts them)."""


def check_protocols(runs: Sequence[RunSummary], *, allow_mixed: bool = False) -> tuple[list[int] | None, list[str]]:
    """Compare the runs' protocol cards (:mod:`dymoe.runner.protocol`).

    Returns ``(protocol index per run or None when all agree, note lines for under the table)``. The notes name
    the differing fields with each protocol's value, and the fields not compared because some runs' cards lack
    them (runs made before protocol cards existed).

    Raises:
        MixedProtocols: the protocols differ and ``allow_mixed`` is false; the message names the fields.
    """
    from dymoe.runner.protocol import differing_fields, protocol_groups, protocol_key, read_card, short

    keys = [protocol_key(read_card(r.run_dir)) for r in runs]
    differ, unknown = differing_fields(keys)
    notes: list[str] = []
    groups = protocol_groups(keys) if differ else None
    if differ:
        first = {}
        for j, g in enumerate(groups):
            first.setdefault(g, j)
        detail = []
        for f in differ:
            values = "; ".join(f"P{g + 1} ({runs[j].run_dir}) = {short(keys[j][f])}" for g, j in first.items())
            detail.append(f"  {f}: {values}")
        if not allow_mixed:
            raise MixedProtocols(
                f"these runs were made under {len(first)} different protocols; the fields that differ:\n"
                + "\n".join(detail) + "\nCompare runs of one protocol, or pass --allow-mixed to put them in one "
                "table (rows are then split by protocol and the differences printed under it)")
        notes += ["", f"**Mixed protocols** ({len(first)}): rows are split by protocol; the fields that differ:", ""]
        notes += [f"- {line.strip()}" for line in detail]
    if unknown:
        notes += ["", f"Not compared (missing from some runs' protocol cards): {', '.join(unknown)}."]
    return groups, notes


def _load_comparable(run_dirs: Sequence[str | os.PathLike]) -> list[RunSummary]:
    if not run_dirs:
        raise DataError("no run directories to compare")
    runs = [load_run(d) for d in run_dirs]
    first = runs[0]
    for run in runs[1:]:
        if set(run.tasks) != set(first.tasks):
            raise DymoeError(
                f"runs have different task lists: {first.run_dir} trained {first.tasks} but {run.run_dir} trained "
                f"{run.tasks}; compare runs of the same tasks (a partial run has fewer)"
            )
    return runs


def _stats(values: list[float | None]) -> tuple[float | None, float | None]:
    """``(mean, sample std)``; std is ``None`` for a single value; ``(None, None)`` if any value is missing."""
    if not values or any(v is None for v in values):
        return None, None
    mean = statistics.fmean(values)  # type: ignore[arg-type]
    std = statistics.stdev(values) if len(values) > 1 else None  # type: ignore[arg-type]
    return mean, std


def _mean_pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def mean_final_accuracy(
    run_dirs: Sequence[str | os.PathLike], *, group_by: str = "label"
) -> dict[str, dict[str, float]]:
    """``{label: {task: mean final accuracy over the group's runs}}`` in the first run's task order (for radars)."""
    runs = _load_comparable(run_dirs)
    tasks = runs[0].tasks
    return {
        label: {t: statistics.fmean(r.final[t] for r in group) for t in tasks}
        for label, group in _group(runs, group_by).items()
    }


def _definition_value(run: RunSummary, column: str) -> float | None:
    definition, key = column.split(":", 1)
    metric = run.info.get("metric") or {}
    value = metric.get(key) if metric.get("definition") == definition else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _definition_columns(runs: Sequence[RunSummary]) -> list[str]:
    """``definition:key`` columns of the runs' metric definition (``evaluation.metric``) when it is not CoIN's
    (e.g. ``cmoe:BWT``, ``dmole:AVG``); the runs must share it."""
    defs = {(r.info.get("metric") or {}).get("definition", "coin") for r in runs}
    if len(defs) > 1:
        raise DymoeError(f"runs use different metric definitions {sorted(defs)} (evaluation.metric); compare runs "
                         "of one definition")
    (definition,) = defs
    if definition == "coin":
        return []
    return [f"{definition}:{k}" for k, _ in _summary_cells(runs[0].info["metric"])]


def compare_runs(
    run_dirs: Sequence[str | os.PathLike],
    *,
    group_by: str = "label",
    reference: Mapping[str, Mapping[str, float]] | None = None,
    params: bool = False,
    allow_mixed: bool = False,
) -> tuple[str, str]:
    """Side-by-side table of runs, like the papers' main table; returns ``(markdown, csv)``.

    ``params``: add a column ``trainable/task`` after ``n`` (``metrics.json``'s ``trainable_params``: what the
    optimizer trained on the last task, adapter plus any trained projector; the largest of the group's runs).

    One row per group (``group_by="label"``: the ``label`` of metrics.json, falling back to the method name;
    ``"method"``: the method name), in order of first appearance. Columns: ``n`` (runs in the group), the final
    accuracy of each task in the training order of the first run, then MFN, MAA, BWT, then, when the runs' metric
    definition (``evaluation.metric``) is not CoIN's, its numbers as ``definition:key`` (``cmoe:BWT``). A group of several runs
    (seeds) shows ``mean ± std`` with the sample standard deviation (ddof = 1); a single run shows its value.
    ``reference`` rows (``{label: {task or metric: value}}``, e.g. the paper's numbers) follow as
    ``"<label> (paper)"``; a cell they do not give is empty.

    The CSV has ``method, n, source`` then, for every column ``c``, ``c`` (the mean) and ``c_std`` (empty for a
    single run or a reference row); ``source`` is ``measured`` or ``paper``.

    Runs are compared by protocol first (:func:`check_protocols`): runs of different protocols are refused unless
    ``allow_mixed``, which splits the rows by protocol (``"<label> [P<n>]"``) and prints the differing fields under
    the Markdown table.

    Raises:
        MixedProtocols: the runs' protocol cards differ and ``allow_mixed`` is false.
        DymoeError: runs trained different task sets, or a reference row names an unknown column.
        DataError: a missing or malformed run directory.
        ConfigError: an unknown ``group_by``.
    """
    runs = _load_comparable(run_dirs)
    protocols, notes = check_protocols(runs, allow_mixed=allow_mixed)
    tasks = runs[0].tasks
    extra = _definition_columns(runs)
    columns = [*tasks, *COMPARE_METRICS, *extra]
    rows: list[tuple[str, int, str, dict[str, tuple[float | None, float | None]]]] = []
    for label, group in _group(runs, group_by, protocols).items():
        cells = {t: _stats([r.final[t] for r in group]) for t in tasks}
        cells.update({k: _stats([r.metrics[k] for r in group]) for k in COMPARE_METRICS})
        cells.update({c: _stats([_definition_value(r, c) for r in group]) for c in extra})
        rows.append((label, len(group), "measured", cells))
    for label, values in (reference or {}).items():
        unknown = sorted(set(values) - set(tasks) - _REFERENCE_KEYS - set(extra))
        if unknown:
            raise DymoeError(
                f"reference row {label!r}: unknown columns {unknown}; expected tasks {tasks} or {sorted(_REFERENCE_KEYS)}"
            )
        cells = {c: (float(values[c]), None) if c in values else (None, None) for c in columns}
        rows.append((f"{label} (paper)", 0, "paper", cells))

    counts = {label: max((int(r.info.get("trainable_params") or 0) for r in group), default=0)
              for label, group in _group(runs, group_by).items()} if params else {}
    head = ["Method", "n", *(["trainable/task"] if params else []), *columns]
    md = ["| " + " | ".join(head) + " |", "|---|---:|" + ("---:|" if params else "") + "---:|" * len(columns)]
    for label, n, source, cells in rows:
        shown = [_mean_pm(*cells[c]) if source == "measured" or cells[c][0] is not None else "" for c in columns]
        lead = [_cell(label), str(n) if source == "measured" else ""]
        if params:
            lead.append(_human(counts[label]) if source == "measured" and counts.get(label) else "")
        md.append("| " + " | ".join(lead + shown) + " |")

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["method", "n", "source", *(["trainable_params"] if params else []),
                     *(name for c in columns for name in (c, f"{c}_std"))])
    for label, n, source, cells in rows:
        values = [("" if v is None else f"{v:.4f}") for c in columns for v in cells[c]]
        extra = [counts.get(label, "") if source == "measured" else ""] if params else []
        writer.writerow([label, n if source == "measured" else "", source, *extra, *values])
    return "\n".join(md + notes) + "\n", buf.getvalue()


def _human(n: int) -> str:
    """``1234567`` → ``1.23M``; ``45100`` → ``45.1K``; below 1000 as is."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return str(n)


# cost columns of ``dymoe compare --cost``: (header, function of one run's metrics.json ``cost`` → number)
COST_COLUMNS: tuple[tuple[str, Any], ...] = (
    ("train s (total)", lambda c: sum(t.get("train_seconds") or 0 for t in c.values())),
    ("steps", lambda c: sum(t.get("optimizer_steps") or 0 for t in c.values())),
    ("tokens", lambda c: sum(t.get("tokens") or 0 for t in c.values())),
    ("tokens/s", lambda c: _ratio(sum(t.get("tokens") or 0 for t in c.values()),
                                  sum(t.get("train_seconds") or 0 for t in c.values()))),
    ("peak MiB", lambda c: max((t.get("peak_memory_bytes") or 0) for t in c.values()) / 2**20),
    ("params added", lambda c: sum(t.get("params_added") or 0 for t in c.values())),
    ("adapter total", lambda c: list(c.values())[-1].get("total_adapter_params")),
    ("GFLOP/token", lambda c: _scaled(list(c.values())[-1].get("flops_per_token_adapted"), 1e-9)),
    ("FLOP overhead %", lambda c: _scaled(list(c.values())[-1].get("flops_overhead"), 100)),
    ("gen tok/s", lambda c: list(c.values())[-1].get("gen_tokens_per_s_adapted")),
)


def _num(v: float) -> str:
    """Large counts with thousands separators, small ones with 4 significant digits."""
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _scaled(v: float | None, k: float) -> float | None:
    return None if v is None else v * k


def compare_costs(run_dirs: Sequence[str | os.PathLike], *, group_by: str = "label", allow_mixed: bool = False) -> str:
    """The cost table of ``dymoe compare --cost``: one row per group (mean ± std over its runs), the columns of
    :data:`COST_COLUMNS` (totals over the tasks; the adapter size and inference cost after the last task)."""
    runs = _load_comparable(run_dirs)
    protocols, _ = check_protocols(runs, allow_mixed=allow_mixed)
    md = ["| Method | n | " + " | ".join(h for h, _ in COST_COLUMNS) + " |", "|---|---:|" + "---:|" * len(COST_COLUMNS)]
    for label, group in _group(runs, group_by, protocols).items():
        cells = []
        for _, fn in COST_COLUMNS:
            values = [fn(r.info["cost"]) if r.info.get("cost") else None for r in group]
            mean, std = _stats(values)
            cells.append("n/a" if mean is None else _num(mean) + ("" if std is None else f" ± {_num(std)}"))
        md.append(f"| {_cell(label)} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(md) + "\n"

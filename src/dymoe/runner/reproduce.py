"""``dymoe reproduce main-table|ablation``: every row of a DyMoE paper table, over several seeds.

A plan (``configs/reproduce/main-table.yaml`` for the main table, ``configs/reproduce/ablation.yaml`` for the
component ablation) names a base run config per benchmark, the methods as config
overrides, and the paper's numbers. Each (method, seed) is an ordinary run directory ``OUT/<label>/seed<k>``, so a
stopped reproduction resumes where it stopped. The table (Markdown + CSV, mean ± std over seeds, the paper's rows
below) and a radar chart of mean final accuracy are written to ``OUT`` as ``<table>.md``, ``<table>.csv``,
``<table>_radar.png`` and ``<table>.json`` (``main_table_paper.md``, ``ablation.md`` ...). Rows with the same
label and overrides in two plans are the same runs: reproducing the ablation into the main table's folder reuses its
IncMoELoRA and LLaVA-DyMoE runs.

The main table has two **budgets** (``--budget``): ``paper``, every baseline at its own paper's settings (CoIN's
LoRA r128/α256 and MoELoRA 8 × r16 with the projector trained at 2e-5, Prism's EWC and O-LoRA; see the plan), and
``equal``, every baseline at the LoRA budget of one DyMoE task with the projector frozen. ``paper`` is the default on
CoIN, ``equal`` on mini-CoIN (the demo's setting); on mini-CoIN ``paper`` scales the ranks with DyMoE's per-task
bank (64 on CoIN, 16 on mini-CoIN) and the projector's learning rate with the run's.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from dymoe.config import load_config
from dymoe.errors import ConfigError
from dymoe.io import atomic_write_json, atomic_write_text, read_yaml_mapping

PLAN_DIR = Path(__file__).resolve().parents[3] / "configs" / "reproduce"
#: the tables ``dymoe reproduce`` knows, and their plans
TABLES = {"main-table": PLAN_DIR / "main-table.yaml", "ablation": PLAN_DIR / "ablation.yaml",
          "task-router": PLAN_DIR / "task-router.yaml", "dmole": PLAN_DIR / "dmole.yaml"}
DEFAULT_PLAN = TABLES["main-table"]


@dataclass
class Plan:
    """A reproduction plan: ``base[benchmark]`` config path, ``methods`` [(label, overrides)], ``paper`` rows, and
    optional budgets: ``budgets[budget][benchmark][label]`` = extra overrides of that row under that budget, and
    ``default_budget[benchmark]`` (a plan without budgets runs every row as given)."""

    base: dict[str, Path]
    methods: list[tuple[str, list[str]]]
    paper: dict[str, dict[str, float]]
    budgets: dict[str, dict[str, dict[str, list[str]]]] = field(default_factory=dict)
    default_budget: dict[str, str] = field(default_factory=dict)


@dataclass
class Row:
    """One row of a resolved plan: its ``label``, the config overrides and the run folder under the output
    (``<label>``, or ``<label>/<budget>`` when the budget changes the row)."""

    label: str
    overrides: list[str]
    folder: str


def _budgets(path: Path, raw: dict, labels: list[str], benchmarks: list[str]) -> tuple[dict, dict]:
    budgets = raw.get("budgets") or {}
    if not isinstance(budgets, dict):
        raise ConfigError(f"{path}: 'budgets' must map budget names to {{benchmark: {{label: [overrides]}}}}")
    out: dict[str, dict[str, dict[str, list[str]]]] = {}
    for name, per_bench in budgets.items():
        per_bench = per_bench or {}
        if not isinstance(per_bench, dict) or set(per_bench) - set(benchmarks):
            raise ConfigError(f"{path}: budgets.{name} must map benchmarks among {benchmarks} to rows")
        out[str(name)] = {}
        for bench, rows in per_bench.items():
            rows = rows or {}
            unknown = sorted(set(rows) - set(labels))
            if not isinstance(rows, dict) or unknown:
                raise ConfigError(f"{path}: budgets.{name}.{bench}: unknown row labels {unknown}; the plan has {labels}")
            out[str(name)][bench] = {str(k): [str(x) for x in (v or [])] for k, v in rows.items()}
    default = raw.get("default_budget") or {}
    if not isinstance(default, dict) or any(v not in out for v in default.values()):
        raise ConfigError(f"{path}: default_budget must map benchmarks to one of the budgets {sorted(out)}")
    return out, {str(k): str(v) for k, v in default.items()}


def load_plan(path: str | Path = DEFAULT_PLAN) -> Plan:
    """Read and check a plan YAML (relative base paths are relative to the plan's folder)."""
    path = Path(path)
    raw = read_yaml_mapping(path, "plan")
    if not isinstance(raw.get("methods"), list) or not isinstance(raw.get("base"), dict):
        raise ConfigError(f"{path}: expected keys 'base' (mapping) and 'methods' (list)")
    methods = []
    for i, m in enumerate(raw["methods"]):
        if not isinstance(m, dict) or "label" not in m:
            raise ConfigError(f"{path}: methods[{i}] needs a 'label' and a 'set' list")
        methods.append((str(m["label"]), [str(s) for s in m.get("set", [])]))
    base = {k: (path.parent / v).resolve() for k, v in raw["base"].items()}
    budgets, default = _budgets(path, raw, [m[0] for m in methods], list(base))
    return Plan(base=base, methods=methods, paper=raw.get("paper") or {}, budgets=budgets, default_budget=default)


def resolve_budget(plan: Plan, benchmark: str, budget: str | None) -> str | None:
    """The budget to run: ``budget``, else the plan's default for ``benchmark``; None for a plan without budgets."""
    if not plan.budgets:
        if budget is not None:
            raise ConfigError(f"--budget {budget!r}: this plan has no budgets (only the main table has)")
        return None
    budget = budget or plan.default_budget.get(benchmark)
    if budget not in plan.budgets:
        raise ConfigError(f"--budget {budget!r}: expected one of {sorted(plan.budgets)}")
    return budget


def plan_rows(plan: Plan, benchmark: str, budget: str | None) -> list[Row]:
    """Every row of the plan with its overrides under ``budget`` (None: as written)."""
    extra = plan.budgets.get(budget, {}).get(benchmark, {}) if budget else {}
    rows = []
    for label, sets in plan.methods:
        more = extra.get(label, [])
        folder = run_dir_name(label) + (f"/{run_dir_name(budget)}" if more else "")
        rows.append(Row(label, [*sets, *more], folder))
    return rows


def paper_rows(plan: Plan, labels: list[str], tasks: list[str]) -> dict[str, dict[str, float]]:
    """The paper's rows for these methods, restricted to the tasks that were run; its MFN/MAA/BWT are kept only
    when the run covers all of the paper's tasks (otherwise they would describe a different sequence).

    The paper's CoIN rows go under the measured ones on any benchmark: on mini-CoIN they are there for the
    ordering of the methods, not for the absolute numbers."""
    rows = {}
    for label in labels:
        if label not in plan.paper:
            continue
        row = plan.paper[label]
        paper_tasks = [k for k in row if k not in ("MFN", "MAA", "BWT", "MFT")]
        keep = set(tasks) | ({"MFN", "MAA", "BWT", "MFT"} if set(paper_tasks) <= set(tasks) else set())
        rows[label] = {k: v for k, v in row.items() if k in keep}
    return rows


def run_dir_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


def task_router_table(run_dirs: list[Path]) -> str:
    """Markdown: the task router's accuracy per task after each run's last task (``metrics.json`` ``method_eval``),
    mean ± std over the runs of each label; empty when no run has a task router."""
    import statistics

    per_label: dict[str, list[dict[str, float]]] = {}
    for d in run_dirs:
        m = json.loads((Path(d) / "metrics.json").read_text())
        rows = {int(k.rsplit("_", 1)[1]): v.get("task_router") for k, v in (m.get("method_eval") or {}).items()}
        rows = {k: v for k, v in rows.items() if v}
        if rows:
            last = rows[max(rows)]
            per_label.setdefault(m.get("label") or m.get("method"), []).append({**last["accuracy"], "mean": last["mean"]})
    if not per_label:
        return ""
    cols = list(next(iter(per_label.values()))[0])

    def cell(vals: list[float]) -> str:
        if len(vals) == 1:
            return f"{vals[0]:.2f}"
        return f"{statistics.fmean(vals):.2f} ± {statistics.stdev(vals):.2f}"

    lines = ["Task-router accuracy (%: test samples routed to their own task's prototype, after the last task)", "",
             "| Method | n | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    for label, runs in per_label.items():
        lines.append(f"| {label} | {len(runs)} | " + " | ".join(cell([r.get(c, 0.0) for r in runs]) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def reproduce(
    output: str | Path,
    *,
    benchmark: str = "minicoin",
    seeds: int = 3,
    backbone: str | None = None,
    methods: list[str] | None = None,
    overrides: list[str] | None = None,
    plan_path: str | Path | None = None,
    table: str = "main-table",
    budget: str | None = None,
) -> dict:
    """Run every (method, seed) of the plan (resuming finished ones) and write the table; returns a summary.

    ``table`` names the outputs (``<table>.md`` with dashes as underscores, plus ``_<budget>`` for a plan with
    budgets) and, when ``plan_path`` is None, picks the plan from :data:`TABLES`. ``budget`` (main table:
    ``paper`` or ``equal``; None = the plan's default for the benchmark) adds each row's budget overrides; a row
    the budget changes runs in ``OUT/<label>/<budget>/seed<k>``, the others in ``OUT/<label>/seed<k>`` (shared
    by every budget). The table shows each row's trainable parameters per task."""
    from dymoe.analysis.plots import plot_radar
    from dymoe.runner.continual import run
    from dymoe.runner.report import compare_runs, mean_final_accuracy

    if table not in TABLES:
        raise ConfigError(f"unknown table {table!r}; expected one of {sorted(TABLES)}")
    plan = load_plan(plan_path or TABLES[table])
    if benchmark not in plan.base:
        raise ConfigError(f"--benchmark {benchmark!r}: the plan has base configs for {sorted(plan.base)}")
    budget = resolve_budget(plan, benchmark, budget)
    stem = table.replace("-", "_") + (f"_{budget}" if budget else "")
    chosen = plan_rows(plan, benchmark, budget)
    if methods:
        known = [r.label for r in chosen]
        unknown = [m for m in methods if m not in known]
        if unknown:
            raise ConfigError(f"unknown method label {unknown[0]!r}; the plan has {known}")
        chosen = [r for r in chosen if r.label in methods]
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    output = Path(output)
    t0 = time.perf_counter()
    run_dirs, wall = [], {}
    for seed in range(seeds):
        for row in chosen:
            extra = [*row.overrides, f"training.seed={seed}", f"label={row.label}", *(overrides or [])]
            if backbone:
                extra.append(f"backbone.path={backbone}")
            cfg = load_config(plan.base[benchmark], extra)
            out = output / row.folder / f"seed{seed}"
            print(f"== {row.label}{f' ({budget} budget)' if budget else ''}, seed {seed} → {out}", file=sys.stderr)
            t = time.perf_counter()
            run(cfg, out)
            wall[f"{row.folder}/seed{seed}"] = round(time.perf_counter() - t, 1)
            run_dirs.append(out)
    tasks = json.loads((run_dirs[0] / "matrix.json").read_text())["tasks"]
    reference = paper_rows(plan, [r.label for r in chosen], tasks)
    # methods of one table differ in their adapter layout (and, under the paper budget, in their recipe) by design:
    # the table keeps them side by side and prints the differing protocol fields under it
    markdown, csv_text = compare_runs(run_dirs, reference=reference, params=True, allow_mixed=True)
    router = task_router_table(run_dirs)
    if router:
        markdown = f"{markdown}\n{router}"
    if budget:
        markdown = f"Budget: {budget}.\n\n{markdown}"
    atomic_write_text(output / f"{stem}.md", markdown)
    atomic_write_text(output / f"{stem}.csv", csv_text)
    plot_radar(mean_final_accuracy(run_dirs), output / f"{stem}_radar.png", title=f"final accuracy ({benchmark})")
    summary = {"table": table, "benchmark": benchmark, "budget": budget, "seeds": seeds,
               "methods": [r.label for r in chosen], "overrides": {r.label: r.overrides for r in chosen},
               "wall_seconds": round(time.perf_counter() - t0, 1), "per_run_seconds": wall}
    atomic_write_json(output / f"{stem}.json", summary)
    print(markdown)
    return summary

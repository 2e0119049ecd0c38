"""``dymoe reproduce main-table|ablation|task-router|cmoe-main-table|smoe-dsal``: every row of a paper table, over seeds.

A plan (``configs/reproduce/main-table.yaml`` for the main table, ``configs/reproduce/ablation.yaml`` for the
component ablation) names a base run config per benchmark, the methods as config
overrides, and the paper's numbers. Each (method, seed) is an ordinary run directory ``OUT/<label>/seed<k>``, so a
stopped reproduction resumes where it stopped. The table (Markdown + CSV, mean ± std over seeds, the paper's rows
below) and a radar chart of mean final accuracy are written to ``OUT`` as ``<table>.md``, ``<table>.csv``,
``<table>_radar.png`` and ``<table>.json`` (``main_table_paper.md``, ``ablation.md`` ...). Rows with the same
label and overrides in two plans are the same runs: reproducing the ablation into the main table's folder reuses its
IncMoELoRA and LLaVA-DyMoE runs.

A plan's ``layout`` is ``final`` (the DyMoE tables: final accuracy per task, MFN / MAA / BWT) or ``immediate-last``
(LLaVA-CMoE's Table 1, ``configs/reproduce/cmoe-main-table.yaml``: an Immediate and a Last row per method, Mean and
CMoE's BWT; :func:`immediate_last_table`). A row may name its own configs per benchmark (``config: {benchmark:
[base, layer, ...]}``: the first file replaces the plan's base, later ones are layered over it).

The main table has two **budgets** (``--budget``): ``paper``, every baseline at its own paper's settings (CoIN's
LoRA r128/α256 and MoELoRA 8 × r16 with the projector trained at 2e-5, Prism's EWC and O-LoRA; see the plan), and
``equal``, every baseline at the LoRA budget of one DyMoE task with the projector frozen. ``paper`` is the default on
CoIN, ``equal`` on mini-CoIN (the demo's setting); on mini-CoIN ``paper`` scales the ranks with DyMoE's per-task
bank (64 on CoIN, 16 on mini-CoIN) and the projector's learning rate with the run's.
"""

from __future__ import annotations

import json
import re
import statistics
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
          "task-router": PLAN_DIR / "task-router.yaml", "cmoe-main-table": PLAN_DIR / "cmoe-main-table.yaml",
          "dmole": PLAN_DIR / "dmole.yaml",
          "smoe-dsal": PLAN_DIR / "smoe-dsal.yaml", "smoe-dsal-single": PLAN_DIR / "smoe-dsal-single.yaml",
          "smoe-dsal-multi": PLAN_DIR / "smoe-dsal-multi.yaml"}
LAYOUTS = ("final", "immediate-last", "per-task")
DEFAULT_PLAN = TABLES["main-table"]


@dataclass
class Plan:
    """A reproduction plan: ``base[benchmark]`` config path, ``methods`` [(label, overrides)], ``paper`` rows, and
    optional budgets: ``budgets[budget][benchmark][label]`` = extra overrides of that row under that budget, and
    ``default_budget[benchmark]`` (a plan without budgets runs every row as given); ``layout`` (:data:`LAYOUTS`;
    ``per-task``: every row runs once per task of ``tasks``, that task alone from the base, and the table joins
    the runs: SMoE-DSAL's single-domain setting); ``configs[label][benchmark]``: a row's own config files (base
    first, then layers)."""

    base: dict[str, Path]
    methods: list[tuple[str, list[str]]]
    paper: dict[str, dict]
    budgets: dict[str, dict[str, dict[str, list[str]]]] = field(default_factory=dict)
    default_budget: dict[str, str] = field(default_factory=dict)
    layout: str = "final"
    configs: dict[str, dict[str, list[Path]]] = field(default_factory=dict)
    tasks: list[str] = field(default_factory=list)


@dataclass
class Row:
    """One row of a resolved plan: its ``label``, the config overrides and the run folder under the output
    (``<label>``, or ``<label>/<budget>`` when the budget changes the row); ``base``: the row's own base config
    (None: the plan's)."""

    label: str
    overrides: list[str]
    folder: str
    base: Path | None = None


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
    methods, configs = [], {}
    base = {k: (path.parent / v).resolve() for k, v in raw["base"].items()}
    for i, m in enumerate(raw["methods"]):
        if not isinstance(m, dict) or "label" not in m:
            raise ConfigError(f"{path}: methods[{i}] needs a 'label' and a 'set' list")
        methods.append((str(m["label"]), [str(s) for s in m.get("set", [])]))
        own = m.get("config") or {}
        if not isinstance(own, dict) or set(own) - set(base) or not all(
                isinstance(v, list) and v and all(isinstance(f, str) for f in v) for v in own.values()):
            raise ConfigError(f"{path}: methods[{i}].config must map benchmarks among {sorted(base)} to a non-empty "
                              "list of config files (base first, then layers)")
        if own:
            configs[str(m["label"])] = {k: [(path.parent / f).resolve() for f in v] for k, v in own.items()}
    budgets, default = _budgets(path, raw, [m[0] for m in methods], list(base))
    layout = str(raw.get("layout", "final"))
    if layout not in LAYOUTS:
        raise ConfigError(f"{path}: layout must be one of {list(LAYOUTS)}, got {layout!r}")
    tasks = raw.get("tasks") or []
    if (layout == "per-task") != bool(tasks) or not all(isinstance(t, str) and t for t in tasks):
        raise ConfigError(f"{path}: 'tasks' (a list of task names) goes with layout per-task, and only with it")
    return Plan(base=base, methods=methods, paper=raw.get("paper") or {}, budgets=budgets, default_budget=default,
                layout=layout, configs=configs, tasks=[str(t) for t in tasks])


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
    from dymoe.demo.plan import layer_overrides

    extra = plan.budgets.get(budget, {}).get(benchmark, {}) if budget else {}
    rows = []
    for label, sets in plan.methods:
        more = extra.get(label, [])
        folder = run_dir_name(label) + (f"/{run_dir_name(budget)}" if more else "")
        files = plan.configs.get(label, {}).get(benchmark)
        layers = layer_overrides(files[1:]) if files else []
        rows.append(Row(label, [*layers, *sets, *more], folder, files[0] if files else None))
    if plan.layout == "per-task":  # each row once per task, that task alone: OUT/<label>/<task>/seed<k>
        rows = [Row(r.label, [*r.overrides, f"benchmark.order=[{t}]"], f"{r.folder}/{run_dir_name(t)}", r.base)
                for r in rows for t in plan.tasks]
    return rows


def per_task_table(run_dirs: list[Path], tasks: list[str]) -> tuple[str, str]:
    """The ``per-task`` layout's table: one row per label, one column per task, each cell the mean ± std over
    seeds of the run that trained that task alone (its final cell), and their Mean. Markdown and CSV."""
    cells: dict[str, dict[str, list[float]]] = {}
    for d in run_dirs:
        metrics = json.loads((d / "metrics.json").read_text())
        for task, value in metrics["final"].items():
            cells.setdefault(metrics.get("label") or d.parent.parent.name, {}).setdefault(task, []).append(value)

    def cell(vals: list[float]) -> str:
        if not vals:
            return ""
        if len(vals) == 1:
            return f"{vals[0]:.2f}"
        return f"{statistics.fmean(vals):.2f} ± {statistics.stdev(vals):.2f}"  # sample std, as the other tables

    head = ["method", *tasks, "Mean"]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    csv = [",".join(head)]
    for label, per in cells.items():
        means = [sum(per[t]) / len(per[t]) for t in tasks if per.get(t)]
        row = [cell(per.get(t, [])) for t in tasks] + [f"{sum(means) / len(means):.2f}" if len(means) == len(tasks)
                                                        else ""]
        md.append("| " + " | ".join([label, *row]) + " |")
        csv.append(",".join([label, *(c.split(" ")[0] for c in row)]))
    note = "\n\nEach task trained alone from the base model (its run's final cell); mean ± sample std over seeds.\n"
    return "\n".join(md) + note, "\n".join(csv) + "\n"


def paper_rows(plan: Plan, labels: list[str], tasks: list[str]) -> dict[str, dict[str, float]]:
    """The paper's rows for these methods, restricted to the tasks that were run; its MFN/MAA/BWT are kept only
    when the run covers all of the paper's tasks (otherwise they would describe a different sequence).

    The paper's CoIN rows go under the measured ones on any benchmark: on mini-CoIN they are there for the
    ordering of the methods, not for the absolute numbers. A row that shares no task with the run (D-MoLE's Table 2
    on mini-CoIN) is left out rather than printed empty."""
    rows = {}
    for label in labels:
        if label not in plan.paper:
            continue
        row = plan.paper[label]
        paper_tasks = [k for k in row if k not in ("MFN", "MAA", "BWT", "MFT")]
        keep = set(tasks) | ({"MFN", "MAA", "BWT", "MFT"} if set(paper_tasks) <= set(tasks) else set())
        kept = {k: v for k, v in row.items() if k in keep}
        if kept:  # a paper row with nothing in common with the run (D-MoLE's nine tasks on mini-CoIN) is left out
            rows[label] = kept
    return rows


def immediate_last_table(run_dirs: list[Path], paper: dict | None = None) -> tuple[str, str]:
    """LLaVA-CMoE's Table 1 layout over finished runs, grouped by label (mean ± sample std over seeds); returns
    ``(markdown, csv)``.

    Per label: **Immediate** (``a_{i,i}`` per task; from the ``oracle`` evaluation variant when the run has one, as
    CMoE reports it, cmoe.md A8) with its Mean, then for a run with that variant **Immediate (PTL)** (the main
    evaluation's diagonal), then **Last** (the final row of the main matrix) with its Mean and CMoE's BWT (mean over
    all N tasks of Last − Immediate; :func:`dymoe.eval.metrics.cmoe_summary`). ``paper[label]`` =
    ``{"Immediate": {...}, "Last": {...}}`` rows are printed under the measured ones, restricted to the tasks run;
    their Mean / BWT only when every paper task was run.
    """

    from dymoe.eval.metrics import cmoe_summary

    groups: dict[str, list[dict]] = {}
    tasks: list[str] | None = None
    for d in run_dirs:
        d = Path(d)
        stored = json.loads((d / "matrix.json").read_text())
        label = json.loads((d / "metrics.json").read_text()).get("label") or d.parent.name
        if tasks is None:
            tasks = stored["tasks"]
        elif stored["tasks"] != tasks:
            raise ConfigError(f"{d}: its tasks {stored['tasks']} differ from the other runs' {tasks}")
        main = stored["accuracy"]
        oracle = d / "variants" / "oracle" / "matrix.json"
        om = json.loads(oracle.read_text())["accuracy"] if oracle.is_file() else None
        summary = cmoe_summary(main, immediate=[om[i][i] for i in range(len(om))] if om else None)
        entry = {"Immediate": summary, "Last": summary}  # BWT: Last against that Immediate
        if om:
            entry["Immediate (PTL)"] = cmoe_summary(main)
        groups.setdefault(label, []).append(entry)
    tasks = tasks or []

    def cell(vals: list[float]) -> str:
        if not vals:
            return ""
        if len(vals) == 1:
            return f"{vals[0]:.2f}"
        return f"{statistics.fmean(vals):.2f} ± {statistics.stdev(vals):.2f}"

    cols = [*tasks, "Mean", "BWT"]
    md = ["| Stage | Method | n | " + " | ".join(cols) + " |", "|---|---|---:|" + "---:|" * len(cols)]
    csv_rows = [["stage", "method", "source", "n", *cols]]
    for stage in ("Immediate", "Immediate (PTL)", "Last"):
        for label, runs in groups.items():
            have = [r[stage] for r in runs if stage in r]
            if not have or (stage == "Immediate (PTL)" and len(have) < len(runs)):
                continue
            key = "last" if stage == "Last" else "immediate"
            per_task = [cell([r[key][i] for r in have]) for i in range(len(tasks))]
            mean = cell([r["mean_last" if stage == "Last" else "mean_immediate"] for r in have])
            bwt = cell([r["BWT"] for r in have]) if stage == "Last" else ""
            values = [*per_task, mean, bwt]
            md.append(f"| {stage} | {label} | {len(have)} | " + " | ".join(values) + " |")
            csv_rows.append([stage, label, "measured", str(len(have)), *values])
        for label in groups:
            row = ((paper or {}).get(label) or {}).get(stage)  # the paper has Immediate and Last rows
            if not row:
                continue
            paper_tasks = [k for k in row if k not in ("Mean", "BWT")]
            full = set(paper_tasks) <= set(tasks)
            values = [f"{row[t]:.2f}" if t in row else "" for t in tasks]
            values += [f"{row[k]:.2f}" if full and k in row else "" for k in ("Mean", "BWT")]
            md.append(f"| {stage} | {label} (paper) |  | " + " | ".join(values) + " |")
            csv_rows.append([stage, f"{label} (paper)", "paper", "", *values])
    csv_text = "\n".join(",".join(f'"{v}"' if "," in v else v for v in r) for r in csv_rows) + "\n"
    note = ("Immediate: accuracy on each task right after training it (from the oracle-router variant where the "
            "method has one, as LLaVA-CMoE reports it; Immediate (PTL): the same cells routed by its task locator). "
            "Last: after the last task. BWT: mean over all tasks of Last − Immediate (LLaVA-CMoE's definition).\n\n")
    return note + "\n".join(md) + "\n", csv_text


def run_dir_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


def task_router_table(run_dirs: list[Path]) -> str:
    """Markdown: the task router's accuracy per task after each run's last task (``metrics.json`` ``method_eval``),
    mean ± std over the runs of each label; empty when no run has a task router."""

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
    benchmark: str | None = "minicoin",
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
    if benchmark is None:  # minicoin where the plan has it, else the plan's first base (smoe-dsal: minidomains)
        benchmark = "minicoin" if "minicoin" in plan.base else next(iter(plan.base))
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
            cfg = load_config(row.base or plan.base[benchmark], extra)
            out = output / row.folder / f"seed{seed}"
            print(f"== {row.label}{f' ({budget} budget)' if budget else ''}, seed {seed} → {out}", file=sys.stderr)
            t = time.perf_counter()
            run(cfg, out)
            wall[f"{row.folder}/seed{seed}"] = round(time.perf_counter() - t, 1)
            run_dirs.append(out)
    tasks = json.loads((run_dirs[0] / "matrix.json").read_text())["tasks"]
    if plan.layout == "immediate-last":
        markdown, csv_text = immediate_last_table(run_dirs, plan.paper)
    elif plan.layout == "per-task":
        markdown, csv_text = per_task_table(run_dirs, plan.tasks)
    else:
        reference = paper_rows(plan, [r.label for r in chosen], tasks)
        # methods of one table differ in their adapter layout (and, under the paper budget, in their recipe) by
        # design: the table keeps them side by side and prints the differing protocol fields under it
        markdown, csv_text = compare_runs(run_dirs, reference=reference, params=True, allow_mixed=True)
    router = task_router_table(run_dirs)
    if router:
        markdown = f"{markdown}\n{router}"
    from dymoe.runner.general import general_table

    general = general_table(run_dirs)  # evaluation.general (D-MoLE's Table 3), when the runs have it
    if general:
        markdown = f"{markdown}\n{general}"
    if budget:
        markdown = f"Budget: {budget}.\n\n{markdown}"
    atomic_write_text(output / f"{stem}.md", markdown)
    atomic_write_text(output / f"{stem}.csv", csv_text)
    if plan.layout != "per-task":  # the runs of a per-task table hold one task each
        plot_radar(mean_final_accuracy(run_dirs), output / f"{stem}_radar.png", title=f"final accuracy ({benchmark})")
    summary = {"table": table, "benchmark": benchmark, "budget": budget, "seeds": seeds,
               "methods": [r.label for r in chosen], "overrides": {r.label: r.overrides for r in chosen},
               "wall_seconds": round(time.perf_counter() - t0, 1), "per_run_seconds": wall}
    atomic_write_json(output / f"{stem}.json", summary)
    print(markdown)
    return summary

"""``dymoe reproduce main-table|ablation``: every row of a DyMoE paper table under one budget, over several seeds.

A plan (``configs/reproduce/main-table.yaml`` for the main table, ``configs/reproduce/ablation.yaml`` for the
component ablation) names a base run config per benchmark, the methods as config
overrides, and the paper's numbers. Each (method, seed) is an ordinary run directory ``OUT/<label>/seed<k>``, so a
stopped reproduction resumes where it stopped. The table (Markdown + CSV, mean ± std over seeds, the paper's rows
below) and a radar chart of mean final accuracy are written to ``OUT`` as ``<table>.md``, ``<table>.csv``,
``<table>_radar.png`` and ``<table>.json`` (``main_table.md`` ...). Rows with the same label and overrides in two
plans are the same runs: reproducing the ablation into the main table's folder reuses its IncMoELoRA and
LLaVA-DyMoE runs.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from dymoe.config import load_config
from dymoe.errors import ConfigError
from dymoe.io import atomic_write_json, atomic_write_text, read_yaml_mapping

PLAN_DIR = Path(__file__).resolve().parents[3] / "configs" / "reproduce"
#: the tables ``dymoe reproduce`` knows, and their plans
TABLES = {"main-table": PLAN_DIR / "main-table.yaml", "ablation": PLAN_DIR / "ablation.yaml"}
DEFAULT_PLAN = TABLES["main-table"]


@dataclass
class Plan:
    """A reproduction plan: ``base[benchmark]`` config path, ``methods`` [(label, overrides)], ``paper`` rows."""

    base: dict[str, Path]
    methods: list[tuple[str, list[str]]]
    paper: dict[str, dict[str, float]]


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
    return Plan(base=base, methods=methods, paper=raw.get("paper") or {})


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
) -> dict:
    """Run every (method, seed) of the plan (resuming finished ones) and write the table; returns a summary.

    ``table`` names the outputs (``<table>.md`` with dashes as underscores) and, when ``plan_path`` is None,
    picks the plan from :data:`TABLES`."""
    from dymoe.analysis.plots import plot_radar
    from dymoe.runner.continual import run
    from dymoe.runner.report import compare_runs, mean_final_accuracy

    if table not in TABLES:
        raise ConfigError(f"unknown table {table!r}; expected one of {sorted(TABLES)}")
    plan = load_plan(plan_path or TABLES[table])
    stem = table.replace("-", "_")
    if benchmark not in plan.base:
        raise ConfigError(f"--benchmark {benchmark!r}: the plan has base configs for {sorted(plan.base)}")
    chosen = plan.methods
    if methods:
        known = [label for label, _ in plan.methods]
        unknown = [m for m in methods if m not in known]
        if unknown:
            raise ConfigError(f"unknown method label {unknown[0]!r}; the plan has {known}")
        chosen = [m for m in plan.methods if m[0] in methods]
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    output = Path(output)
    t0 = time.perf_counter()
    run_dirs, wall = [], {}
    for seed in range(seeds):
        for label, sets in chosen:
            extra = [*sets, f"training.seed={seed}", f"label={label}", *(overrides or [])]
            if backbone:
                extra.append(f"backbone.path={backbone}")
            cfg = load_config(plan.base[benchmark], extra)
            out = output / run_dir_name(label) / f"seed{seed}"
            print(f"== {label}, seed {seed} → {out}", file=sys.stderr)
            t = time.perf_counter()
            run(cfg, out)
            wall[f"{label}/seed{seed}"] = round(time.perf_counter() - t, 1)
            run_dirs.append(out)
    reference = paper_rows(plan, [label for label, _ in chosen], json.loads((run_dirs[0] / "matrix.json").read_text())["tasks"])
    markdown, csv_text = compare_runs(run_dirs, reference=reference)
    atomic_write_text(output / f"{stem}.md", markdown)
    atomic_write_text(output / f"{stem}.csv", csv_text)
    plot_radar(mean_final_accuracy(run_dirs), output / f"{stem}_radar.png", title=f"final accuracy ({benchmark})")
    summary = {"table": table, "benchmark": benchmark, "seeds": seeds, "methods": [m[0] for m in chosen],
               "wall_seconds": round(time.perf_counter() - t0, 1), "per_run_seconds": wall}
    atomic_write_json(output / f"{stem}.json", summary)
    print(markdown)
    return summary

"""``dymoe compare RUN_DIR... [--csv OUT.csv] [--md OUT.md] [--radar OUT.png]``: the papers' main table.

One row per method label (seeds aggregated as ``mean ± std``), per-task final accuracy, MFN, MAA, BWT. With
``--reference FILE.json`` (``{label: {task or metric: value}}``) published numbers are added as ``(paper)`` rows.
Runs made under different protocols (their ``protocol.json``) are refused unless ``--allow-mixed``; ``--cost`` adds
the cost table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dymoe.analysis.plots import plot_radar
from dymoe.errors import DataError
from dymoe.eval.scorers import read_json
from dymoe.runner.report import compare_costs, compare_runs, mean_final_accuracy, write_text_atomic


def register(sub) -> None:
    """Add the subcommand's parser to ``sub`` (the ``dymoe`` subparsers)."""
    p = sub.add_parser("compare", help="compare run directories side by side (mean ± std over seeds)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories trained on the same tasks")
    p.add_argument("--group-by", choices=["label", "method"], default="label",
                   help="rows: the label of metrics.json (default; falls back to the method) or the method name")
    p.add_argument("--reference", metavar="FILE.json", help='published rows: {"LoRA": {"ScienceQA": 52.56, ...}}')
    p.add_argument("--csv", metavar="OUT.csv", help="also write the table as CSV")
    p.add_argument("--md", metavar="OUT.md", help="also write the Markdown table")
    p.add_argument("--radar", metavar="OUT.png", help="also draw the per-task final accuracy radar (group means)")
    p.add_argument("--allow-mixed", action="store_true",
                   help="put runs of different protocols (protocol.json) in one table, split by protocol, with the "
                        "differing fields printed under it (refused by default)")
    p.add_argument("--cost", action="store_true",
                   help="also print the cost table (training time, tokens, memory, parameters, inference FLOPs)")
    p.set_defaults(func=run)


def _reference(path: str | None) -> dict | None:
    if path is None:
        return None
    data = read_json(Path(path))
    ok = isinstance(data, dict) and all(
        isinstance(row, dict) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row.values())
        for row in data.values()
    )
    if not ok:
        raise DataError(f"{path}: expected {{label: {{task or metric: number}}}}")
    return data


def run(args: argparse.Namespace) -> int:
    """Print the Markdown table; write the CSV / Markdown / radar files that were asked for."""
    md, csv_text = compare_runs(args.run_dirs, group_by=args.group_by, reference=_reference(args.reference),
                                allow_mixed=args.allow_mixed)
    print(md, end="")
    if args.cost:
        print("\nCost (totals over the tasks; adapter size and inference after the last task):\n")
        print(compare_costs(args.run_dirs, group_by=args.group_by, allow_mixed=args.allow_mixed), end="")
    if args.csv:
        write_text_atomic(args.csv, csv_text)
    if args.md:
        write_text_atomic(args.md, md)
    if args.radar:
        plot_radar(mean_final_accuracy(args.run_dirs, group_by=args.group_by), args.radar)
    return 0

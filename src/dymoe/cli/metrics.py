"""``dymoe metrics MATRIX.json [--definition coin|cmoe|dmole] [--json]``: the continual-learning aggregates of an
accuracy matrix (CoIN's MFT/MFN/MAA/BWT + forgetting by default; LLaVA-CMoE's or D-MoLE's definitions on request)."""

from __future__ import annotations

import argparse
import json

from dymoe.errors import DataError
from dymoe.eval.metrics import METRICS, load_matrix, summarize


def register(sub) -> None:
    """Add the subcommand's parser to ``sub`` (the ``dymoe`` subparsers)."""
    p = sub.add_parser("metrics", help="MFT/MFN/MAA/BWT of a lower-triangular accuracy matrix")
    p.add_argument("matrix", help='JSON {"tasks": [...], "accuracy": [[a11], [a21, a22], ...]} (percent)')
    p.add_argument("--definition", default="coin", choices=METRICS.names(),
                   help="which paper's aggregates: coin (default), cmoe, dmole (needs a full matrix)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def format_table(tasks: list[str], matrix: list[list[float]], summary: dict) -> str:
    """The matrix (rows = after training task j) followed by the metrics."""
    width = max(8, *(len(t) for t in tasks)) + 1
    lines = ["after \\ on".ljust(width) + "".join(t.rjust(width) for t in tasks[: len(matrix)])]
    for j, row in enumerate(matrix):
        lines.append(tasks[j].ljust(width) + "".join(f"{a:.2f}".rjust(width) for a in row))
    lines.append("")
    for key in ("MFT", "MFN", "MAA", "BWT", "forgetting"):
        value = summary[key]
        lines.append(f"{key:<11}" + ("n/a (needs 2+ tasks)" if value is None else f"{value:.2f}"))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run the command: load and validate the matrix, print the table (or one JSON object with --json)."""
    tasks, matrix = load_matrix(args.matrix)
    definition = getattr(args, "definition", "coin")
    full = len(matrix) > 1 and all(len(r) == len(tasks) for r in matrix)
    if definition == "dmole":
        if not full:
            raise DataError(f"{args.matrix}: D-MoLE's metrics need the full matrix (every task after every stage)")
    elif full:
        matrix = [r[: j + 1] for j, r in enumerate(matrix)]  # the seen-task part of a full matrix
    if definition != "coin":
        summary = METRICS.get(definition)(matrix)
        print(json.dumps({"tasks": tasks[: len(matrix)], "definition": definition, **summary},
                         indent=None if args.json else 1))
        return 0
    summary = summarize(matrix)
    if args.json:
        print(json.dumps({"tasks": tasks[: len(matrix)], **summary}))
    else:
        print(format_table(tasks, matrix, summary))
    return 0

"""``dymoe report RUN_DIR``: rebuild a run's ``report.md`` and ``plots/*.png`` from its files."""

from __future__ import annotations

import argparse

from dymoe.runner.report import write_report


def register(sub) -> None:
    """Add the subcommand's parser to ``sub`` (the ``dymoe`` subparsers)."""
    p = sub.add_parser("report", help="rebuild report.md and plots/ of a run directory")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (matrix.json, metrics.json, config.yaml)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the report; prints its path."""
    print(write_report(args.run_dir))
    return 0

"""``dymoe verify-data BENCHMARK.yaml [--data-root DIR]``: check every file and image a benchmark references."""

from __future__ import annotations

import argparse

from dymoe.data.tasks import load_benchmark
from dymoe.data.verify import outside_data_root, verify_benchmark


def register(sub) -> None:
    """Add the subcommand's parser to ``sub`` (the ``dymoe`` subparsers)."""
    p = sub.add_parser("verify-data", help="open every referenced file and decode every image of a benchmark")
    p.add_argument("benchmark", help="benchmark YAML (e.g. configs/benchmarks/coin.yaml)")
    p.add_argument("--data-root", default=None, help="directory the YAML's paths are relative to")
    p.add_argument("--no-decode", action="store_true", help="only check that images exist (faster)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the command: verify every task, list every problem; exit 1 if there is any.

    Paths outside the data root are listed as notes (the benchmark YAML is trusted configuration: allowed)."""
    bench = load_benchmark(args.benchmark, data_root=args.data_root)
    notes = outside_data_root(bench)
    for n in notes:
        print(f"note: {n} (allowed: the benchmark YAML is trusted configuration)")
    problems = verify_benchmark(bench, decode=not args.no_decode)
    for p in problems:
        print(p)
    n_tasks = len(bench.tasks)
    if problems:
        print(f"{len(problems)} problem(s) in {n_tasks} task(s) of {bench.name}")
        return 1
    print(f"ok: {n_tasks} task(s) of {bench.name}, every file and image checked")
    return 0
